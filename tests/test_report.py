"""report.html as a pure function of run-folder files: partial folders, escaping, tolerance of missing fields."""

from __future__ import annotations

import json

from _runs import write_metrics
from thinktune.config import Config
from thinktune.evals.records import ComparePair, Output
from thinktune.report.files import load_run_files
from thinktune.report.html import build_html, write_report
from thinktune.report.plots import loss_plot
from thinktune.rundir import RunDir
from thinktune.train.runfolder import write_config
from thinktune.utils import write_jsonl


def _side(reasoning: str, answer: str, **kw) -> Output:
    side = {
        "reasoning": reasoning,
        "answer": answer,
        "reasoning_tokens": len(reasoning.split()),
        "answer_tokens": len(answer.split()),
        "new_tokens": len(reasoning.split()) + len(answer.split()) + 1,
        "think_closed": True,
        "stopped": True,
        "hit_max_new_tokens": False,
        "repeat_rate": 0.0,
        "answer_language": "en",
    }
    return Output(**{**side, **kw})


def _config(tmp_path, **model) -> None:
    cfg = Config()
    cfg.model.name_or_path = model.get("name", "Qwen/Qwen3-0.6B")
    cfg.data.source = "FreedomIntelligence/medical-o1-reasoning-SFT"
    write_config(RunDir(tmp_path), cfg)


def test_a_fresh_run_folder_says_what_to_run(tmp_path):
    _config(tmp_path)
    html = build_html(load_run_files(tmp_path), "runs/my run")
    for section in ("summary", "loss", "data", "heldout", "accuracy", "lengths", "health", "examples"):
        assert f'<section id="{section}">' in html
    assert "Qwen/Qwen3-0.6B" in html and "medical-o1-reasoning-SFT" in html
    assert "not run yet: run <code>thinktune compare &#x27;runs/my run&#x27;</code>" in html  # shell-quoted
    assert "not run yet: run <code>thinktune train CONFIG.yaml</code>" in html  # no metrics yet
    assert "data:image/png" not in html


def test_metrics_with_optional_fields_missing_still_plot(tmp_path):
    _config(tmp_path)
    lines = [
        *write_metrics(tmp_path / "metrics.jsonl"),  # what training writes, then lines lacking fields
        {"step": 25},
        {"epoch": 2.5, "loss": 1.8},
        {"step": 30, "loss": None, "eval_loss": 2.2},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines) + '{"step": 31, "lo')
    files = load_run_files(tmp_path)
    assert len(files["metrics"]) == len(lines)  # the half-written last line is skipped
    assert loss_plot(files["metrics"]).startswith("data:image/png;base64,")
    html = build_html(files)
    assert 'id="loss-plot"' in html
    assert loss_plot([{"step": 1}, {"epoch": 1}]) is None


def test_text_from_the_model_is_escaped(tmp_path):
    _config(tmp_path)
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    pair = ComparePair(
        set="validation",
        index=0,
        question=f"Q {evil}",
        question_language="en",
        options={"A": evil, "B": "fine"},
        reference="fine",
        reference_letter="B",
        base=_side(f"think {evil}", f"answer {evil}", predicted="A", correct=False),
        tuned=_side("short", "The answer is B", predicted="B", correct=True),
    )
    write_jsonl(tmp_path / "compare.jsonl", [pair.to_dict()])  # as compare writes it
    html = build_html(load_run_files(tmp_path))
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert html.count("<details>") >= 2  # reasoning collapsed for each side (and the reference)
    assert 'class="good">chose B (correct)' in html and 'class="bad">chose A (wrong)' in html


def test_accuracy_and_health_come_from_eval_and_compare_files(tmp_path):
    _config(tmp_path)
    bench = {
        "questions": 20,
        "correct": 9,
        "accuracy": 0.45,
        "ci95": [0.258, 0.658],
        "unparseable": 2,
        "baselines": {"constant_letter": "A", "constant_letter_accuracy": 0.3, "random": 0.25},
    }
    for name, acc in (("base", 0.3), ("tuned", 0.45)):
        summary = {
            "name": name,
            "heldout_loss": {"examples": 4, "reasoning": {"loss": 1.5, "perplexity": 4.48, "tokens": 300}},
            "benchmarks": {"medqa/test": {**bench, "accuracy": acc}},
            "health": {"all": {"generations": 20, "closed_think_share": 0.9 if name == "tuned" else 0.4}},
        }
        (tmp_path / f"eval_{name}.json").write_text(json.dumps(summary))
    html = build_html(load_run_files(tmp_path))
    assert html.index(">base<") < html.index(">tuned<")  # before, then after
    assert "45.0%" in html and "30.0%" in html and "[25.8, 65.8]" in html and "A 30.0%" in html
    assert 'id="accuracy-plot"' in html
    assert "90.0%" in html and "40.0%" in html  # closed-think share, from eval_*.json health
    assert "4.48" in html  # held-out perplexity


def test_write_report_replaces_the_page(tmp_path):
    _config(tmp_path)
    first = write_report(tmp_path)
    write_metrics(tmp_path / "metrics.jsonl")
    second = write_report(tmp_path)
    assert first == second == tmp_path / "report.html"
    assert 'id="loss-plot"' in second.read_text(encoding="utf-8")
