"""The data doctor: cut classification, length policies (no answer is ever cut), the report and the display."""

from __future__ import annotations

import io
import json

import pytest

from thinktune.data.schemas import Example
from thinktune.formatting import doctor
from thinktune.formatting.formatter import Formatter
from thinktune.report.plots import length_histogram


@pytest.fixture(scope="module")
def fmt(qwen3_tokenizer):
    return Formatter(qwen3_tokenizer)


def long_example(i: int, reasoning_words: int = 120) -> Example:
    return Example(
        f"Case {i}: a patient with fever and cough for {i} days. Diagnosis?",
        " ".join(f"thought{j}" for j in range(reasoning_words)),
        f"Community-acquired pneumonia, case {i}; start antibiotics.",
        meta={"row": i},
    )


def test_classify_cut_covers_every_position(fmt):
    enc = fmt.encode(long_example(1))
    total, p, a = len(enc.input_ids), enc.prompt_len, enc.answer_start
    assert doctor.classify_cut(enc, total) == doctor.FITS
    assert doctor.classify_cut(enc, total - 1) == doctor.CUTS_EOT
    assert doctor.classify_cut(enc, a + 1) == doctor.CUTS_ANSWER
    assert doctor.classify_cut(enc, a) == doctor.CUTS_REASONING
    assert doctor.classify_cut(enc, p + 1) == doctor.CUTS_REASONING
    assert doctor.classify_cut(enc, p) == doctor.CUTS_PROMPT


def test_drop_policy_lists_every_dropped_row(fmt):
    encoded = [fmt.encode(long_example(i, 20 if i % 2 else 200)) for i in range(1, 7)]
    limit = max(len(e.input_ids) for e in encoded if e.example.meta["row"] % 2) + 5
    res = doctor.apply_length_policy(fmt, encoded, limit, "drop")
    assert [e.example.meta["row"] for e in res.kept] == [1, 3, 5]
    summary = res.summary("drop", limit)
    assert [d["row"] for d in summary["dropped"]] == [2, 4, 6]
    assert all("truncation" in d["reason"] for d in summary["dropped"])
    assert sum(summary["truncation_would"].values()) == 6


def test_truncate_reasoning_keeps_whole_answer_and_end_of_turn(fmt):
    tok = fmt.tokenizer
    encoded = [fmt.encode(long_example(i, 300)) for i in range(1, 4)]
    limit = encoded[0].prompt_len + 120
    res = doctor.apply_length_policy(fmt, encoded, limit, "truncate_reasoning")
    assert len(res.kept) == 3 and len(res.shortened) == 3 and not res.dropped
    for enc, removed in res.shortened:
        assert len(enc.input_ids) <= limit and removed > 0
        assert enc.input_ids[-1] == fmt.eot_id and enc.labels()[-1] == fmt.eot_id
        answer = tok.decode(enc.input_ids[enc.answer_start :])
        assert answer == enc.example.answer + fmt.eot, "the whole answer survives"
        assert "</think>" in tok.decode(enc.input_ids[enc.prompt_len : enc.answer_start])
        assert enc.example.reasoning and len(enc.example.reasoning) < 300 * 8


def test_truncate_reasoning_drops_when_even_the_answer_does_not_fit(fmt):
    enc = fmt.encode(long_example(1, 50))
    res = doctor.apply_length_policy(fmt, [enc], enc.prompt_len + 5, "truncate_reasoning")
    assert not res.kept and "even without reasoning" in res.dropped[0][1]


def test_report_histogram_and_stats(fmt, tmp_path):
    encoded = [fmt.encode(long_example(i, 10 * i)) for i in range(1, 11)]
    res = doctor.apply_length_policy(fmt, encoded, 4096, "drop")
    report = doctor.build_report(
        fmt,
        {
            "source": "x",
            "schema": "medical-o1",
            "rows_read": 10,
            "examples": 10,
            "bad_rows": [],
            "duplicates_removed": 0,
        },
        encoded,
        res,
        max_length=4096,
        policy="drop",
        notes=["n"],
    )
    path = doctor.write_report(tmp_path, report)
    length_histogram(tmp_path / "length_histogram.png", [e.lengths for e in encoded], 4096)
    saved = json.loads(path.read_text())
    assert saved["lengths"]["reasoning"]["max"] > saved["lengths"]["reasoning"]["min"]
    assert set(saved["lengths"]["total"]) >= {"min", "p50", "p90", "p99", "max"}
    assert saved["template"]["family"] == "reasoning_field" and saved["template"]["notes"] == ["n"]
    png = (tmp_path / "length_histogram.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    out = io.StringIO()
    doctor.print_summary(report, out=out)
    assert "no answer is ever cut" in out.getvalue()


def test_show_example_marks_trained_tokens(fmt):
    enc = fmt.encode(long_example(3, 5))
    plain = io.StringIO()
    doctor.show_example(fmt, enc, 1, color=False, out=plain)
    text = plain.getvalue()
    prompt, trained = text.split("[[TRAINED: ", 1)
    assert "Case 3" in prompt and "<|im_start|>assistant" in prompt
    assert trained.split("]]")[0].startswith("<think>") and "<|im_end|>]]" in trained
    assert "trained: yes" in text
    colored = io.StringIO()
    doctor.show_example(fmt, enc, 1, color=True, out=colored)
    assert "\033[1;32m<think>" in colored.getvalue()
