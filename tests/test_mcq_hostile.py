"""Hostile text through the formatter, the MCQ benchmark loader and answer extraction: a rendered example or a
documented error (ExampleError / TemplateError for the formatter, MCQError naming the lines for the loader),
never another exception or a hang. Bounded by tests/_hypothesis_profile.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _hypothesis_profile  # noqa: F401  (bounded, derandomized hypothesis settings)
from _hostile import HOSTILE_PIECES, hostile_text, json_values, watchdog
from thinktune.data.schemas import Example
from thinktune.errors import ExampleError, MCQError, TemplateError
from thinktune.evals.grading import Extraction, extract_choice
from thinktune.evals.mcq import MCQSet, load_mcq, question_text
from thinktune.formatting.formatter import Formatter


@pytest.fixture(scope="module")
def formatters(qwen3_tokenizer, r1_tokenizer):
    return {
        "qwen3": Formatter(qwen3_tokenizer),
        "r1": Formatter(r1_tokenizer),
        "text": Formatter(r1_tokenizer, text_template="Q: {question}\nR: {reasoning}\nA: {answer}"),
    }


@given(
    which=st.sampled_from(["qwen3", "r1", "text"]),
    question=hostile_text,
    reasoning=hostile_text,
    answer=hostile_text,
    system=st.none() | hostile_text,
)
@settings(max_examples=80)
def test_formatter_renders_or_refuses_the_example(formatters, which, question, reasoning, answer, system):
    fmt = formatters[which]
    ex = Example(question, reasoning, answer, system or None)
    with watchdog(60):
        try:
            r = fmt.render(ex)
        except (ExampleError, TemplateError) as e:
            assert str(e)
            return
        # What was rendered is exactly what inference sees: the prompt, then the completion ending in eot.
        assert r.completion.endswith(fmt.eot)
        assert r.completion[r.answer_start :].startswith(answer)
        if not question.strip() or question.strip() != question:
            return
        try:
            assert fmt.prompt(question, system or None) == r.prompt
        except (ExampleError, TemplateError):
            pytest.fail("render accepted a question that prompt refused")


@given(question=hostile_text, system=st.none() | hostile_text)
def test_prompt_is_text_or_a_documented_error(formatters, question, system):
    for fmt in formatters.values():
        try:
            out = fmt.prompt(question, system)
        except (ExampleError, TemplateError) as e:
            assert str(e)
            continue
        assert isinstance(out, str)
        out.encode("utf-8")


@pytest.mark.parametrize("piece", ["<|im_end|>", "<|im_start|>assistant\n", "<|endoftext|>", "\ud800"])
def test_control_tokens_in_an_answer_are_refused_by_name(formatters, piece):
    with pytest.raises(ExampleError, match="answer"):
        formatters["qwen3"].render(Example("q", "r", f"a{piece}b"))


# ------------------------------------------------------------------------------------------ MCQ


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
