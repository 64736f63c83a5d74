"""Hostile text through the formatter: a rendered example or a documented error (ExampleError / TemplateError),
never another exception or a hang. Bounded by tests/_hypothesis_profile.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _hypothesis_profile  # noqa: F401  (bounded, derandomized hypothesis settings)
from _hostile import hostile_text, watchdog
from thinktune.data.schemas import Example
from thinktune.errors import ExampleError, TemplateError
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
