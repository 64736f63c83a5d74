"""Checkpoints and the adapter on disk: one home for "is this save complete?", so a run killed at any moment
stays resumable.

The Trainer writes ``trainer_state.json`` last, so a checkpoint is complete exactly when that file parses
(:func:`checkpoint_complete`); :func:`remove_incomplete_checkpoints` deletes saves that did not finish, and
:func:`save_adapter` writes the adapter beside ``adapter/`` and renames it into place, so a run never has half an
adapter.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from thinktune.rundir import RunDir

log = logging.getLogger(__name__)


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


def checkpoint_complete(path: Path) -> bool:
    """Whether a checkpoint folder was saved to the end: the Trainer writes trainer_state.json last, so a save
    killed at any moment leaves it missing or unparsable (a partial write)."""
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def latest_checkpoint(run: RunDir) -> Path | None:
    """The newest complete checkpoint (see :func:`checkpoint_complete`); incomplete ones are ignored."""
    if not run.checkpoints.is_dir():
        return None
    done = [
        p
        for p in run.checkpoints.glob("checkpoint-*")
        if re.fullmatch(r"checkpoint-\d+", p.name) and checkpoint_complete(p)
    ]
    return max(done, key=checkpoint_step) if done else None


def remove_incomplete_checkpoints(run: RunDir) -> list[Path]:
    """Delete checkpoint folders whose trainer_state.json is missing or unreadable (a save that did not finish)."""
    removed = []
    if run.checkpoints.is_dir():
        for p in sorted(run.checkpoints.glob("checkpoint-*")):
            if p.is_dir() and not checkpoint_complete(p):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    for p in run.path.glob(".adapter.partial*"):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    for p in removed:
        log.info("removed the incomplete save %s", p)
    return removed


def save_adapter(trainer: Any, run: RunDir, *, main: bool, tokenizer: Any = None) -> None:
    """trainer.save_model into a temporary folder, then one rename to ``adapter/`` (main process). Only the
    policy adapter is kept: TRL's frozen KL/DPO reference copy (PEFT saves extra adapters into subfolders,
    ``ref/``) never reaches ``adapter/`` or an export."""
    tmp = run.path / ".adapter.partial"
    if main and tmp.exists():
        shutil.rmtree(tmp)
    trainer.save_model(str(tmp))  # on every process: FSDP / ZeRO-3 gather the weights first
    if main:
        if tokenizer is not None:  # the run's own tokenizer, where the trainer was handed an adjusted copy
            tokenizer.save_pretrained(str(tmp))
        for extra in policy_only(tmp):
            log.info(
                "adapter: left out the frozen reference adapter %r (only the trained policy is saved)", extra
            )
        if run.adapter.exists():  # never reached by train (run folders are fresh), kept safe for reuse
            shutil.rmtree(run.adapter)
        os.replace(tmp, run.adapter)


def policy_only(adapter_dir: Path) -> list[str]:
    """Remove every adapter but the trained one (``default``, at the top of the folder) from a saved adapter
    folder; returns the names removed."""
    removed = []
    for sub in sorted(p for p in Path(adapter_dir).iterdir() if p.is_dir()):
        if (sub / "adapter_config.json").is_file():
            shutil.rmtree(sub)
            removed.append(sub.name)
    return removed
