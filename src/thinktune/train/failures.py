"""What training does when things go wrong: a message that says what to do, and a run folder that stays usable.

- :class:`NonFiniteGuard` (a TrainerCallback) checks the gradients before every optimizer step; a NaN or
  infinite value stops training *before* the weights are updated, naming the step and the likely causes
  (learning rate too high; fp16 overflow of a model trained in bf16). The last checkpoint is untouched.
- :func:`explain_failure` (and :func:`recorded`, the block it guards) turns what the Trainer raised into a :class:`~thinktune.errors.ThinktuneError` and the
  ``summary.json`` status: GPU out of memory (with the ``thinktune plan`` recommendation for the detected card),
  disk full during a save (the previous checkpoint is intact; incomplete ones are removed), non-finite values.

Whether a checkpoint is complete is :mod:`thinktune.train.checkpoints`' decision; these messages only name it.
"""

from __future__ import annotations

import errno
import logging
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from transformers import TrainerCallback

from thinktune.config import Config
from thinktune.errors import DiskFull, GPUOutOfMemory, NumericalError, TrainError
from thinktune.models.precision import Precision
from thinktune.plan import recommend
from thinktune.rundir import RunDir
from thinktune.train.checkpoints import latest_checkpoint, remove_incomplete_checkpoints

log = logging.getLogger(__name__)

#: Consecutive fp16 steps with overflowing gradients tolerated: the gradient scaler skips such a step and halves
#: its scale, which is routine for a few steps; a run that overflows every step is not training.
FP16_SKIPS_TOLERATED = 8


# ------------------------------------------------------------------------------------------ NaN / inf


class NonFiniteGuard(TrainerCallback):
    """Stop at the first optimizer step whose gradients are not finite, before the update is applied."""

    def __init__(self, cfg: Config, run: RunDir, precision: Precision) -> None:
        self.cfg, self.run, self.precision = cfg, run, precision
        self._fp16_skips = 0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        if model is None:
            return
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        # One reduction and one device sync per step: LoRA gradients are a few MB at most.
        total = torch.stack([g.detach().float().norm() for g in grads]).norm()
        if bool(torch.isfinite(total)):
            self._fp16_skips = 0
            return
        if args.fp16:
            # The gradient scaler skips this step and lowers its scale: normal a few times, fatal if it persists.
            self._fp16_skips += 1
            if self._fp16_skips < FP16_SKIPS_TOLERATED:
                return
        raise NumericalError(self.message(state.global_step + 1, float(total), fp16=bool(args.fp16)))

    def message(self, step: int, value: float, *, fp16: bool) -> str:
        lr = self.cfg.train.learning_rate
        what = "NaN" if math.isnan(value) else "infinite"
        causes = [
            f"the learning rate is too high: train.learning_rate={lr:g}; start a new run with e.g. "
            f"train.learning_rate={lr / 10:g} (and train.warmup_ratio=0.03 if it is 0)"
        ]
        if fp16 or self.precision.dtype == "float16":
            causes.insert(
                0,
                "fp16 overflow: this GPU has no bf16, so training runs in fp16 mixed precision, and models trained "
                "in bf16 (Qwen, DeepSeek-R1-Distill, Llama 3) produce activations beyond fp16's range (65504); "
                "train on a GPU with bf16, or set model.dtype=float32",
            )
        causes.append("a corrupted base model or adapter (check that the model generates sensible text)")
        ckpt = latest_checkpoint(self.run)
        kept = (
            f"The weights were not updated with these gradients; the last good checkpoint is {ckpt}."
            if ckpt
            else "No checkpoint had been saved yet."
        )
        return (
            f"training stopped at step {step}: the gradient norm is {what}, so the loss or its gradient "
            f"overflowed. Likely causes:\n  - "
            + "\n  - ".join(causes)
            + f"\n{kept} summary.json: status diverged."
        )


# ------------------------------------------------------------------------------------------ failures


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "CUDA out of memory" in str(e)


def _is_disk_full(e: BaseException) -> bool:
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 10:
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(cur) or "os error 28" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def oom_message(cfg: Config, e: BaseException) -> str:
    """What to change after a CUDA out-of-memory error: the plan recommendation for the detected card."""
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    head = f"the GPU ran out of memory during training ({first[:200]})."
    cmd = "`thinktune plan CONFIG.yaml` shows where the memory goes"
    try:
        gpu = recommend.detected_gpu()
    except Exception:  # a broken CUDA context must not hide the original problem
        gpu = None
    if gpu is None:
        return f"{head} Lower train.per_device_train_batch_size or data.max_length; {cmd} (use --vram for your card)."
    name, vram, _ = gpu
    try:
        fits, est, rec = recommend.check_fits(cfg, vram)
        if fits and est is not None:
            # The estimate fits the whole card, but other processes or fragmentation took the rest: plan for less.
            usable = int(vram * 0.8)
            fits, est, rec = recommend.check_fits(cfg, usable)
            if fits:
                return (
                    f"{head} The estimate for this configuration fits {name} ({vram / 2**30:.1f} GB), so other "
                    f"processes on the GPU or memory fragmentation took the rest: check nvidia-smi, set "
                    f"PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, or lower "
                    f"train.per_device_train_batch_size. {cmd}."
                )
            vram = usable
        if est is None or rec is None:
            return f"{head} {cmd} (the memory model could not read this model)."
        return f"{head} {recommend.fit_message(name, vram, est, rec)}"
    except Exception as plan_error:  # the recommendation is a courtesy: never mask the OOM with another error
        log.debug("plan failed after OOM: %s", plan_error)
        return f"{head} Lower train.per_device_train_batch_size or data.max_length; {cmd}."


def resume_command(run: RunDir) -> str:
    """The command that resumes this run: `train` for SFT, `grpo` or `dpo` for the reinforcement stage."""
    try:
        return run.read_summary().command
    except Exception:  # an unreadable summary must not hide the failure being explained
        return "train"


def explain_failure(e: BaseException, cfg: Config, run: RunDir) -> tuple[str, TrainError | None]:
    """(summary.json status, the error to raise instead of `e` or None to re-raise `e`)."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", None
    if isinstance(e, NumericalError):
        return "diverged", None
    if _is_oom(e):
        return "out_of_memory", GPUOutOfMemory(oom_message(cfg, e))
    if _is_disk_full(e):
        remove_incomplete_checkpoints(run)
        free = shutil.disk_usage(run.path).free / 2**30
        ckpt = latest_checkpoint(run)
        kept = (
            f"The last complete checkpoint {ckpt} is intact; free some space, then resume: "
            f"thinktune {resume_command(run)} --resume {run.path}"
            if ckpt
            else "No complete checkpoint had been written yet; free some space and start the run again."
        )
        return "failed", DiskFull(
            f"no space left on the disk holding {run.path} ({free:.2f} GiB free) while saving: {e}.\n{kept} "
            "(Each checkpoint holds the adapter and optimizer state; train.save_total_limit bounds how many are kept.)"
        )
    return "failed", None


@contextmanager
def recorded(cfg: Config, run: RunDir, *, main: bool) -> Iterator[None]:
    """Run the block (training, saving the adapter); if it raises, summary.json gets the status and the error,
    and the error is replaced by the one that says what to do where :func:`explain_failure` knows it."""
    try:
        yield
    except BaseException as e:
        status, explained = explain_failure(e, cfg, run)
        if main:
            error = explained or e
            run.update_summary(status=status, error=f"{type(error).__name__}: {error}")
        if explained is not None:
            raise explained from None
        raise


# ------------------------------------------------------------------------------------------ adapter
