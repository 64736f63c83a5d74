"""Reasoning-health metrics over a set of generations: pure functions of :class:`~thinktune.evals.records.Output`
records, no model (:func:`measure` makes one from a generation).

- closed-think share: the model finished thinking (a think block was opened and closed);
- stop share / max-tokens share: ended with the end-of-turn token / ran into max_new_tokens instead;
- repetition: the share of 4-grams (of tokens) that repeat an earlier 4-gram in the same generation, averaged
  over generations, and the share of generations above 0.5 (looping);
- reasoning and answer length in tokens (median and p90, nearest-rank);
- language match: the answer is in the question's language (Chinese in, Chinese out), over non-empty answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from thinktune.evals.language import detect_language
from thinktune.evals.records import Output
from thinktune.utils import quantiles

NGRAM = 4
LOOPING = 0.5


def repeated_ngram_rate(tokens: Sequence[Any], n: int = NGRAM) -> float:
    """Share of the n-grams in `tokens` that already occurred earlier in it (0 for fewer than n+1 tokens)."""
    total = len(tokens) - n + 1
    if total <= 1:
        return 0.0
    seen: set[tuple[Any, ...]] = set()
    repeats = 0
    for i in range(total):
        gram = tuple(tokens[i : i + n])
        if gram in seen:
            repeats += 1
        else:
            seen.add(gram)
    return repeats / total


def measure(question: str, gen: Any, tokenize: Callable[[str], Sequence[Any]] | None = None) -> Output:
    """The health fields of one :class:`~thinktune.infer.generate.Generation` as an :class:`Output` (ungraded).

    `tokenize` turns the generated text into tokens for the repetition rate (the model's tokenizer in eval).
    """
    tokens = tokenize(gen.text) if tokenize else gen.text.split()
    return Output(
        reasoning=gen.reasoning,
        answer=gen.answer,
        think_opened=gen.think_opened,
        think_closed=gen.think_closed,
        stopped=gen.stopped,
        hit_max_new_tokens=gen.hit_max_new_tokens,
        new_tokens=gen.new_tokens,
        reasoning_tokens=gen.reasoning_tokens,
        answer_tokens=gen.answer_tokens,
        repeat_rate=round(repeated_ngram_rate(tokens), 4),
        question_language=detect_language(question),
        answer_language=detect_language(gen.answer) if gen.answer.strip() else None,
    )


def _share(flags: Sequence[bool]) -> float | None:
    return sum(bool(f) for f in flags) / len(flags) if flags else None


def _lengths(values: Sequence[float]) -> dict[str, float | None]:
    q = quantiles([float(v) for v in values], (0.5, 0.9))
    return {"median": q.get("p50"), "p90": q.get("p90"), "mean": q.get("mean")}


def health_metrics(outputs: Sequence[Output]) -> dict[str, Any]:
    """Aggregate health over outputs (see the module docstring); every share is in [0, 1] or None."""
    n = len(outputs)
    answered = [o for o in outputs if o.answer.strip() and o.question_language]
    repeat = [float(o.repeat_rate or 0.0) for o in outputs]
    return {
        "generations": n,
        "closed_think_share": _share([o.think_closed for o in outputs]),
        "opened_think_share": _share([o.think_opened for o in outputs]),
        "stopped_share": _share([o.stopped for o in outputs]),
        "hit_max_new_tokens_share": _share([o.hit_max_new_tokens for o in outputs]),
        "repeat_rate_mean": sum(repeat) / n if n else None,
        "looping_share": _share([v > LOOPING for v in repeat]),
        "reasoning_tokens": _lengths([o.reasoning_tokens for o in outputs]),
        "answer_tokens": _lengths([o.answer_tokens for o in outputs]),
        "language_match_share": _share([o.answer_language == o.question_language for o in answered]),
        "language_checked": len(answered),
    }


#: (key, label, kind) for tables: kind "share" prints as a percentage, "tokens" as a number.
HEALTH_ROWS: list[tuple[str, str, str]] = [
    ("closed_think_share", "closed the think block", "share"),
    ("stopped_share", "stopped at end-of-turn", "share"),
    ("hit_max_new_tokens_share", "hit max_new_tokens", "share"),
    ("reasoning_tokens.median", "reasoning tokens (median)", "tokens"),
    ("reasoning_tokens.p90", "reasoning tokens (p90)", "tokens"),
    ("answer_tokens.median", "answer tokens (median)", "tokens"),
    ("answer_tokens.p90", "answer tokens (p90)", "tokens"),
    ("repeat_rate_mean", "repeated 4-gram rate (mean)", "share"),
    ("looping_share", "looping (repeat rate > 0.5)", "share"),
    ("language_match_share", "answer in the question's language", "share"),
]


def lookup(metrics: dict[str, Any], dotted: str) -> Any:
    value: Any = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def fmt_value(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "share":
        return f"{100 * value:.1f}%"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
