"""The reinforcement stage's rewards on real templates: DeepSeek-R1-Distill (original and the revision that
pre-fills ``<think>`` in the prompt), Qwen3 with thinking on and off, and SmolLM2's ChatML; completions are
tokenized as a model would emit them and read through the same path as training (RewardScorer.read), including
hostile ones: no think block, two answers, a letter outside the options, a second think block, huge outputs."""

from __future__ import annotations

import pytest

from thinktune.evals.grading import match_reference
from thinktune.evals.mcq import Question
from thinktune.formatting.formatter import Formatter
from thinktune.train.rewards import (
    RewardScorer,
    correct_reward,
    format_reward,
    length_reward,
    verifier_reward,
)

MCQ = Question(
    "Which coronary artery is most likely occluded with ST elevation in II, III and aVF?",
    {
        "A": "Right coronary artery",
        "B": "Left anterior descending artery",
        "C": "Left circumflex",
        "D": "Left main",
    },
    "A",
    reference="Right coronary artery",
)
OPEN = Question(
    "What organism causes whooping cough?",
    reference="Bordetella pertussis",
    aliases=("B. pertussis",),
    verifiable=True,
)

FAMILIES = {
    "r1": ("r1_tokenizer", "train"),
    "r1_think": ("r1_think_tokenizer", "train"),
    "qwen3_on": ("qwen3_tokenizer", "train"),
    "qwen3_off": ("qwen3_tokenizer", "drop"),
    "chatml": ("smollm2_tokenizer", "train"),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    fixture, reasoning = FAMILIES[request.param]
    tok = request.getfixturevalue(fixture)
    fmt = Formatter(tok, reasoning=reasoning)
    return request.param, tok, fmt


def scorer(tok, fmt, question, *, max_len=256, weights=None, min_words=0):
    """The scorer over one question; reasoning of any length counts as reasoning unless `min_words` is given
    (the tests' completions reason in a few words)."""
    return RewardScorer(
        tok,
        [question],
        weights or {"correct": 1.0, "format": 1.0, "length": 1.0},
        fmt.eot_id,
        fmt.prompt_opens_think,
        fmt.reasoning == "train",
        max_len,
        0.25,
        min_reasoning_words=min_words,
    )


def emit(tok, fmt, text: str, *, stop: bool = True) -> list[int]:
    """The ids a model emits for `text` after the prompt, ending with the end-of-turn token."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids + [fmt.eot_id] if stop else ids


def completion(fmt, reasoning: str, answer: str) -> str:
    """A well-formed completion for this template: inside the pre-opened block, or opening it itself; with
    thinking off (the prompt holds an empty block) just the answer."""
    if fmt.reasoning == "drop":
        return answer
    body = f"{reasoning}\n</think>\n\n{answer}"
    return body if fmt.prompt_opens_think else f"<think>\n{body}"


def rewards(tok, fmt, question, text, *, stop=True, max_len=256, min_words=0):
    s = scorer(tok, fmt, question, max_len=max_len, min_words=min_words)
    prompt = fmt.prompt(question.message)
    cols = s.score([prompt], [emit(tok, fmt, text, stop=stop)], [0])
    return {k: v[0] for k, v in cols.items()}, s.last[0].generation


def test_the_r1_revision_prefills_think_and_the_others_do_not(
    r1_tokenizer, r1_think_tokenizer, qwen3_tokenizer
):
    assert Formatter(r1_think_tokenizer).prompt_opens_think
    assert not Formatter(r1_tokenizer).prompt_opens_think
    assert not Formatter(qwen3_tokenizer).prompt_opens_think


def test_a_well_formed_right_answer_gets_every_reward(family):
    name, tok, fmt = family
    text = completion(fmt, "ST elevation in the inferior leads points to the RCA.", "The answer is A.")
    got, gen = rewards(tok, fmt, MCQ, text)
    assert got == {"correct": 1.0, "format": 1.0, "length": 0.0}, (name, gen)


def test_a_well_formed_wrong_answer_keeps_the_format_reward(family):
    _, tok, fmt = family
    got, _ = rewards(tok, fmt, MCQ, completion(fmt, "Probably the LAD.", "The answer is B."))
    assert got["correct"] == 0.0 and got["format"] == 1.0


def test_a_free_text_answer_gets_half_the_format_reward(family):
    _, tok, fmt = family
    got, _ = rewards(
        tok, fmt, MCQ, completion(fmt, "Inferior leads.", "It is an inferior myocardial infarction.")
    )
    assert got["format"] == 0.5 and got["correct"] == 0.0


def test_no_think_block_fails_the_format_when_thinking_is_expected(family):
    _, tok, fmt = family
    got, gen = rewards(tok, fmt, MCQ, "The answer is A.")
    if fmt.reasoning == "drop":  # Qwen3 thinking off: an answer without reasoning is the expected shape
        assert got["format"] == 1.0 and got["correct"] == 1.0
    elif fmt.prompt_opens_think:  # inside the pre-opened block: never closed, so no answer at all
        assert not gen.think_closed and got["format"] == 0.0
        assert got["correct"] == 1.0  # the grader reads an explicit phrase in the reasoning, as eval does
    else:
        assert got["format"] == 0.0 and got["correct"] == 1.0


def test_thinking_when_thinking_is_off_fails_the_format(qwen3_tokenizer):
    fmt = Formatter(qwen3_tokenizer, reasoning="drop")
    got, gen = rewards(qwen3_tokenizer, fmt, MCQ, "<think>\nLet me think.\n</think>\n\nThe answer is A.")
    assert gen.think_closed and got["format"] == 0.0


def test_two_answers_are_unparseable_and_a_letter_outside_the_options_is_not_one(family):
    _, tok, fmt = family
    two, _ = rewards(tok, fmt, MCQ, completion(fmt, "Either.", "A or B."))
    assert two["correct"] == 0.0 and two["format"] == 0.5
    outside, _ = rewards(tok, fmt, MCQ, completion(fmt, "Hmm.", "The answer is F."))
    assert outside["correct"] == 0.0 and outside["format"] == 0.5


def test_a_second_think_block_or_no_end_of_turn_fails_the_format(family):
    _, tok, fmt = family
    if fmt.reasoning == "drop":
        pytest.skip("thinking off: covered by test_thinking_when_thinking_is_off_fails_the_format")
    twice = completion(fmt, "First.", "The answer is A. <think>again</think> The answer is A.")
    assert rewards(tok, fmt, MCQ, twice)[0]["format"] == 0.0
    cut, gen = rewards(tok, fmt, MCQ, completion(fmt, "Fine.", "The answer is A."), stop=False)
    assert not gen.stopped and cut["format"] == 0.0 and cut["correct"] == 1.0


def test_a_huge_output_is_cut_and_penalised(family):
    _, tok, fmt = family
    text = completion(fmt, "word " * 400, "word " * 400 + "The answer is A.")
    ids = emit(tok, fmt, text)[:64]  # the sampler stops at max_completion_length: no end-of-turn token
    s = scorer(tok, fmt, MCQ, max_len=64)
    cols = s.score([fmt.prompt(MCQ.message)], [ids], [0])
    assert cols["length"] == [-1.0] and cols["format"] == [0.0] and cols["correct"] == [0.0]


def test_the_think_reward_pays_for_a_closed_block_even_when_the_answer_is_cut(family):
    _, tok, fmt = family
    s = scorer(tok, fmt, MCQ, max_len=48, weights={"format": 1.0, "think": 1.0})
    prompt = fmt.prompt(MCQ.message)
    closed_then_cut = emit(tok, fmt, completion(fmt, "Inferior leads.", "word " * 200), stop=False)[:48]
    never_closed = emit(tok, fmt, completion(fmt, "word " * 200, "The answer is A."), stop=False)[:48]
    cols = s.score([prompt, prompt], [closed_then_cut, never_closed], [0, 0])
    assert s.names == ["format", "think"]
    assert cols["format"] == [0.0, 0.0]  # neither stopped: no format reward for either
    if fmt.reasoning == "drop":
        assert cols["think"] == [1.0, 1.0]  # thinking off: no block expected, none written
    else:
        assert cols["think"] == [1.0, 0.0]  # the signal that tells the two apart


def test_the_option_reward_pays_for_naming_one_option_even_when_the_answer_runs_on(family):
    _, tok, fmt = family
    s = scorer(tok, fmt, MCQ, max_len=48, weights={"format": 1.0, "option": 1.0})
    prompt = fmt.prompt(MCQ.message)
    named_then_cut = emit(tok, fmt, completion(fmt, "Inferior leads.", "The answer is A. " + "word " * 200))
    free_text_cut = emit(tok, fmt, completion(fmt, "Inferior leads.", "It is inferior. " + "word " * 200))
    two_named = emit(tok, fmt, completion(fmt, "Inferior leads.", "A or B."))
    cols = s.score([prompt] * 3, [named_then_cut[:48], free_text_cut[:48], two_named], [0, 0, 0])
    assert s.names == ["format", "option"]
    assert cols["format"][:2] == [0.0, 0.0]  # cut: no format reward, named or not
    assert cols["option"] == [1.0, 0.0, 0.0]  # the naming alone, one option only
    if fmt.reasoning != "drop":  # a never-closed block has no answer to name an option in
        never_closed = emit(tok, fmt, completion(fmt, "word " * 200, "The answer is A."))[:48]
        assert s.score([prompt], [never_closed], [0])["option"] == [0.0]
    open_ended = scorer(tok, fmt, OPEN, weights={"option": 1.0})
    said = emit(tok, fmt, completion(fmt, "A whoop after coughing fits.", "Bordetella pertussis."))
    assert open_ended.score([fmt.prompt(OPEN.message)], [said], [0])["option"] == [0.0]  # no options to name


def test_an_empty_think_block_or_an_answer_of_markup_earns_no_format_or_think_reward(family):
    """What a policy found within 8 steps of the CPU demo: '<think></think></thought>' (an empty block closed at
    once, then a tag). Thinking on, fewer than grpo.min_reasoning_words words of reasoning is no reasoning; an
    answer of tags alone is no answer."""
    _, tok, fmt = family
    weights = {"format": 1.0, "think": 1.0}
    reasoned = "The ST elevation sits in the inferior leads, II, III and aVF, " * 2

    def got(reasoning, answer):
        s = scorer(tok, fmt, MCQ, weights=weights, min_words=20)
        text = completion(fmt, reasoning, answer)
        cols = s.score([fmt.prompt(MCQ.message)], [emit(tok, fmt, text)], [0])
        return cols["format"][0], cols["think"][0]

    assert got(reasoned, "The answer is A.") == (1.0, 1.0)
    if fmt.reasoning == "drop":  # thinking off: the answer alone is the shape; markup is still no answer
        assert got("", "</thought>") == (0.0, 1.0)
        return
    assert got("", "The answer is A.") == (0.0, 0.0)
    assert got("Inferior leads, so the RCA.", "The answer is A.") == (0.0, 0.0)  # 5 words
    assert got(reasoned, "</thought></question>") == (0.0, 1.0)
    assert got(reasoned, "<b>A</b>") == (0.0, 1.0)  # one letter inside tags: not a word


def test_open_ended_answers_match_the_reference_or_an_alias(family):
    _, tok, fmt = family
    for answer, right in (
        ("Bordetella pertussis.", True),
        ("The cause is B. pertussis infection.", True),
        ("It is Haemophilus influenzae.", False),
    ):
        got, _ = rewards(tok, fmt, OPEN, completion(fmt, "A whoop after coughing fits.", answer))
        assert got["correct"] == float(right), answer
        assert got["format"] == 1.0


def test_match_reference_judges_long_answers_by_their_conclusion():
    listing = "Could be " + ", ".join(["influenza", "adenovirus", "Bordetella pertussis", "RSV"] * 8) + "."
    assert match_reference(listing + " In short, it is a viral croup.", "Bordetella pertussis") == (
        False,
        "no match",
    )
    assert match_reference(listing + " So the organism is Bordetella pertussis.", "Bordetella pertussis")[0]
    assert match_reference("", "Bordetella pertussis") == (False, "no answer")
    assert match_reference("bordetella  PERTUSSIS", "Bordetella pertussis") == (True, "exact:reference")


def test_pure_rewards():
    assert length_reward(100, stopped=True, max_tokens=200, buffer=0.2) == 0.0
    assert length_reward(180, stopped=True, max_tokens=200, buffer=0.2) == pytest.approx(-0.5)
    assert length_reward(200, stopped=False, max_tokens=200, buffer=0.2) == -1.0
    assert length_reward(200, stopped=True, max_tokens=200, buffer=0.2) == -1.0
    assert [verifier_reward(x) for x in (True, False, None)] == [1.0, 0.1, 0.0]


def test_the_scorer_scores_a_batch_once_and_hands_each_reward_its_column(smollm2_tokenizer):
    tok, fmt = smollm2_tokenizer, Formatter(smollm2_tokenizer)
    s = scorer(tok, fmt, MCQ, weights={"correct": 1.0, "format": 0.5, "length": 0.0})
    assert [f.__name__ for f in s.functions()] == ["correct", "format"]
    ids = [emit(tok, fmt, completion(fmt, "RCA.", f"The answer is {x}.")) for x in "AB"]
    prompts = [fmt.prompt(MCQ.message)] * 2
    logged = {}
    correct, form = (f(prompts, None, ids, [0, 0], log_metric=logged.__setitem__) for f in s.functions())
    assert correct == [1.0, 0.0] and form == [1.0, 1.0]
    assert [x.total for x in s.last] == [1.5, 0.5]
    assert logged == {
        "completions/think_closed": 1.0,
        "completions/stopped": 1.0,
        "completions/option_named": 1.0,
    }


def test_correct_and_format_are_pure_functions_of_a_generation():
    from thinktune.infer.generate import Generation

    gen = Generation("p", "x", "r " * 20, "The answer is A.", True, True, True, False, 29)
    assert correct_reward(gen, MCQ) == 1.0 and format_reward(gen, MCQ, expect_think=True) == 1.0
    short = Generation("p", "x", "r", "The answer is A.", True, True, True, False, 9)
    assert format_reward(short, MCQ, expect_think=True) == 0.0
    assert format_reward(short, MCQ, expect_think=True, min_words=1) == 1.0
