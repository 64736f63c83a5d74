"""`thinktune train` with 2 CPU processes (DDP over gloo, launched by torchrun: `accelerate launch` starts
several CPU processes only through MPI): one run folder, written by the main process only (slow tier)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from _train_helpers import (
    arithmetic_rows,
    build_tiny_chatml,
    read_metrics,
    tiny_sections,
    write_config,
    write_rows,
)
from thinktune.formatting.formatter import Formatter
from thinktune.infer.session import run_tokenizer

pytestmark = pytest.mark.slow


def test_two_process_ddp_on_cpu(tmp_path):
    model = build_tiny_chatml(tmp_path / "tiny")
    data = write_rows(tmp_path / "arith.jsonl", arithmetic_rows(20))
    config = write_config(
        tmp_path / "ddp.yaml", tiny_sections(model, data, tmp_path / "runs", run_name="ddp")
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "thinktune", "train", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
        stdout, stderr = proc.communicate()
        pytest.fail(f"2-process training did not finish in 300 s:\n{stderr[-4000:]}")
    assert proc.returncode == 0, stderr[-4000:]

    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["ddp"]  # both processes use the folder the main process created
    run = tmp_path / "runs" / "ddp"
    env_json = json.loads((run / "env.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert env_json["world_size"] == 2 and summary["world_size"] == 2
    assert summary["status"] == "completed" and summary["steps"] == 8
    train_log, eval_log = read_metrics(run)
    assert [r["step"] for r in train_log] == list(range(1, 9))  # one line per step: only rank 0 writes
    assert [r["step"] for r in eval_log] == [0, 4, 8]
    # 2 processes x 2 examples per step: 16 train examples are one epoch every 4 steps, and the token counters
    # add up both processes' batches: 2 epochs = every training example's tokens twice.
    assert summary["epochs"] == 2
    from thinktune.rundir import RunDir

    r = RunDir.open(run)
    fmt = Formatter.from_config(run_tokenizer(r), r.config().data)
    encoded = [fmt.encode(e) for e in r.examples("train")]
    assert summary["train_tokens"] == 2 * sum(len(e.input_ids) for e in encoded)
    assert summary["supervised_tokens"] == 2 * sum(sum(e.completion_mask) for e in encoded)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert stdout.count("run folder:") == 1  # the CLI reports once
