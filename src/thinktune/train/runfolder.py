"""The run folder during training: create it (main process only), reopen it to resume (dropping metrics a
killed run logged past its checkpoint), and write the final summary.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from thinktune.config import Config
from thinktune.configfile import dump_yaml
from thinktune.errors import TrainError
from thinktune.rundir import RunDir
from thinktune.train.checkpoints import checkpoint_step, latest_checkpoint, remove_incomplete_checkpoints
from thinktune.utils import (
    atomic_write_text,
    create_run_dir,
    environment_info,
    read_jsonl,
    slug,
    write_json,
    write_jsonl,
)

log = logging.getLogger(__name__)


def new_run(cfg: Config, dist: Any, stage: str = "sft") -> RunDir:
    """Create the run folder on the main process and tell the others its name."""
    from accelerate.utils import broadcast_object_list

    model_name = cfg.model.name_or_path.rstrip("/").split(":")[-1].split("/")[-1]
    kind = "" if stage == "sft" else f"{stage}-"
    stem = f"{slug(Path(model_name).stem, 32)}-{kind}{slug(Path(cfg.data.source).stem, 24)}"
    holder = [None]
    if dist.is_main_process:
        path = create_run_dir(cfg.train.output_dir, cfg.train.run_name, stem)
        write_config(RunDir(path), cfg)
        holder = [str(path)]
    if dist.num_processes > 1:
        broadcast_object_list(holder)
    return RunDir(Path(holder[0]))


def mark_running(run: RunDir, *, checkpoint: str | None, runtime: dict[str, Any], **summary: Any) -> None:
    """env.json for a fresh run (this machine's versions and the runtime choices made for it: device, precision,
    attention, checkpointing, processes, ...; a resumed run keeps the one it started with), and summary.json's
    status "running". Main process only."""
    if checkpoint is None:
        write_json(run.env_file, environment_info() | runtime)
    run.update_summary(status="running", resumed_from=checkpoint, **summary)


def runtime(
    *, device: str, precision: Any, attention: str, checkpointing: bool, dist: Any, facts: Any
) -> dict[str, Any]:
    """The runtime choices recorded in env.json (`facts`: the preflight's reading of the model's config.json)."""
    return {
        "device": device,
        "precision": precision.label,
        "dtype": precision.dtype,
        "attn_implementation": attention,
        "gradient_checkpointing": checkpointing,
        "world_size": dist.num_processes,
        "max_position_embeddings": facts.max_positions,
    }


def write_config(run: RunDir, cfg: Config) -> None:
    """config.yaml: the resolved configuration, which every later command reads back."""
    atomic_write_text(run.config_file, dump_yaml(cfg))


def reopen(
    cfg: Config, resume: str | Path, *, main: bool = True, command: str = "train"
) -> tuple[RunDir, str]:
    run = RunDir.open(resume)
    saved = run.config().to_dict()
    given = cfg.to_dict()
    diff = [
        f"{s}.{k}: run has {saved[s][k]!r}, given {given[s][k]!r}"
        for s in saved
        for k in saved[s]
        if saved[s][k] != given[s][k]
    ]
    if diff:
        raise TrainError(
            f"--resume {run.path} continues that run exactly, but the configuration differs:\n  - "
            + "\n  - ".join(diff)
            + f"\nResume without a config file (thinktune {command} --resume {run.path}), or start a new run."
        )
    checkpoint = latest_checkpoint(run)
    if checkpoint is None:
        raise TrainError(
            f"{run.checkpoints} holds no complete checkpoint, so there is nothing to resume "
            f"(checkpoints are written every train.save_steps={cfg.train.save_steps} steps). Start the run again."
        )
    if main:
        remove_incomplete_checkpoints(run)  # a save killed midway: redone from the checkpoint before it
        _truncate_metrics(run, checkpoint_step(checkpoint))
    return run, str(checkpoint)


def _truncate_metrics(run: RunDir, step: int) -> None:
    """Drop metrics (and GRPO's sampled completions) logged after the checkpoint: a killed run may have logged
    steps it will now redo."""
    for path in (run.metrics, run.completions):
        if not path.is_file():
            continue
        records = list(read_jsonl(path))
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) != len(records):
            log.info(
                "%s: dropping %d records after step %d (redone now)",
                path.name,
                len(records) - len(kept),
                step,
            )
            write_jsonl(path, kept)


def finish(
    run: RunDir,
    trainer: Any,
    *,
    started: float,
    signal_name: str | None,
    facts: dict[str, Any],
    command: str = "train",
) -> None:
    """Write the final summary.json (main process) and say what happened: where the adapter is, or how to resume."""
    records = run.metrics_records()
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    evals = [r["eval_loss"] for r in records if r.get("eval_loss") is not None]
    earlier_wall_time = run.read_summary().wall_time_s or 0.0
    session = time.time() - started
    state = trainer.state
    metrics = next(cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "MetricsWriter")
    trainable, total = trainer.model.get_nb_trainable_parameters()
    summary = {
        "status": "interrupted" if signal_name else "completed",
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "epochs": round(float(state.epoch or 0.0), 4),
        "session_wall_time_s": round(session, 1),
        "wall_time_s": round(session + float(earlier_wall_time), 1),
        "train_tokens": state.num_input_tokens_seen,
        "supervised_tokens": metrics.supervised_tokens,
        "first_train_loss": losses[0] if losses else None,
        "final_train_loss": losses[-1] if losses else None,
        "initial_eval_loss": evals[0] if evals else None,
        "final_eval_loss": evals[-1] if evals else None,
        "best_eval_loss": min(evals) if evals else None,
        "trainable_params": trainable,
        "total_params": total,
        **facts,
        "adapter": str(run.adapter) if run.has_adapter else None,
        "loss_curve": str(run.loss_curve) if run.loss_curve.is_file() else None,
        "error": None,
    }
    if signal_name:
        last = latest_checkpoint(run)
        summary |= {"signal": signal_name, "checkpoint": str(last) if last else None}
        summary["resume_hint"] = f"thinktune {command} --resume {run.path}"
        where = f"checkpoint saved in {last}. Resume with: {summary['resume_hint']}"
        log.warning("%s: stopped at step %d; %s", signal_name, state.global_step, where)
    else:
        if summary.get("first_reward") is not None:
            losses_msg = f"reward {fmt(summary['first_reward'])} -> {fmt(summary['final_reward'])}"
        else:
            losses_msg = f"eval loss {fmt(summary['initial_eval_loss'])} -> {fmt(summary['final_eval_loss'])}"
        log.info("done in %.0f s: %s; adapter in %s", session, losses_msg, run.adapter)
    run.update_summary(**summary)


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def reward_facts(records: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """summary.json's reward fields from metrics.jsonl: the total reward's first and final logged mean, and each
    reward's."""

    def first_last(key: str) -> tuple[float | None, float | None]:
        xs = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        return (xs[0], xs[-1]) if xs else (None, None)

    first, last = first_last("reward")
    per = {}
    for name in names:
        a, b = first_last(f"reward_{name}")
        per[name] = {"first": a, "final": b}
    return {"first_reward": first, "final_reward": last, "rewards": per}
