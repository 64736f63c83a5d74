"""End to end through the CLI on a tiny model: eval (tuned and base), compare, report, and the report in a real
headless Chromium. The run folder is built without training (tests/_runs.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from _report_helpers import chromium_path, inspect_page
from _runs import MCQ_ROWS, make_run, write_mcq
from conftest import ROOT, cli
from thinktune.cli import main
from thinktune.infer.session import open_run

ARTIFACTS = ROOT / "test-artifacts"

# the module's run folder goes through `thinktune report` in a subprocess (and the page through Chromium)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A run folder after `thinktune eval`, `eval --base`, `compare` and `report` (R1 template, <think> pre-opened)."""
    root = tmp_path_factory.mktemp("e2e")
    run = make_run(root, tokenizer="r1-think", n_val=4, max_new_tokens=8, with_eval=False)
    bench = write_mcq(root / "mcq.jsonl", MCQ_ROWS)
    out = {"run": run, "bench": bench, "root": root}
    out["eval_tuned"] = main(["eval", str(run), "--limit", "3", "--benchmark", str(bench)])
    out["eval_base"] = main(["eval", str(run), "--base", "--limit", "3", "--benchmark", str(bench)])
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        out["compare"] = main(["compare", str(run), "--limit", "3"])
    out["compare_stdout"] = printed.getvalue()
    # the real entry point, in a subprocess, for one command
    out["report"] = cli("report", str(run), timeout=300)
    return out


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _lines(path: Path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_eval_writes_summary_and_per_question_records(evaluated):
    run = evaluated["run"]
    assert evaluated["eval_tuned"] == 0 and evaluated["eval_base"] == 0
    tuned, base = _load(run / "eval_tuned.json"), _load(run / "eval_base.json")
    assert tuned["variant"] == "tuned" and tuned["adapter"].endswith("adapter")
    assert base["variant"] == "base" and base["adapter"] is None
    assert tuned["generation"] == base["generation"]  # same decoding for both
    assert tuned["generation"]["prompt_opens_think"] is True and tuned["generation"]["max_new_tokens"] == 8
    for summary in (tuned, base):
        loss = summary["heldout_loss"]
        assert loss["examples"] == 3
        assert loss["reasoning"]["tokens"] > 0 and loss["answer"]["tokens"] > 0
        assert loss["completion"]["tokens"] == loss["reasoning"]["tokens"] + loss["answer"]["tokens"]
        bench = summary["benchmarks"]["mcq"]
        assert bench["questions"] == 3 and bench["rows_in_file"] == 3
        assert bench["baselines"] == {
            "constant_letter": "B",
            "constant_letter_accuracy": 2 / 3,
            "random": 0.25,
        }
        assert set(summary["health"]) == {"all", "validation", "mcq"}
        assert summary["health"]["all"]["generations"] == 6
    # the adapter has non-zero weights: the tuned model scores the held-out set differently
    assert tuned["heldout_loss"]["completion"]["loss"] != base["heldout_loss"]["completion"]["loss"]
    records = _lines(run / "eval_tuned.jsonl")
    assert [r["set"] for r in records] == ["validation"] * 3 + ["mcq"] * 3
    mcq = [r for r in records if r["set"] == "mcq"]
    assert [r["reference_letter"] for r in mcq] == ["B", "B", "A"]
    assert all(r["extracted_by"] for r in mcq) and all(isinstance(r["correct"], bool) for r in mcq)
    assert [r["question_language"] for r in mcq] == ["en", "en", "zh"]
    graded = [r for r in records if r["set"] == "validation" and "reference_letter" in r]
    assert len(graded) == 1 and graded[0]["reference_letter"] == "B"  # the held-out example with MCQ fields
    for r in records:
        assert r["new_tokens"] <= 8 and r["reasoning_tokens"] + r["answer_tokens"] <= r["new_tokens"]
        assert r["think_opened"]  # the R1 prompt opened <think>


def test_eval_refuses_to_overwrite_and_bad_requests_fail_fast(evaluated, capsys):
    run, bench = evaluated["run"], evaluated["bench"]
    before = (run / "eval_tuned.json").read_bytes()
    assert main(["eval", str(run), "--limit", "1"]) == 2
    assert "eval_tuned.json already exists; pass --overwrite" in capsys.readouterr().err
    assert (run / "eval_tuned.json").read_bytes() == before
    assert main(["eval", str(run), "--name", "x", "data.max_length=64"]) == 2
    assert "'data.max_length' cannot be changed when evaluating a run" in capsys.readouterr().err
    assert main(["eval", str(run), "--name", "x", "--benchmark", str(bench.parent / "missing.jsonl")]) == 2
    assert "missing.jsonl' does not exist" in capsys.readouterr().err
    assert not (run / "eval_x.json").exists()


def test_vllm_requested_without_vllm_is_a_clear_error(evaluated, capsys):
    if shutil.which("nvidia-smi") and __import__("importlib.util").util.find_spec("vllm"):
        pytest.skip("vLLM and a GPU are present here: the request is valid")
    assert main(["eval", str(evaluated["run"]), "--name", "v", "generation.backend=vllm"]) == 2
    err = capsys.readouterr().err
    assert "generation.backend=vllm" in err and ("not installed" in err or "CUDA GPU" in err)
    assert "Traceback" not in err
    assert not (evaluated["run"] / "eval_v.json").exists()


def test_eval_a_model_outside_any_run(evaluated, tmp_path):
    run = evaluated["run"]
    out = tmp_path / "base-eval"
    code = main(
        [
            "eval",
            "--model",
            str(evaluated["root"] / "base"),
            "--adapter",
            str(run / "adapter"),
            "--data",
            str(run / "data" / "validation.jsonl"),
            "--limit",
            "2",
            "--out",
            str(out),
            "generation.max_new_tokens=4",
        ]
    )
    assert code == 0
    summary = _load(out / "eval_tuned.json")
    assert summary["run_dir"] is None and summary["heldout_loss"]["examples"] == 2
    assert summary["benchmarks"] == {} and summary["generation"]["max_new_tokens"] == 4
    # the same adapter through --model/--adapter scores the held-out set as the run does (same prompts)
    ran = _load(run / "eval_tuned.json")["heldout_loss"]
    assert summary["heldout_loss"]["reasoning"]["tokens"] <= ran["reasoning"]["tokens"]


def test_compare_pairs_base_and_tuned(evaluated):
    run, printed = evaluated["run"], evaluated["compare_stdout"]
    assert evaluated["compare"] == 0
    pairs = _lines(run / "compare.jsonl")
    assert len(pairs) == 3 and [p["set"] for p in pairs] == ["validation"] * 3
    for p in pairs:
        assert p["question"] and p["reference"]
        for side in ("base", "tuned"):
            s = p[side]
            for key in (
                "reasoning",
                "answer",
                "reasoning_tokens",
                "answer_tokens",
                "think_closed",
                "stopped",
            ):
                assert key in s
            assert s["new_tokens"] <= 8
    graded = [p for p in pairs if p["reference_letter"]]
    assert len(graded) == 1 and {"predicted", "correct"} <= set(graded[0]["tuned"])
    summary = _load(run / "compare.json")
    assert summary["questions"] == 3 and summary["base"]["accuracy"]["questions"] == 1
    assert summary["generation"]["temperature"] == 0.0
    # the terminal summary: a side-by-side table of what changed
    for label in (
        "closed the think block",
        "stopped at end-of-turn",
        "reasoning tokens (median)",
        "answers that changed",
    ):
        assert label in printed
    assert "base" in printed and "tuned" in printed and "change" in printed


def test_mixed_batches_give_the_separate_passes_answers(evaluated):
    """compare decodes base and tuned rows in the same batches (PEFT mixed batches): the answers equal those of
    one pass with the adapter off and one with it on; sampling keeps separate, seeded passes."""

    session = open_run(evaluated["run"])
    prompts = [session.formatter.prompt(e.question, e.system) for e in session.validation_examples(4)]
    decoding = session.decoding()
    pair = session.generator().both(prompts, **{**decoding, "batch_size": 3})  # pairs split across batches
    assert pair is not None
    base = session.generate(prompts, adapter=False)
    tuned = session.generate(prompts, adapter=True)
    assert [g.text for g in pair[0]] == [g.text for g in base]
    assert [g.text for g in pair[1]] == [g.text for g in tuned]
    assert [g.text for g in base] != [g.text for g in tuned]  # the adapter changes something
    assert session.generator().both(prompts, **{**decoding, "temperature": 0.7}) is None


def test_report_has_every_section_filled(evaluated):
    proc = evaluated["report"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {evaluated['run'] / 'report.html'}"
    html = (evaluated["run"] / "report.html").read_text(encoding="utf-8")
    for section in ("summary", "loss", "data", "heldout", "accuracy", "lengths", "health", "examples"):
        assert f'<section id="{section}">' in html
    assert "not run yet" not in html
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") == 4  # loss, data lengths, accuracy, reasoning lengths


@pytest.mark.skipif(
    chromium_path() is None, reason="chromium is not installed (.ci/run installs Debian's chromium)"
)
def test_report_renders_in_headless_chromium(evaluated):
    shot = ARTIFACTS / "report.png"
    result = inspect_page(evaluated["run"] / "report.html", shot)
    facts = result["facts"]
    assert result["errors"] == []
    assert [u for u in result["requests"] if not u.startswith(("file:", "data:"))] == []
    ids = [s["id"] for s in facts["sections"]]
    assert ids == ["summary", "loss", "data", "heldout", "accuracy", "lengths", "health", "examples"]
    assert not any(s["missing"] for s in facts["sections"])
    plots = {img["id"]: img for img in facts["images"]}
    assert set(plots) == {"loss-plot", "length-histogram", "accuracy-plot", "length-plot"}
    for img in plots.values():
        assert img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0
        assert img["visible"] and img["width"] > 100 and img["height"] > 100
    assert facts["scripts"] == 0
    assert facts["details"] >= 3 and facts["closedDetails"] == facts["details"]  # reasoning starts collapsed
    assert "Run summary" in facts["text"] and "Before and after: examples" in facts["text"]
    assert shot.stat().st_size > 10_000
    os.chmod(shot, 0o644)
