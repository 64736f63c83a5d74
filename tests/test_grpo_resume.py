"""GRPO interrupted and resumed (slow tier), tested as SFT is: SIGKILL after a checkpoint then --resume matches an
uninterrupted run (the rollout is seeded per step, so the resumed run samples what the uninterrupted one did);
SIGTERM saves a checkpoint and exits with the resume hint; `thinktune grpo RUN_DIR` continues an SFT run."""

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
    arithmetic_rows,
    build_tiny_chatml,
    single_thread,
    tiny_sections,
    write_config,
    write_rows,
)
from conftest import cli
from thinktune.configfile import load_config
from thinktune.rundir import RunDir
from thinktune.train.grpo import grpo

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo-resume")
    model = build_tiny_chatml(root / "tiny")
    rows = []
    for i in range(16):
        a, b = i % 5 + 1, i // 5 + 2
        rows.append({"question": f"What is {a} plus {b}?", "options": {"A": str(a + b), "B": str(a + b + 1)}, "answer_idx": "A"})  # fmt: skip
    return root, model, write_rows(root / "mcq.jsonl", rows)


def sections(model: Path, data: Path, out: Path, name: str, **train) -> dict:
    return {
        "model": {"name_or_path": str(model)},
        "data": {"source": str(data), "val_size": 2},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "train": {
            "output_dir": str(out), "run_name": name, "max_steps": 8, "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1, "logging_steps": 1, "save_steps": 2, "save_total_limit": 2,
            "warmup_ratio": 0.0, **train,
        },
        "grpo": {"num_generations": 4, "max_prompt_length": 128, "max_completion_length": 16, "learning_rate": 1e-2},
    }  # fmt: skip


@pytest.fixture
def start():
    procs = []

    def _start(args: list[str], cwd: Path) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "thinktune", "grpo", *args],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
        return procs[-1]

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"grpo exited early ({proc.returncode}):\n{err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the grpo process")
        time.sleep(0.02)


def test_resume_after_sigkill_matches_an_uninterrupted_run(setup, start):
    root, model, data = setup
    s = sections(model, data, root / "runs", "killed")
    config = write_config(root / "killed.yaml", s)
    proc = start([str(config)], root)
    run = root / "runs" / "killed"
    _wait_for(lambda: any(run.glob("checkpoints/checkpoint-*/trainer_state.json")), proc)
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "adapter").exists(), "the run finished before it could be killed"
    assert json.loads((run / "summary.json").read_text())["status"] == "running"

    resumed = grpo(RunDir.open(run).config(), resume=run)
    summary = resumed.read_summary()
    assert summary.status == "completed" and summary.steps == 8 and summary.stage == "grpo"
    assert summary.resumed_from.startswith(str(run / "checkpoints" / "checkpoint-"))
    records = resumed.metrics_records()
    assert [r["step"] for r in records] == list(range(1, 9))  # no step lost or repeated
    assert {json.loads(x)["step"] for x in resumed.completions.read_text().splitlines()} == set(range(1, 9))

    s["train"]["run_name"] = "reference"
    reference = grpo(load_config(write_config(root / "reference.yaml", s)))
    ref_records = reference.metrics_records()
    assert [r["reward"] for r in records] == pytest.approx([r["reward"] for r in ref_records], abs=1e-6)
    assert [r["completion_length"] for r in records] == [r["completion_length"] for r in ref_records]
    got, want = adapter_tensors(resumed.adapter), adapter_tensors(reference.adapter)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5), name


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(setup, start):
    root, model, data = setup
    config = write_config(
        root / "term.yaml", sections(model, data, root / "runs", "term", max_steps=400, save_steps=1000)
    )
    proc = start([str(config)], root)
    run = root / "runs" / "term"
    _wait_for(
        lambda: (run / "metrics.jsonl").is_file() and '"loss"' in (run / "metrics.jsonl").read_text(), proc
    )
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and f"thinktune grpo --resume {run}" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    step = summary["steps"]
    assert 0 < step < 400 and Path(summary["checkpoint"]) == run / "checkpoints" / f"checkpoint-{step}"
    assert not (run / "adapter").exists()


def test_grpo_continues_an_sft_run_from_the_command_line(setup):
    from thinktune.train.recipe import train

    root, model, data = setup
    sft_sections = tiny_sections(
        model, write_rows(root / "arith.jsonl", arithmetic_rows(12)), root / "sft", max_steps=2
    )
    sft_sections["lora"] |= {"r": 4, "lora_alpha": 8}
    sft = train(load_config(write_config(root / "sft.yaml", sft_sections)))
    r = cli(
        "grpo", str(sft.path), f"data.source={data}", "data.val_size=2", f"train.output_dir={root / 'cli'}",
        "train.run_name=cli", "train.max_steps=2", "train.per_device_train_batch_size=8",
        "train.gradient_accumulation_steps=1", "grpo.num_generations=8", "grpo.max_prompt_length=128",
        "grpo.max_completion_length=48", cwd=root, env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    run = RunDir.open(root / "cli" / "cli")
    assert f"run folder: {run.path}" in r.stdout
    cfg = run.config()
    assert cfg.grpo.init_from == str(sft.path) and cfg.model.name_or_path == str(model)
    summary = run.read_summary()
    assert summary.status == "completed" and summary.init_from == str(sft.path)
    # the policy continued the SFT adapter: same tensors, moved (8 completions of 48 tokens a step: a group with
    # a stopped and a cut completion, a reward spread, whatever the seed draws; test_grpo.py says why)
    got, start_ = adapter_tensors(run.adapter), adapter_tensors(sft.adapter)
    assert got.keys() == start_.keys() and any(not torch.equal(got[k], start_[k]) for k in got)
    # downstream commands read the run unchanged
    e = cli("eval", str(run.path), "--limit", "2", "generation.max_new_tokens=8", cwd=root)
    assert e.returncode == 0, e.stderr[-3000:]
