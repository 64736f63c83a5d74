"""Multiple-choice tasks: loading, prompts through the formatter, letter extraction in English and Chinese, grading."""

from __future__ import annotations

import json

import pytest

from conftest import MEDAGENTS, needs_shared
from thinktune.errors import MCQError
from thinktune.evals.grading import extract_choice, grade, named_in_answer, score_set, wilson_interval
from thinktune.evals.language import detect_language
from thinktune.evals.mcq import Question, load_mcq, question_text
from thinktune.formatting.formatter import Formatter
from thinktune.infer.generate import Generation

DRUGS = {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Aspirin and clopidogrel"}
TEN = {k: f"choice {k.lower()}{k.lower()}" for k in "ABCDEFGHIJ"}
PUBMED = {"A": "yes", "B": "no", "C": "maybe"}


@pytest.mark.parametrize(
    "answer, options, letter, how",
    [
        # explicit English phrasings
        ("The answer is (C).", DRUGS, "C", "phrase"),
        ("So the final answer is: B", DRUGS, "B", "phrase"),
        ("**Answer:** D", DRUGS, "D", "phrase"),
        ("Answer: **C**", DRUGS, "C", "phrase"),
        ("The correct option is **C. Warfarin**", DRUGS, "C", "phrase"),
        ("C is the correct answer because INR matters.", DRUGS, "C", "phrase"),
        ("Option A is wrong; option C is right.", DRUGS, "C", "phrase"),
        ("Initially I leaned to A, but the correct answer is C.", DRUGS, "C", "phrase"),
        ("The answer is A because aspirin irreversibly inhibits COX.", DRUGS, "A", "phrase"),
        ("I think the answer is I.", TEN, "I", "phrase"),
        # explicit Chinese phrasings (full-width letters and punctuation too)
        ("答案：C", DRUGS, "C", "phrase"),
        ("答案是 C", DRUGS, "C", "phrase"),
        ("综上所述，答案是：Ｃ。", DRUGS, "C", "phrase"),
        ("所以正确答案为【B】", DRUGS, "B", "phrase"),
        ("答案（D）", DRUGS, "D", "phrase"),
        ("故选D。", DRUGS, "D", "phrase"),
        ("选项C正确。", DRUGS, "C", "phrase"),
        # boxed
        ("Therefore \\boxed{C}", DRUGS, "C", "boxed"),
        ("$\\boxed{\\text{B}}$", DRUGS, "B", "boxed"),
        ("最终答案 \\boxed{A}，不是B", DRUGS, "A", "boxed"),
        # weaker cues
        ("**C**", DRUGS, "C", "bold"),
        ("I would go with Option B here.", DRUGS, "B", "option"),
        ("C", DRUGS, "C", "leading"),
        ("(B)", DRUGS, "B", "leading"),
        ("B. Heparin, given the renal failure.", DRUGS, "B", "leading"),
        ("A. yes", PUBMED, "A", "leading"),
        # the option's text when no letter is given (a longer option beats its own prefix)
        ("Warfarin is the drug of choice here.", DRUGS, "C", "text"),
        ("Give aspirin and clopidogrel together.", DRUGS, "D", "text"),
        ("Yes, the trial supports it.", PUBMED, "A", "text"),
    ],
)
def test_extracts_the_chosen_letter(answer, options, letter, how):
    got = extract_choice(answer, options)
    assert (got.letter, got.how) == (letter, how)


@pytest.mark.parametrize(
    "answer, options",
    [
        ("A patient with atrial fibrillation needs anticoagulation.", DRUGS),  # "A" is an article
        ("Vitamin B is the most likely deficiency.", DRUGS),  # a letter inside a name
        ("维生素A是正确的补充", DRUGS),  # a letter inside a Chinese term
        ("I'm not sure.", DRUGS),  # "I" is a pronoun
        ("Option A or option C could both work.", DRUGS),  # ambiguous weak cues
        ("There is no evidence either way.", PUBMED),  # "no" mid-sentence is not the option "no"
        ("Heparin or warfarin, depending on renal function.", DRUGS),  # two option texts
        ("A. yes B. no", PUBMED),  # the options recited back, not a choice
        ("", DRUGS),
    ],
)
def test_unparseable_answers_are_not_guessed(answer, options):
    got = extract_choice(answer, options)
    assert got.letter is None and got.how == "unparseable"


def test_reasoning_is_used_only_when_the_answer_has_no_letter():
    got = extract_choice("Heparin is given.", DRUGS, reasoning="... so the answer is C, warfarin")
    assert (got.letter, got.how) == ("B", "text")  # the answer decides, not the reasoning
    got = extract_choice("", DRUGS, reasoning="Let me think. A? No. So the answer is (C)")
    assert (got.letter, got.how) == ("C", "reasoning:phrase")
    # weak cues in the reasoning (a bare "Option A" while deliberating) are not taken
    assert extract_choice("", DRUGS, reasoning="Option A seems plausible...").letter is None


def test_only_an_answer_that_names_an_option_counts_as_named():
    """A letter read from the reasoning grades the question but is not the answer naming an option."""
    named = [
        extract_choice("The answer is C.", DRUGS),
        extract_choice("Heparin is given.", DRUGS),  # by the option's text
        extract_choice("", DRUGS, reasoning="So the answer is (C)"),
        extract_choice("It is hard to say.", DRUGS),
    ]
    assert [named_in_answer(e.how) for e in named] == [True, True, False, False]
    assert named_in_answer(None) is False  # an open-ended question's record has no extraction


def test_letters_outside_the_options_are_ignored():
    assert extract_choice("The answer is E.", DRUGS).letter is None
    assert extract_choice("The answer is E.", {**DRUGS, "E": "Dabigatran"}).letter == "E"


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _write(tmp_path, rows, name="bench.jsonl"):
    path = tmp_path / name
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)
    )
    return path


def test_grade_with_baselines(tmp_path):
    rows = [
        {"question": f"q{i}", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": letter}
        for i, letter in enumerate("AABBB")
    ] + [{"question": "q5", "options": ["yes", "no"], "answer_idx": 0}]  # list options, index answer
    mcq = load_mcq(_write(tmp_path, rows), limit=4)
    assert len(mcq.items) == 4 and mcq.rows_in_file == 6
    assert mcq.letter_counts == {"A": 3, "B": 3} and mcq.constant_letter == "A"  # tie -> earliest letter
    answers = ["The answer is A", "答案：B", "no idea", "**B**"]
    said = [Generation("p", a, "", a, True, True, True, False, 1) for a in answers]
    result = score_set(mcq, [grade(it, g) for g, it in zip(said, mcq.items, strict=True)])
    assert result["questions"] == 4 and result["correct"] == 2 and result["unparseable"] == 1
    assert result["accuracy"] == 0.5 and result["accuracy_of_parsed"] == pytest.approx(2 / 3)
    assert result["ci95"] == pytest.approx(list(wilson_interval(2, 4)))
    # constant "A" on the four scored questions (A A B B) is right twice; random is 1/4 each
    assert result["baselines"] == {"constant_letter": "A", "constant_letter_accuracy": 0.5, "random": 0.25}
    assert result["extracted_by"] == {"bold": 1, "phrase": 2, "unparseable": 1}


def test_bad_benchmark_files_name_the_rows(tmp_path):
    with pytest.raises(MCQError, match="does not exist"):
        load_mcq(tmp_path / "nope.jsonl")
    path = _write(
        tmp_path,
        [
            {"question": "ok", "options": {"A": "x", "B": "y"}, "answer_idx": "A"},
            "{not json",
            {"question": "", "options": {"A": "x", "B": "y"}, "answer_idx": "A"},
            {"question": "q", "options": {"A": "x"}, "answer_idx": "A"},
            {"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "C"},
        ],
    )
    with pytest.raises(MCQError) as e:
        load_mcq(path)
    msg = str(e.value)
    for line in (
        "line 2: not valid JSON",
        "line 3: `question`",
        "line 4: `options`",
        "line 5: answer_idx 'C'",
    ):
        assert line in msg
    assert "line 1" not in msg


def test_prompt_goes_through_the_formatter_in_the_question_language(qwen3_tokenizer):
    fmt = Formatter(qwen3_tokenizer)
    en = Question("Which drug reverses heparin?", {"A": "Vitamin K", "B": "Protamine"}, "B", 1)
    zh = Question("哪种药物可以逆转肝素？", {"A": "维生素K", "B": "鱼精蛋白"}, "B", 2)
    text_en, text_zh = question_text(en), question_text(zh)
    assert "A. Vitamin K\nB. Protamine" in text_en and '"The answer is X"' in text_en and "(A-B)" in text_en
    assert "B. 鱼精蛋白" in text_zh and "答案：X" in text_zh
    prompt = fmt.prompt(text_en)
    assert prompt == qwen3_tokenizer.apply_chat_template(
        [{"role": "user", "content": text_en}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=True,
    )


def test_detect_language():
    assert detect_language("答案：C") == "zh"
    assert detect_language("The answer is 阿司匹林 (aspirin).") == "en"
    assert detect_language("患者CT显示肺部阴影，最可能的诊断是什么？") == "zh"
    assert detect_language("Здравствуйте, это ответ") == "other"
    assert detect_language("  123 !! ") is None


@needs_shared(MEDAGENTS)
@pytest.mark.parametrize("task", ["medqa", "medmcqa", "pubmedqa", "mmlu", "mmlu-pro"])
def test_loads_every_medagents_file(task):
    mcq = load_mcq(MEDAGENTS / task / "test.jsonl")
    assert len(mcq.items) == mcq.rows_in_file == sum(mcq.letter_counts.values())
    assert all(it.answer in it.options for it in mcq.items)
    assert mcq.name == f"{task}/test"
    if task == "medmcqa":  # the shared data README: a constant "A" scores 33.7% on MedMCQA
        assert mcq.constant_letter == "A"
        assert mcq.letter_counts["A"] / mcq.rows_in_file == pytest.approx(0.337, abs=0.001)
