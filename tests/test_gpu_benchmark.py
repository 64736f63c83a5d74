"""benchmarks/gpu.py is prepared here and run once on a lent GPU, with no chance to debug it there: its --smoke
mode (the same code on a shrunk R1-Distill-Qwen config, on this CPU) must run end to end and write every part."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # runs python benchmarks/gpu.py in a subprocess


def test_gpu_benchmark_smoke_writes_every_part(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    parts = json.loads((tmp_path / "gpu_results.json").read_text())["parts"]

    arms = {row["arm"]: row for row in parts["arms"]["rows"]}
    assert list(arms) == ["tutorial", "trl-default", "thinktune"]
    for row in arms.values():
        assert row["examples_per_s"] > 0 and row["losses_finite"] and row["grad_norm_ok"]
    assert arms["thinktune"]["padding_efficiency"] == 1.0 > arms["tutorial"]["padding_efficiency"]
    # thinktune trains: its held-out completion loss falls after one step
    assert arms["thinktune"]["completion_loss_after"] < arms["thinktune"]["completion_loss_before"]

    cap = parts["cap8"]
    assert cap["cap_gb"] == 8.0 and cap["rows"]
    assert all(r["fits"] and r["peak"] > 0 and r["estimate"] > 0 for r in cap["rows"])
    assert {r["checkpointing"] for r in cap["rows"]} == {True, False}

    plan_rows = parts["plan"]["rows"]
    assert plan_rows and all(r["pass"] for r in plan_rows), plan_rows
    grpo = parts["grpo"]
    assert grpo["steps"] == 2 and grpo["peak_gb"] > 0 and grpo["estimate_gb"] > 0, grpo
    assert all(x and x > 0 for x in grpo["sampling_tokens_per_s"]) and grpo["completion_length"][0] == 16

    if not torch.cuda.is_available():
        assert parts["qlora7b"]["skipped"] == "no CUDA"

    table = (tmp_path / "gpu_results.md").read_text()
    assert "| tutorial |" in table and "8 GiB cap" in table and "7B QLoRA" in table and "## GRPO" in table
