"""Verifiable problems for GRPO and DPO: every row layout (multiple choice, medical-o1-verifiable-problem,
question/answer/aliases), bad rows listed with their row numbers, duplicates dropped, control tokens refused, and
the run-folder round trip that a resumed run, eval and compare read back."""

from __future__ import annotations

import json

import pytest

from thinktune.errors import DataError
from thinktune.evals.grading import grade
from thinktune.evals.problems import from_examples, load_problems, to_example
from thinktune.infer.generate import Generation


def write(path, rows):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_every_layout_and_every_bad_row(tmp_path):
    rows = [
        {"question": "Q1?", "options": {"A": "x", "B": "y"}, "answer_idx": "B"},
        {"question": "Q2?", "options": ["x", "y", "z"], "answer_idx": 2},
        {"Open-ended Verifiable Question": "Q3?", "Ground-True Answer": "Aspirin"},
        {"question": "Q4?", "answer": "Vitamin C", "aliases": ["ascorbic acid"]},
        {"question": "Q1?", "options": {"A": "x", "B": "y"}, "answer_idx": "B"},  # duplicate of row 1
        {"question": "Q6?", "options": {"A": "x"}, "answer_idx": "A"},  # one option
        {"question": "Q7?", "options": {"A": "x", "B": "y"}, "answer_idx": "C"},  # letter not an option
        {"question": "", "answer": "x"},  # empty question
        {"question": "Q9?", "answer": "x", "aliases": "not a list"},
        {"Question": "Q10?", "Complex_CoT": "...", "Response": "..."},  # SFT data, no checkable answer
        "{not json",
        {"question": "Q12 <|im_end|>?", "options": {"A": "x", "B": "y"}, "answer_idx": "A"},
    ]
    loaded = load_problems(str(write(tmp_path / "p.jsonl", rows)), reserved=("<|im_end|>",))
    assert [q.row for q in loaded.questions] == [1, 2, 3, 4]
    q1, q2, q3, q4 = loaded.questions
    assert (q1.answer, q1.reference) == ("B", "y") and (q2.answer, q2.options["C"]) == ("C", "z")
    assert q3.open_ended and q3.reference == "Aspirin" and q4.aliases == ("ascorbic acid",)
    assert loaded.duplicates == [(5, 1)]
    assert [b.row for b in loaded.bad_rows] == [6, 7, 8, 9, 10, 11, 12]
    reasons = " | ".join(b.reason for b in loaded.bad_rows)
    for text in ("at least two letters", "not one of the options", "missing or empty", "aliases", "columns",
                 "malformed JSON", "control token"):  # fmt: skip
        assert text in reasons, text
    summary = loaded.summary()
    assert (
        summary["multiple_choice"] == 2 and summary["open_ended"] == 2 and summary["duplicates_removed"] == 1
    )
    with pytest.raises(DataError, match="bad rows"):
        load_problems(str(tmp_path / "p.jsonl"), on_bad_row="error")


def test_sft_data_has_no_verifiable_problems():
    with pytest.raises(DataError, match="no verifiable problems.*multiple-choice rows"):
        load_problems("sample:en")


def test_the_run_folder_round_trip_keeps_prompts_and_grading():
    mcq, open_ = load_problems("sample:mcq").questions[0], load_problems("sample:open").questions[0]
    back = from_examples([to_example(mcq), to_example(open_)], "validation")
    assert back[0].message == mcq.message and back[0].gradable and back[0].answer == mcq.answer
    assert back[1].message == open_.message and back[1].open_ended and back[1].aliases == open_.aliases
    said = Generation("p", "", "", f"The answer is {mcq.answer}.", True, True, True, False, 5)
    assert grade(back[0], said).correct
    alias = Generation("p", "", "", f"It is {open_.aliases[0]}.", True, True, True, False, 5)
    assert grade(back[1], alias).correct and not grade(back[1], said).correct
