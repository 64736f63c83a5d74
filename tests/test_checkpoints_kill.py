"""SIGKILL at random moments, including in the middle of checkpoint saves, never leaves a run that cannot be
resumed: checkpoints count only once their trainer_state.json (written last) parses, the adapter is renamed
into place, and resume removes what a killed save left behind."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _train_helpers import (
    read_metrics,
    single_thread,
    tiny_sections,
    tiny_training_setup,
    write_config,
)
from thinktune.rundir import RunDir
from thinktune.train.checkpoints import checkpoint_complete, latest_checkpoint
from thinktune.train.recipe import train

MAX_STEPS = 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_training_setup(tmp_path_factory, "kill", 16)


def _launch(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "thinktune", "train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _steps_done(run: Path) -> int:
    """Optimizer steps logged so far (metrics.jsonl; a partial last line is ignored)."""
    if not (run / "metrics.jsonl").is_file():
        return 0
    steps = [r["step"] for r in RunDir(run).metrics_records() if "loss" in r]
    return max(steps, default=0)


def _kill_after_progress(proc: subprocess.Popen, run: Path, past: int, delay: float) -> None:
    deadline = time.monotonic() + 240
    while _steps_done(run) <= past or latest_checkpoint(RunDir(run)) is None:
        if proc.poll() is not None:
            pytest.fail(
                f"training exited before it could be killed ({proc.returncode}):\n{proc.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for training progress")
        time.sleep(0.01)
    time.sleep(delay)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.wait(timeout=60)
    proc.stderr.close()


@pytest.mark.slow
def test_random_sigkills_then_resume_each_time_to_completion(setup):
    root, model, data = setup
    rng = random.Random(7)
    # A checkpoint every step (two kept): most of the wall time is spent saving and rotating checkpoints, so
    # random kills land inside saves and deletions.
    sections = tiny_sections(
        model, data, root / "runs", run_name="killed", max_steps=MAX_STEPS, save_steps=1, eval_steps=1000
    )
    sections["train"]["save_total_limit"] = 2
    config = write_config(root / "killed.yaml", sections)
    run = root / "runs" / "killed"
    resumed_from = []
    torn = 0  # kills that landed inside a checkpoint save (left an incomplete checkpoint folder)
    procs = []
    try:
        for kill in range(3):
            args = [str(config)] if kill == 0 else ["--resume", str(run)]
            procs.append(_launch(args, root))
            _kill_after_progress(procs[-1], run, _steps_done(run), rng.uniform(0.0, 0.6))
            ckpt = latest_checkpoint(RunDir(run))
            assert ckpt is not None and checkpoint_complete(ckpt), f"kill {kill} left nothing to resume"
            assert json.loads((run / "summary.json").read_text())["status"] == "running"
            resumed_from.append(ckpt.name)
            torn += any(not checkpoint_complete(p) for p in (run / "checkpoints").glob("checkpoint-*"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    with single_thread():
        done = train(RunDir.open(run).config(), resume=run)
    summary = json.loads(done.summary.read_text())
    assert summary["status"] == "completed" and summary["steps"] == MAX_STEPS, summary
    train_log, _ = read_metrics(run)
    assert [r["step"] for r in train_log] == list(range(1, MAX_STEPS + 1))  # no step lost or repeated
    assert (done.adapter / "adapter_model.safetensors").is_file()
    assert all(checkpoint_complete(p) for p in done.checkpoints.glob("checkpoint-*"))
    assert not list(run.glob(".adapter.partial*"))
    # A kill inside a save leaves the previous checkpoint as the latest; otherwise each resume starts later.
    steps = [int(n.rsplit("-", 1)[1]) for n in resumed_from]
    assert steps == sorted(steps), resumed_from
    print(f"resumed from {resumed_from}; {torn} of 3 kills landed inside a checkpoint save")


def test_a_checkpoint_killed_midway_is_ignored_and_removed_on_resume(setup, tmp_path):
    """The deterministic version of a kill inside a save: the newest checkpoint has a truncated
    trainer_state.json (or none), and a half-written adapter folder lies beside adapter/."""
    root, model, data = setup
    sections = tiny_sections(
        model, data, tmp_path / "runs", run_name="cut", max_steps=6, save_steps=2, eval_steps=100
    )
    sections["train"]["save_total_limit"] = 5
    cfg_path = write_config(tmp_path / "cut.yaml", sections)
    from thinktune.configfile import load_config

    with single_thread():
        run = train(load_config(cfg_path))
    ckpts = run.checkpoints
    # Simulate: killed while writing checkpoint-6's state, and checkpoint-8 (no state at all) and the adapter.
    state = (ckpts / "checkpoint-6" / "trainer_state.json").read_text()
    (ckpts / "checkpoint-6" / "trainer_state.json").write_text(state[: len(state) // 2])
    shutil.copytree(ckpts / "checkpoint-4", ckpts / "checkpoint-8")
    (ckpts / "checkpoint-8" / "trainer_state.json").unlink()
    shutil.move(run.adapter, run.path / ".adapter.partial")
    summary = json.loads(run.summary.read_text())
    summary["status"] = "running"
    run.summary.write_text(json.dumps(summary))

    assert latest_checkpoint(run) == ckpts / "checkpoint-4"
    with single_thread():
        again = train(run.config(), resume=run.path)
    assert json.loads(again.summary.read_text())["status"] == "completed"
    assert json.loads(again.summary.read_text())["resumed_from"] == str(ckpts / "checkpoint-4")
    assert checkpoint_complete(ckpts / "checkpoint-6")  # redone, not reused
    assert not (ckpts / "checkpoint-8").exists() and not (run.path / ".adapter.partial").exists()
    assert (again.adapter / "adapter_model.safetensors").is_file()
