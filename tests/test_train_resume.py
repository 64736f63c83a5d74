"""Interruption and resume (slow tier): SIGKILL after a checkpoint then --resume matches an uninterrupted run;
Ctrl-C (SIGINT) saves a checkpoint and exits cleanly with the resume hint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _train_helpers import (
    adapter_tensors,
    read_metrics,
    single_thread,
    tiny_sections,
    tiny_training_setup,
    write_config,
)
from thinktune.configfile import load_config
from thinktune.rundir import RunDir
from thinktune.train.recipe import train

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_training_setup(tmp_path_factory, "resume", 40)


@pytest.fixture
def start():
    """Start `thinktune train CONFIG` in a subprocess; whatever happens, it does not outlive the test."""
    procs = []

    def _start(config: Path, cwd: Path) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "thinktune", "train", str(config)]
        procs.append(
            subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
        return procs[-1]

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training exited early ({proc.returncode}):\n{err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the training process")
        time.sleep(0.02)


def test_resume_after_sigkill_matches_an_uninterrupted_run(setup, start):
    root, model, data = setup
    train_settings = dict(max_steps=30, save_steps=5, eval_steps=10, save_total_limit=2)
    sections = tiny_sections(model, data, root / "runs", run_name="killed", **train_settings)
    config = write_config(root / "killed.yaml", sections)
    proc = start(config, root)
    run = root / "runs" / "killed"
    _wait_for(lambda: any(run.glob("checkpoints/checkpoint-*/trainer_state.json")), proc)
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "adapter").exists(), "the run finished before it could be killed"
    assert json.loads((run / "summary.json").read_text())["status"] == "running"

    resumed = train(RunDir.open(run).config(), resume=run)
    summary = json.loads(resumed.summary.read_text())
    assert summary["status"] == "completed" and summary["steps"] == 30
    assert summary["resumed_from"].startswith(str(run / "checkpoints" / "checkpoint-"))
    train_log, eval_log = read_metrics(run)
    assert [r["step"] for r in train_log] == list(range(1, 31))  # continues, no repeated or missing steps
    assert [r["step"] for r in eval_log] == [0, 10, 20, 30]

    sections["train"]["run_name"] = "reference"
    reference = train(load_config(write_config(root / "reference.yaml", sections)))
    ref_summary = json.loads(reference.summary.read_text())
    assert summary["supervised_tokens"] == ref_summary["supervised_tokens"]
    assert summary["train_tokens"] == ref_summary["train_tokens"]
    got, want = adapter_tensors(resumed.adapter), adapter_tensors(reference.adapter)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5), name
    ref_train, _ = read_metrics(reference.path)
    assert [r["loss"] for r in train_log] == pytest.approx([r["loss"] for r in ref_train], abs=1e-4)


def test_sigint_saves_a_checkpoint_and_says_how_to_resume(setup, start):
    root, model, data = setup
    sections = tiny_sections(model, data, root / "runs", run_name="ctrl-c", max_steps=400, save_steps=1000)
    config = write_config(root / "ctrl-c.yaml", sections)
    proc = start(config, root)
    run = root / "runs" / "ctrl-c"
    _wait_for(
        lambda: (run / "metrics.jsonl").is_file() and '"loss"' in (run / "metrics.jsonl").read_text(), proc
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert f"thinktune train --resume {run}" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
    step = summary["steps"]
    assert 0 < step < 400
    assert Path(summary["checkpoint"]) == run / "checkpoints" / f"checkpoint-{step}"
    assert (run / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").is_file()
    assert not (run / "adapter").exists()


def test_early_stopping_stops_and_keeps_the_best_adapter(setup):
    root, model, data = setup
    # A learning rate too small to change the held-out loss: no evaluation improves on the first one.
    sections = tiny_sections(
        model, data, root / "runs", run_name="early", max_steps=40, eval_steps=2, save_steps=2,
        learning_rate=1e-12, early_stopping_patience=2,
    )  # fmt: skip
    run = train(load_config(write_config(root / "early.yaml", sections)))
    summary = json.loads(run.summary.read_text())
    assert summary["status"] == "completed" and summary["steps"] < 40
    _, eval_log = read_metrics(run.path)
    assert len(eval_log) <= 5 and (run.path / "adapter" / "adapter_model.safetensors").is_file()


def test_a_run_without_validation_split(setup):
    root, model, data = setup
    sections = tiny_sections(model, data, root / "runs", run_name="no-val", max_steps=3)
    sections["data"]["val_size"] = 0
    run = train(load_config(write_config(root / "no-val.yaml", sections)))
    summary = json.loads(run.summary.read_text())
    assert summary["status"] == "completed" and summary["initial_eval_loss"] is None
    assert not run.validation_data.exists() and run.loss_curve.is_file()
    train_log, eval_log = read_metrics(run.path)
    assert len(train_log) == 3 and eval_log == []


def test_early_stopping_needs_checkpoints_at_evaluations(setup):
    from thinktune.errors import TrainError

    root, model, data = setup
    sections = tiny_sections(model, data, root / "runs", run_name="bad", eval_steps=3, save_steps=4)
    sections["train"]["early_stopping_patience"] = 2
    with pytest.raises(
        TrainError, match="train.save_steps \\(4\\) to be a multiple of train.eval_steps \\(3\\)"
    ):
        train(load_config(write_config(root / "bad.yaml", sections)))
