"""Training failures, provoked on a tiny model: NaN gradients, GPU out of memory (simulated on CPU), a full disk
during a checkpoint save. Each stops with a message saying what to do, keeps the last good checkpoint, and
records the outcome in summary.json."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from _train_helpers import (
    adapter_tensors,
    single_thread,
    tiny_sections,
    tiny_training_setup,
    write_config,
)
from thinktune import cli
from thinktune.configfile import load_config
from thinktune.errors import DiskFull, NumericalError
from thinktune.rundir import RunDir
from thinktune.train import failures
from thinktune.train import recipe as T
from thinktune.train.checkpoints import checkpoint_complete, latest_checkpoint
from thinktune.train.recipe import train
from thinktune.train.trainer import build_trainer


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_training_setup(tmp_path_factory, "train-failures", 16)


def _config(setup, tmp_path: Path, name: str, **train):
    root, model, data = setup
    return write_config(
        tmp_path / f"{name}.yaml", tiny_sections(model, data, tmp_path / "runs", run_name=name, **train)
    )


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _with_callback(monkeypatch, callback) -> None:
    """Add `callback` to the Trainer that thinktune.train builds (after thinktune's own)."""
    real = build_trainer

    def build(*args, **kwargs):
        trainer, cbs = real(*args, **kwargs)
        trainer.add_callback(callback)
        return trainer, cbs

    monkeypatch.setattr(T, "build_trainer", build)


def test_nan_stops_at_the_step_names_causes_and_keeps_the_last_checkpoint(setup, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    class PoisonAfterStep5(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 5:  # the 6th optimizer step computes on a NaN weight
                with torch.no_grad():
                    next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))

    _with_callback(monkeypatch, PoisonAfterStep5())
    cfg = load_config(_config(setup, tmp_path, "nan", max_steps=8, save_steps=4))
    with pytest.raises(NumericalError) as err:
        train(cfg)
    msg = str(err.value)
    assert "step 6" in msg and "NaN" in msg and "train.learning_rate=0.005" in msg
    run = RunDir(tmp_path / "runs" / "nan")
    assert latest_checkpoint(run) == run.checkpoints / "checkpoint-4"
    assert str(run.checkpoints / "checkpoint-4") in msg
    assert not run.adapter.exists()
    summary = _summary(run.path)
    assert summary["status"] == "diverged" and "step 6" in summary["error"]
    weights = adapter_tensors(run.checkpoints / "checkpoint-4")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_huge_learning_rate_is_stopped_before_the_weights_become_nan(setup, tmp_path):
    cfg = load_config(
        _config(setup, tmp_path, "lr", max_steps=8, learning_rate=1e30, save_steps=2, eval_steps=100)
    )
    with pytest.raises(NumericalError, match=r"learning rate is too high: train.learning_rate=1e\+30"):
        train(cfg)
    summary = _summary(tmp_path / "runs" / "lr")
    assert summary["status"] == "diverged"
    for ckpt in (tmp_path / "runs" / "lr" / "checkpoints").glob("checkpoint-*"):
        assert all(torch.isfinite(t).all() for t in adapter_tensors(ckpt).values()), ckpt


def _guard(precision: str = "fp32 (CPU)"):
    cfg = SimpleNamespace(train=SimpleNamespace(learning_rate=2e-4))
    return failures.NonFiniteGuard(cfg, RunDir(Path("/nonexistent-run")), precision)


def test_fp16_tolerates_a_few_scaler_skips_then_names_fp16_overflow():
    layer = torch.nn.Linear(2, 2)
    layer.weight.grad = torch.full_like(layer.weight, float("inf"))
    guard = _guard("fp16 mixed precision (fp32 adapter weights)")
    args, state = SimpleNamespace(fp16=True), SimpleNamespace(global_step=0)
    for _ in range(failures.FP16_SKIPS_TOLERATED - 1):
        guard.on_pre_optimizer_step(args, state, None, model=layer)  # the gradient scaler's routine skips
    with pytest.raises(NumericalError, match="fp16 overflow") as err:
        guard.on_pre_optimizer_step(args, state, None, model=layer)
    assert "infinite" in str(err.value) and "model.dtype=float32" in str(err.value)
    layer.weight.grad.zero_()
    guard.on_pre_optimizer_step(args, state, None, model=layer)  # finite again: no error


def test_cuda_oom_is_reported_with_the_plan_recommendation_for_the_card(setup, tmp_path, monkeypatch, capsys):
    from transformers import Trainer

    from thinktune.plan import recommend as plan

    real_step = Trainer.training_step

    def oom_at_step_2(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 5.79 GiB total)"
            )
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", oom_at_step_2)
    # A card too small for this configuration, so plan's recommendation is what the message must carry. The
    # pre-flight memory check would refuse such a card before training; it is switched off here to stand for
    # an estimate that was too optimistic (the OOM is what this test is about).
    monkeypatch.setattr(plan, "detected_gpu", lambda: ("NVIDIA GeForce GTX 1060 3GB", 300 * 2**20, False))
    monkeypatch.setattr(T, "ensure_fits", lambda cfg: None)
    config = _config(setup, tmp_path, "oom", max_steps=4)
    rc = cli.main(["train", str(config)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "ran out of memory" in err and "NVIDIA GeForce GTX 1060 3GB" in err
    assert "data.max_length=" in err or "smaller model" in err  # plan's overrides, or its verdict
    summary = _summary(tmp_path / "runs" / "oom")
    assert summary["status"] == "out_of_memory" and "GTX 1060" in summary["error"]


def test_oom_on_a_card_the_estimate_fits_points_at_other_processes(setup, monkeypatch):
    from thinktune.configfile import from_dict
    from thinktune.plan import recommend as plan

    _, model, data = setup
    cfg = from_dict(tiny_sections(model, data, Path("/tmp/unused")))
    monkeypatch.setattr(plan, "detected_gpu", lambda: ("NVIDIA H100 80GB HBM3", 80 * 2**30, True))
    msg = failures.oom_message(cfg, torch.OutOfMemoryError("CUDA out of memory."))
    assert "NVIDIA H100" in msg and "other processes" in msg and "thinktune plan" in msg


def test_disk_full_during_a_checkpoint_save_keeps_the_previous_one_and_resumes(setup, tmp_path, monkeypatch):
    real_save = torch.save

    def enospc_at_second_checkpoint(obj, f, *args, **kwargs):
        if isinstance(f, str) and f.endswith("optimizer.pt") and "checkpoint-8" in f:
            raise OSError(errno.ENOSPC, "No space left on device", f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", enospc_at_second_checkpoint)
    cfg = load_config(_config(setup, tmp_path, "full", max_steps=10, save_steps=4, eval_steps=100))
    with pytest.raises(DiskFull, match="no space left") as err:
        train(cfg)
    run = RunDir(tmp_path / "runs" / "full")
    assert "checkpoint-4 is intact" in str(err.value) and f"--resume {run.path}" in str(err.value)
    assert checkpoint_complete(run.checkpoints / "checkpoint-4")
    assert not (run.checkpoints / "checkpoint-8").exists()  # the partial save was removed to free space
    assert _summary(run.path)["status"] == "failed"

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    resumed = train(run.config(), resume=run.path)
    summary = _summary(resumed.path)
    assert summary["status"] == "completed" and summary["steps"] == 10
    assert (resumed.adapter / "adapter_model.safetensors").is_file()
    assert not list(resumed.path.glob(".adapter.partial*"))


def test_oom_recommendation_for_a_known_model_on_a_small_card(monkeypatch):
    """Qwen3-8B at 16k tokens on an 8 GB laptop GPU: the message carries plan's overrides that fit."""
    from thinktune.configfile import from_dict
    from thinktune.plan import recommend as plan

    cfg = from_dict(
        {
            "model": {"name_or_path": "Qwen/Qwen3-8B"},
            "data": {"source": "sample", "max_length": 16384},
            "train": {"per_device_train_batch_size": 8},
        }
    )
    monkeypatch.setattr(plan, "detected_gpu", lambda: ("NVIDIA GeForce RTX 4060 Laptop GPU", 8 * 2**30, True))
    msg = failures.oom_message(cfg, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.31 GiB"))
    assert "RTX 4060 Laptop GPU (8.0 GB)" in msg and "try: model.load_in_4bit=true" in msg
    assert "train.per_device_train_batch_size=1" in msg and "`thinktune plan`" in msg
