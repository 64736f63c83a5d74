"""Reasoning-health metrics on hand-made generations whose values are known."""

from __future__ import annotations

import pytest

from thinktune.evals.health import health_metrics, measure, repeated_ngram_rate
from thinktune.infer.generate import Generation


def test_repeated_ngram_rate():
    assert repeated_ngram_rate([]) == 0.0
    assert repeated_ngram_rate(list("abcd")) == 0.0  # a single 4-gram cannot repeat
    assert repeated_ngram_rate(list("abcdefgh")) == 0.0
    # "abcd" x3: 9 four-grams, the first 4 are new, the other 5 repeat
    assert repeated_ngram_rate(list("abcdabcdabcd")) == pytest.approx(5 / 9)
    assert repeated_ngram_rate(["x"] * 10) == pytest.approx(6 / 7)
    assert repeated_ngram_rate(list("aaaa"), n=2) == pytest.approx(2 / 3)


def gen(reasoning: str, answer: str, *, closed=True, stopped=True, rt=0, at=0) -> Generation:
    text = f"<think>\n{reasoning}\n</think>\n\n{answer}" if closed else f"<think>\n{reasoning}"
    return Generation(
        prompt="p",
        text=text,
        reasoning=reasoning,
        answer=answer,
        think_closed=closed,
        think_opened=True,
        stopped=stopped,
        hit_max_new_tokens=not stopped,
        new_tokens=rt + at + 1,
        reasoning_tokens=rt,
        answer_tokens=at,
    )


def test_health_metrics_known_values():
    looping = " ".join(["the patient is stable"] * 10)
    records = [
        measure(
            "What causes scurvy?",
            gen("Vitamin C is needed for collagen.", "Vitamin C deficiency.", rt=10, at=4),
        ),
        measure("坏血病的原因是什么？", gen("维生素C缺乏。", "维生素C缺乏导致坏血病。", rt=20, at=8)),
        measure(
            "坏血病的原因是什么？", gen("Vitamin C.", "It is vitamin C deficiency.", rt=30, at=6)
        ),  # English out
        measure("Why?", gen(looping, "", closed=False, stopped=False, rt=40, at=0)),
    ]
    assert [r.repeat_rate for r in records[:3]] == [0.0, 0.0, 0.0]
    # "<think>" + 40 words: 38 4-grams, of which 5 are new (the one with "<think>" and 4 of the cycle)
    assert records[3].repeat_rate == pytest.approx(33 / 38, abs=1e-4)
    h = health_metrics(records)
    assert h["generations"] == 4
    assert h["closed_think_share"] == 0.75
    assert h["stopped_share"] == 0.75
    assert h["hit_max_new_tokens_share"] == 0.25
    assert h["reasoning_tokens"] == {"median": 20.0, "p90": 40.0, "mean": 25.0}  # nearest-rank median
    assert h["answer_tokens"] == {"median": 4.0, "p90": 8.0, "mean": 4.5}
    assert h["repeat_rate_mean"] == pytest.approx(33 / 38 / 4, abs=1e-4)
    assert h["looping_share"] == 0.25
    # the unanswered generation is not checked; one of three answers switched language
    assert h["language_checked"] == 3
    assert h["language_match_share"] == pytest.approx(2 / 3)


def test_health_metrics_of_nothing():
    h = health_metrics([])
    assert (
        h["generations"] == 0 and h["closed_think_share"] is None and h["reasoning_tokens"]["median"] is None
    )
