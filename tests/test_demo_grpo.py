"""The GRPO demo's held-out split and scores: the questions keep their options through the run folder, the grader
reads them, and the random baseline is 1 / (number of options), not 1."""

from __future__ import annotations

import pytest

from thinktune.configfile import load_config
from thinktune.data.load import split_examples
from thinktune.demo import GRPO_DEMO_CONFIG, held_out_scores
from thinktune.evals.evaluate import record
from thinktune.evals.mcq import Question
from thinktune.evals.problems import load_problems, to_example
from thinktune.infer.generate import Generation
from thinktune.rundir import RunDir, save_examples


def answered(question: Question, answer: str) -> Generation:
    return Generation(
        prompt=question.message,
        text=f"<think>short</think>{answer}",
        reasoning="short",
        answer=answer,
        think_closed=True,
        think_opened=True,
        stopped=True,
        hit_max_new_tokens=False,
        new_tokens=12,
    )


def tokenize(text: str) -> list[int]:
    return list(range(len(text.split())))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> list[Question]:
    """The demo recipe's held-out split of sample:mcq, written to a run folder and read back as the demo does."""
    cfg = load_config(GRPO_DEMO_CONFIG)
    loaded = load_problems(cfg.data.source)
    _, val = split_examples(loaded.questions, val_size=cfg.data.val_size, seed=cfg.data.seed, shuffle=True)
    run = RunDir(tmp_path_factory.mktemp("demo-grpo"))
    run.path.joinpath("data").mkdir()
    save_examples(run.validation_data, [to_example(q) for q in val])
    return [Question.from_example(e, i) for i, e in enumerate(run.examples("validation"))]


def test_the_held_out_questions_carry_their_options_and_letter(held_out):
    assert len(held_out) == load_config(GRPO_DEMO_CONFIG).data.val_size
    for q in held_out:
        assert q.options and len(q.options) >= 4 and q.answer in q.options
        # The user message is the one eval renders: lettered options and the closing instruction.
        assert all(f"{k}. {v}" in q.message for k, v in q.options.items())


def test_the_grader_reads_the_held_out_options(held_out):
    q = held_out[0]
    wrong = next(k for k in q.options if k != q.answer)
    assert record(q, answered(q, f"The answer is {q.answer}."), tokenize).output.correct is True
    assert record(q, answered(q, f"The answer is {wrong}."), tokenize).output.correct is False


def test_the_random_baseline_is_one_over_the_number_of_options(held_out):
    # The records of a run folder's questions do not list the options (list_options is off: the message already
    # holds them), so the baseline must come from the questions; reading it from the records gave 1.0.
    records = [record(q, answered(q, f"The answer is {q.answer}."), tokenize) for q in held_out]
    assert all(r.options is None for r in records)
    scores = held_out_scores(records, held_out)
    expected = sum(1 / len(q.options) for q in held_out) / len(held_out)
    assert scores["random_baseline"] == pytest.approx(expected)
    assert 0.2 <= scores["random_baseline"] <= 0.25
    assert scores["accuracy"] == 1.0 and scores["named_option"] == 1.0 and scores["think_closed"] == 1.0

    four = [i for i, q in enumerate(held_out) if len(q.options) == 4]
    only_four = held_out_scores([records[i] for i in four], [held_out[i] for i in four])
    assert only_four["random_baseline"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "grpo", "--sft-run", "{run}", "train.max_steps=2"],
        ["demo", "--sft-run", "{run}", "grpo", "train.max_steps=2"],
    ],
)
def test_demo_grpo_takes_the_sft_run_to_continue(argv, tmp_path, capsys):
    from thinktune.cli import main

    missing = tmp_path / "no-such-run"
    assert main([a.format(run=missing) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"{missing} holds no finished SFT run" in err
    assert not (tmp_path / "runs").exists()


def test_sft_run_belongs_to_the_grpo_demo(tmp_path, capsys):
    from thinktune.cli import main

    assert main(["demo", "--sft-run", str(tmp_path)]) == 2
    assert "--sft-run belongs to `thinktune demo grpo`" in capsys.readouterr().err


@pytest.mark.parametrize(
    "penalty, scope, said",
    [
        (1.15, "all", "repetition penalty 1.15 over the prompt and the answer"),
        (1.15, "generated", "repetition penalty 1.15 over the generated tokens"),
        (1.0, "all", "no repetition penalty"),
    ],
)
def test_the_outcome_says_how_the_three_models_decoded(held_out, tmp_path, penalty, scope, said):
    """The side by side is only a comparison because all three decode alike; the printout says how."""
    import io

    from thinktune.demo import MODELS, print_grpo_outcome

    records = [record(q, answered(q, f"The answer is {q.answer}."), tokenize) for q in held_out]
    scores = held_out_scores(records, held_out)
    outcome = {
        "held_out": {m: scores for m in MODELS},
        "decoding": {"max_new_tokens": 448, "repetition_penalty": penalty, "repetition_penalty_scope": scope},
        "reward_first_quarter": 0.5,
        "reward_last_quarter": 0.75,
        "warnings": [],
        "timings_s": {"total_s": 300.0, "grpo_s": 200.0, "compare_s": 100.0},
    }
    out = io.StringIO()
    print_grpo_outcome(RunDir(tmp_path), outcome, tmp_path / "report.html", out=out)
    text = out.getvalue()
    assert f"the same greedy decoding for all three: at most 448 new tokens, {said}\n" in text
    assert "mean reward: 0.500 over the first quarter" in text


def test_the_scores_say_whether_an_option_was_named_by_its_letter_or_its_text(held_out, tmp_path):
    """The prompt asks for "The answer is X"; an answer that only restates one option's text is named too, and the
    outcome says which of the two each model did (the SFT demo's adapter names options by their text alone)."""
    import io

    from thinktune.demo import MODELS, print_grpo_outcome

    by_letter = [record(q, answered(q, f"The answer is {q.answer}."), tokenize) for q in held_out[:3]]
    by_text = [
        record(q, answered(q, f"The most likely diagnosis is {q.options[q.answer].lower()}."), tokenize)
        for q in held_out[3:5]
    ]
    unnamed = [record(q, answered(q, "It is hard to say."), tokenize) for q in held_out[5:6]]
    assert [r.output.extracted_by for r in by_text] == ["text", "text"]
    scores = held_out_scores(by_letter + by_text + unnamed, held_out[:6])
    assert scores["named_option"] == pytest.approx(5 / 6)
    assert (scores["named_by_letter"], scores["named_by_text"]) == (3, 2)

    outcome = {
        "held_out": {m: scores for m in MODELS},
        "decoding": {"max_new_tokens": 448, "repetition_penalty": 1.0, "repetition_penalty_scope": "all"},
        "reward_first_quarter": None,
        "reward_last_quarter": None,
        "warnings": [],
        "timings_s": {"total_s": 300.0, "grpo_s": 200.0, "compare_s": 100.0},
    }
    out = io.StringIO()
    print_grpo_outcome(RunDir(tmp_path), outcome, tmp_path / "report.html", out=out)
    assert "SFT+GRPO 3 by a letter / 2 by an option's text" in out.getvalue()
