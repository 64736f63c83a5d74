"""Hostile benchmark files and answers: the MCQ loader gives items or an MCQError naming the lines; answer
extraction returns a letter or nothing, never another exception or a hang. Bounded by
tests/_hypothesis_profile.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _hypothesis_profile  # noqa: F401  (bounded, derandomized hypothesis settings)
from _hostile import HOSTILE_PIECES, hostile_text, json_values, watchdog
from thinktune.errors import MCQError
from thinktune.evals.grading import Extraction, extract_choice
from thinktune.evals.mcq import MCQSet, load_mcq, question_text


@st.composite
def mcq_lines(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["row", "json", "raw"]))
        if kind == "row":
            opts = draw(
                st.dictionaries(
                    st.sampled_from("ABCDEabc1") | hostile_text, hostile_text | json_values, max_size=5
                )
                | json_values
            )
            row = {"question": draw(hostile_text | json_values), "options": opts}
            if draw(st.booleans()):
                row["answer_idx"] = draw(st.sampled_from("ABCDE") | json_values)
            lines.append(json.dumps(row, ensure_ascii=draw(st.booleans())))
        elif kind == "json":
            lines.append(json.dumps(draw(json_values)))
        else:
            lines.append(draw(hostile_text))
    raw = "\n".join(lines).encode("utf-8", errors="surrogatepass")
    return raw + draw(st.binary(max_size=20))


@given(raw=mcq_lines(), limit=st.none() | st.integers(0, 3))
@settings(max_examples=80)
def test_mcq_loader_gives_items_or_names_the_lines(tmp_path, raw, limit):
    path = tmp_path / "bench.jsonl"
    path.write_bytes(raw)
    with watchdog(60):
        try:
            mcq = load_mcq(path, limit=limit)
        except MCQError as e:
            assert str(path.name) in str(e) or "line" in str(e)
            return
    assert isinstance(mcq, MCQSet)
    for item in mcq.items:
        assert item.question.strip() and len(item.options) >= 2
        assert item.answer is None or item.answer in item.options
        question_text(item).encode("utf-8")  # every prompt is writable text


@given(
    answer=st.lists(st.sampled_from(HOSTILE_PIECES) | hostile_text, max_size=8).map("".join),
    reasoning=hostile_text,
    n=st.integers(2, 6),
)
@settings(max_examples=150)
def test_answer_extraction_never_raises(answer, reasoning, n):
    options = {chr(65 + i): f"option {i} text" for i in range(n)}
    with watchdog(30):
        got = extract_choice(answer, options, reasoning)
    assert isinstance(got, Extraction)
    assert got.letter is None or got.letter in options


def test_extraction_of_a_pathological_long_answer_does_not_hang():
    options = {"A": "alpha", "B": "beta", "C": "gamma", "D": "delta"}
    answer = ("The answer is " + "(" * 5000 + " ") * 20 + "**" * 5000
    with watchdog(60):
        got = extract_choice(answer, options, "\\boxed{" * 2000)
    assert got.letter is None or got.letter in options


def test_mcq_line_with_undecodable_bytes_is_named(tmp_path):
    path = tmp_path / "b.jsonl"
    good = json.dumps({"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "A"})
    path.write_bytes(good.encode() + b"\n" + b'{"question": "\xff\xfe", "options": {"A": "x", "B": "y"}}\n')
    with pytest.raises(MCQError, match="line 2: not valid UTF-8"):
        load_mcq(path)
