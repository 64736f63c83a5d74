"""The command line: help is instant (no heavy imports), inspect-data end to end, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import DEMO_DATA, cli, needs_shared

pytestmark = pytest.mark.slow  # every test runs `python -m thinktune` (or python -c) in a subprocess


def test_help_imports_no_heavy_library():
    code = (
        "import sys\nfrom thinktune.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'matplotlib', 'datasets', 'starlette', 'uvicorn') "
        "if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "inspect-data" in out and "config" in out and "\n    ui " in out


def test_python_m_and_subcommand_help():
    r = cli("--help")
    assert r.returncode == 0 and "usage: thinktune" in r.stdout
    r = cli("inspect-data", "--help")
    assert r.returncode == 0 and "example: thinktune inspect-data" in r.stdout
    assert cli("--version").stdout.startswith("thinktune ")


def test_config_lists_fields_and_resolves(tmp_path):
    r = cli("config")
    assert r.returncode == 0 and "data.max_length = 2048" in r.stdout and "lora.lora_alpha" in r.stdout
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  max_length: 333\n")
    r = cli("config", str(cfg), "train.learning_rate=1e-5")
    assert r.returncode == 0 and "max_length: 333" in r.stdout and "learning_rate: 1.0e-05" in r.stdout
    r = cli("config", "train.learnig_rate=1")
    assert r.returncode == 2 and "Did you mean 'learning_rate'" in r.stderr and "Traceback" not in r.stderr


def test_inspect_data_on_the_bundled_sample(tmp_path):
    out = tmp_path / "report"
    r = cli(
        "inspect-data",
        "--data",
        "sample",
        "--model",
        "pkg:qwen3-tokenizer",
        "--show",
        "1",
        "--no-color",
        "--out",
        str(out),
        "data.max_length=300",
    )
    assert r.returncode == 0, r.stderr
    assert "[[TRAINED: <think>" in r.stdout and "end-of-turn '<|im_end|>' trained: yes" in r.stdout
    report = json.loads((out / "data_report.json").read_text())
    assert report["data"]["schema"] == "medical-o1" and report["length_policy"]["max_length"] == 300
    assert (
        report["length_policy"]["kept"] + len(report["length_policy"]["dropped"])
        == report["data"]["examples"]
    )
    assert (out / "length_histogram.png").stat().st_size > 5000
    again = cli("inspect-data", "--data", "sample", "--model", "pkg:qwen3-tokenizer", "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwritten


@needs_shared(DEMO_DATA)
def test_inspect_data_shows_what_512_tokens_would_cut(tmp_path):
    r = cli(
        "inspect-data",
        "--data",
        str(DEMO_DATA),
        "--model",
        "pkg:r1-distill-tokenizer",
        "--max-length",
        "512",
        "--show",
        "0",
        "--out",
        str(tmp_path / "r"),
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r" / "data_report.json").read_text())
    assert report["data"]["examples"] == 198
    would = report["length_policy"]["truncation_would"]
    damaged = sum(n for how, n in would.items() if how != "fits")
    assert damaged > 150, "most medical-o1 answers do not fit in the tutorial's 512 tokens"
    assert 600 <= report["lengths"]["total"]["p50"] <= 720
    assert report["template"]["family"] == "strips_reasoning"
    assert "loses the whole answer" in r.stdout


def test_inspect_data_errors_are_clear(tmp_path):
    runs = tmp_path / "runs"
    r = cli(
        "inspect-data",
        "--data",
        str(tmp_path / "missing.jsonl"),
        "--model",
        "pkg:qwen3-tokenizer",
        f"train.output_dir={runs}",
    )
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert not runs.exists(), "a failed inspect-data left a run folder behind"
    r = cli("inspect-data", "--data", "sample")
    assert r.returncode == 2 and "model.name_or_path is empty" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"Question": "Q", "Complex_CoT": "R", "Response": ""}\n{"Question": "Q2", "Complex_CoT": "R", "Response": "A"}\n'
    )
    r = cli(
        "inspect-data",
        "--data",
        str(bad),
        "--model",
        "pkg:qwen3-tokenizer",
        "data.on_bad_row=error",
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2 and f"{bad}, row 1: empty answer" in r.stderr
    r = cli(
        "inspect-data",
        "--data",
        str(bad),
        "--model",
        "pkg:qwen3-tokenizer",
        "--show",
        "0",
        "data.val_size=0",
        "--out",
        str(tmp_path / "o2"),
    )
    assert r.returncode == 0 and "row 1: empty answer" in r.stderr  # skipped, reported, run goes on


def test_inspect_data_accepts_model_folder_and_flags_beat_overrides(tmp_path, tiny_qwen2_dir):
    r = cli(
        "inspect-data",
        "--data",
        "sample",
        "--model",
        str(tiny_qwen2_dir),
        "--show",
        "0",
        "--max-length",
        "400",
        "data.max_length=9999",
        "--out",
        str(tmp_path / "r"),
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r" / "data_report.json").read_text())
    assert report["length_policy"]["max_length"] == 400  # explicit flag > dotted override
    assert report["template"]["family"] == "strips_reasoning"


def test_inspect_data_reads_the_tokenizer_from_a_gguf_file(tmp_path):
    from thinktune.models.assets import smollm2_gguf_path

    r = cli(
        "inspect-data",
        "--data",
        "sample",
        "--model",
        str(smollm2_gguf_path()),
        "--show",
        "0",
        "--out",
        str(tmp_path / "g"),
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "g" / "data_report.json").read_text())
    assert report["template"]["family"] == "inline" and report["template"]["end_of_turn"] == "<|im_end|>"
