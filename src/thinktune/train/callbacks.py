"""Trainer callbacks that add thinktune's behaviour to TRL's SFTTrainer without subclassing it.

- :class:`MetricsWriter`  one metrics.jsonl line per log (train or eval) with tokens/s and supervised tokens so
  far; its counters are saved in every checkpoint, so a resumed run continues them exactly.
- :class:`LossCurve`      redraws loss_curve.png after each evaluation and at the end.
- :class:`GracefulStop`   SIGINT/SIGTERM: finish the current step, save a checkpoint, stop; a second signal stops
  at once.
- :class:`ProgressBar`    one tqdm bar with loss, eval loss and ETA (replaces the Trainer's dict printer).

Only the main process writes files; under DDP every process counts its own tokens and they are summed.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from thinktune.evals.grading import grade
from thinktune.evals.records import CompletionRecord
from thinktune.report.plots import plot_loss_curve
from thinktune.utils import append_jsonl, read_jsonl

log = logging.getLogger(__name__)


def _all_reduce(values: list[float], device: Any, op: str = "sum") -> list[float]:
    """Sum (or max) small counters over processes; a no-op in a single process."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


class MetricsWriter(TrainerCallback, ExportableState):
    """Append one line per Trainer log to metrics.jsonl.

    Train lines: step, epoch, loss, learning_rate, grad_norm, tokens, tokens_per_s, supervised_tokens,
    mean_token_accuracy. Eval lines: step, epoch, eval_loss, eval_mean_token_accuracy, eval_runtime_s.
    Supervised tokens are counted from the labels the model receives (a forward pre-hook), so they are exact for
    padding-free batches and gradient accumulation alike. The count is stored in each checkpoint's
    trainer_state.json (``stateful_callbacks``); :func:`saved_supervised_tokens` reads it back on resume.
    """

    def __init__(self, path: str, supervised_tokens: int = 0, extra: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.supervised_tokens = supervised_tokens  # all processes, up to the last optimizer step
        # Further Trainer log keys copied into train lines, as {log key: metrics.jsonl key} (GRPO's rewards...)
        self.extra = dict(extra or {})
        self._local_pending = 0
        self._hook = None
        self._last_time: float | None = None
        self._last_tokens = 0
        self._eval_time = 0.0

    def state(self) -> dict[str, Any]:
        return {"args": {"path": self.path}, "attributes": {"supervised_tokens": self.supervised_tokens}}

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        labels = kwargs.get("labels")
        # Only forwards that train: GRPO's no-grad passes (old and reference log-probabilities) are not counted.
        if module.training and labels is not None and torch.is_grad_enabled():
            # The loss predicts labels[t + 1] from position t: the first label of a row is never a target.
            self._local_pending += int((labels[..., 1:] != -100).sum())

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and self._hook is None:
            self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen
        self._eval_time = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        (delta,) = _all_reduce([float(self._local_pending)], args.device)
        self.supervised_tokens += int(delta)
        self._local_pending = 0

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        epoch = round(float(state.epoch or 0.0), 4)
        if "eval_loss" in logs:
            self._eval_time += float(logs.get("eval_runtime", 0.0))
            record = {"step": state.global_step, "epoch": epoch, "eval_loss": logs["eval_loss"]}
            if "eval_mean_token_accuracy" in logs:
                record["eval_mean_token_accuracy"] = logs["eval_mean_token_accuracy"]
            record["eval_runtime_s"] = logs.get("eval_runtime")
        elif "loss" in logs:
            now = time.perf_counter()
            tokens = state.num_input_tokens_seen
            seconds = (now - self._last_time) - self._eval_time if self._last_time else 0.0
            tokens_per_s = (tokens - self._last_tokens) / seconds if seconds > 0 else None
            self._last_time, self._last_tokens, self._eval_time = now, tokens, 0.0
            record = {
                "step": state.global_step,
                "epoch": epoch,
                "loss": logs["loss"],
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "tokens": tokens,
                "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s is not None else None,
                "supervised_tokens": self.supervised_tokens,
                "mean_token_accuracy": logs.get("mean_token_accuracy"),
            }
            for key, name in self.extra.items():
                if key in logs:
                    record[name] = logs[key]
        else:  # the Trainer's end-of-training summary (runtime, average loss): summary.json has it
            return
        record["time"] = round(time.time(), 3)
        if state.is_world_process_zero:
            append_jsonl(self.path, record)


def saved_supervised_tokens(trainer_state: dict[str, Any]) -> int:
    """The supervised-token count a checkpoint's trainer_state.json recorded (0 if it has none)."""
    saved = (trainer_state.get("stateful_callbacks") or {}).get(MetricsWriter.__name__) or {}
    if isinstance(saved, list):
        saved = saved[0] if saved else {}
    return int((saved.get("attributes") or {}).get("supervised_tokens", 0))


class LossCurve(TrainerCallback):
    """Redraw loss_curve.png from metrics.jsonl after each evaluation and when training ends."""

    def __init__(self, metrics_path: str | Path, png_path: str | Path, title: str = "") -> None:
        self.metrics_path, self.png_path, self.title = Path(metrics_path), Path(png_path), title

    def draw(self) -> None:
        if self.metrics_path.is_file():
            plot_loss_curve(list(read_jsonl(self.metrics_path)), self.png_path, title=self.title)

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.draw()

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.draw()


class GracefulStop(TrainerCallback):
    """The first SIGINT/SIGTERM asks the Trainer to save a checkpoint after the current step and stop."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._requested = 0.0
        self._previous: dict[int, Any] = {}

    @property
    def stopped(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self._requested:
            # Second signal: the user does not want to wait for the step to finish.
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
            return
        self._requested = float(signum)
        print(
            f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step "
            "(send it again to stop now, without saving).",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_train_begin(self, args, state, control, **kwargs):
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        # Every process must stop at the same step, or DDP would wait forever for the one that went on.
        (requested,) = _all_reduce([self._requested], args.device, op="max")
        if requested and not self.stopped:
            self.signal_name = signal.Signals(int(requested)).name
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()


class ProgressBar(TrainerCallback):
    """A tqdm bar over optimizer steps showing the latest loss and eval loss, with tqdm's ETA."""

    def __init__(self) -> None:
        self.bar = None
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="training",
                unit="step",
                dynamic_ncols=True,
                mininterval=1.0,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            self.postfix["loss"] = f"{logs['loss']:.4f}"
        if isinstance(logs.get("reward"), (int, float)):
            self.postfix["reward"] = f"{logs['reward']:.3f}"
        if "eval_loss" in logs:
            self.postfix["eval_loss"] = f"{logs['eval_loss']:.4f}"
        self.bar.set_postfix(self.postfix, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ------------------------------------------------------------------------------------------ reinforcement stage


class GenerationStats(TrainerCallback):
    """Tokens sampled and seconds spent sampling, filled in by the GRPO rollout and added to each train log as
    ``generation_tokens_per_s`` (before :class:`MetricsWriter` reads the log: list it first)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        (tokens,) = _all_reduce([float(self.tokens)], args.device)
        (seconds,) = _all_reduce([self.seconds], args.device, op="max")  # the processes sample side by side
        if seconds > 0:
            logs["generation_tokens_per_s"] = round(tokens / seconds, 1)
            logs["generation_s"] = round(seconds, 2)
        self.tokens, self.seconds = 0, 0.0


class RewardGuard(TrainerCallback):
    """GRPO's guard-rails, from the rewards TRL logs (gathered over every process):

    - every group's rewards identical for ``grpo.zero_spread_steps`` steps in a row: nothing is learned (the
      advantages are all 0, so the parameters do not move); say so once, with the likely cause and the fix;
    - more than ``grpo.clipped_warning`` of the completions cut at max_completion_length: say so once.

    The warnings are kept in :attr:`warnings` for summary.json."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.warnings: list[str] = []
        self._zero_steps = 0
        self._last_step = 0
        self._warned_zero = self._warned_clipped = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "frac_reward_zero_std" not in logs:
            return
        steps = max(1, state.global_step - self._last_step)
        self._last_step = state.global_step
        frac = logs.get("frac_reward_zero_std")
        if isinstance(frac, (int, float)) and frac >= 1 - 1e-9:
            self._zero_steps += steps
        else:
            self._zero_steps = 0
        g = self.cfg.grpo
        if self._zero_steps >= g.zero_spread_steps and not self._warned_zero:
            self._warned_zero = True
            self._warn(zero_spread_message(self.cfg, self._zero_steps, logs))
        clipped = logs.get("completions/clipped_ratio")
        if isinstance(clipped, (int, float)) and clipped > g.clipped_warning and not self._warned_clipped:
            self._warned_clipped = True
            self._warn(
                f"step {state.global_step}: {clipped:.0%} of the completions were cut at "
                f"grpo.max_completion_length={g.max_completion_length} (over grpo.clipped_warning="
                f"{g.clipped_warning:g}): a cut completion has no answer, so it can earn neither the format nor "
                "the correct reward. Raise grpo.max_completion_length, keep the length reward on "
                "(grpo.rewards.length) so rambling costs, or start from an SFT run that closes its think block."
            )

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)


def zero_spread_message(cfg: Any, steps: int, logs: Mapping[str, Any]) -> str:
    """Why no group had any reward spread, from the last logged rewards, and what to change."""
    g = cfg.grpo
    # correct and format are 0..1, length -1..0: the most a completion can earn is the positive weights' sum
    best = sum(w for n, w in g.rewards.items() if w > 0 and n != "length")
    mean = logs.get("reward")
    head = (
        f"no learning signal for {steps} steps: inside every group of grpo.num_generations={g.num_generations} "
        "completions the rewards were identical, so every advantage is 0 and the parameters do not move."
    )
    if isinstance(mean, (int, float)) and mean >= best - 1e-6:
        cause = (
            "Every completion already earns every reward: the questions are too easy for this model. Use harder "
            "questions, or stop: there is nothing left to learn from these."
        )
    elif isinstance(mean, (int, float)) and mean <= 1e-6:
        cause = (
            "Every completion scores nothing: it never closes its think block, names no option, or is never "
            "right. Look at completions.jsonl; start from an SFT run that learned the format (thinktune grpo "
            "RUN_DIR), raise grpo.max_completion_length if completions are cut, or use easier questions."
        )
    else:
        cause = (
            "Each question is answered the same way every time (all right or all wrong): the completions of a "
            f"group are too alike. Raise grpo.temperature (now {g.temperature:g}) or grpo.num_generations, and "
            "check that the rewards vary (a reward that is constant by construction gives no signal)."
        )
    return f"{head} {cause}"


class CompletionsWriter(TrainerCallback):
    """At each logging step, append up to ``grpo.log_completions`` of the last batch's completions, read and
    rewarded (:class:`~thinktune.evals.records.CompletionRecord`), to completions.jsonl (main process)."""

    def __init__(self, path: str | Path, scorer: Any, limit: int) -> None:
        self.path, self.scorer, self.limit = Path(path), scorer, limit

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not state.is_world_process_zero or self.limit <= 0:
            return
        scored = list(self.scorer.last)
        if not scored:
            return
        stride = max(1, len(scored) // self.limit)
        for s in scored[::stride][: self.limit]:
            gen, q = s.generation, s.question
            record = CompletionRecord(
                step=state.global_step,
                question=q.text,
                completion=gen.text,
                reasoning=gen.reasoning,
                answer=gen.answer,
                think_closed=gen.think_closed,
                stopped=gen.stopped,
                new_tokens=gen.new_tokens,
                rewards=dict(s.rewards),
                total=round(s.total, 6),
                reference=q.reference,
                reference_letter=q.answer,
                predicted=grade(q, gen).letter,
                row=q.row,
            )
            append_jsonl(self.path, record.to_dict())
