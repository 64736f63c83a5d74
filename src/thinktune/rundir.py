"""The run folder: everything later steps need, as files. Later commands read it, never live objects.

runs/<name>/
  config.yaml            resolved configuration
  env.json               versions, device, precision
  data_report.json       load summary, template facts, lengths, length policy (+ length_histogram.png)
  data/train.jsonl       the exact examples trained on (after the length policy)
  data/validation.jsonl  the held-out examples (evaluation and before/after comparison use these)
  metrics.jsonl          one line per logging step (step, epoch, loss, eval_loss, learning_rate, ...; GRPO: the
                         rewards, zero-spread share, KL, entropy, completion length and clipped share)
  completions.jsonl      GRPO: completions sampled at each logging step with their rewards (CompletionRecord)
  data/pairs.jsonl       DPO: the (right, wrong) answer pairs trained on (PairRecord)
  loss_curve.png
  adapter/               PEFT adapter + tokenizer + the exact chat template used in training
  checkpoints/           resumable Trainer checkpoints (last K kept)
  summary.json           a :class:`RunSummary`: status (running / completed / interrupted / failed ...), losses
  eval_<name>.json/.jsonl, compare.json/.jsonl, report.html, export/   written by later commands

This module reads and names files; it loads no model and no tokenizer (that is :mod:`thinktune.infer.session`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from thinktune.config import Config
from thinktune.configfile import from_dict
from thinktune.data.schemas import Example
from thinktune.errors import RunDirError
from thinktune.utils import read_jsonl, write_json, write_jsonl


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        p = Path(path)
        if not (p / "config.yaml").is_file():
            raise RunDirError(
                f"{p} is not a thinktune run folder (no config.yaml); runs are created by `thinktune train`."
            )
        return cls(p)

    config_file = property(lambda self: self.path / "config.yaml")
    env_file = property(lambda self: self.path / "env.json")
    data_report = property(lambda self: self.path / "data_report.json")
    length_histogram = property(lambda self: self.path / "length_histogram.png")
    train_data = property(lambda self: self.path / "data" / "train.jsonl")
    validation_data = property(lambda self: self.path / "data" / "validation.jsonl")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    completions = property(lambda self: self.path / "completions.jsonl")
    pairs = property(lambda self: self.path / "data" / "pairs.jsonl")
    loss_curve = property(lambda self: self.path / "loss_curve.png")
    adapter = property(lambda self: self.path / "adapter")
    checkpoints = property(lambda self: self.path / "checkpoints")
    summary = property(lambda self: self.path / "summary.json")
    compare_pairs = property(lambda self: self.path / "compare.jsonl")
    compare_summary = property(lambda self: self.path / "compare.json")
    report = property(lambda self: self.path / "report.html")
    exports = property(lambda self: self.path / "export")

    def finished_exports(self) -> list[str]:
        """The names of the export folders under export/. An export is written into a hidden ".<name>.partial-*"
        sibling and renamed into place once verified, so a hidden folder is one still being written (or left by a
        kill), not an export."""
        if not self.exports.is_dir():
            return []
        return sorted(p.name for p in self.exports.iterdir() if p.is_dir() and not p.name.startswith("."))

    def config(self) -> Config:
        raw = yaml.safe_load(self.config_file.read_text(encoding="utf-8")) or {}
        return from_dict(raw)

    def examples(self, split: str = "validation") -> list[Example]:
        path = self.validation_data if split == "validation" else self.train_data
        if not path.is_file():
            raise RunDirError(f"{path} is missing; this run folder has no {split} split.")
        return [example_from_dict(r) for r in read_jsonl(path)]

    def metrics_records(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.metrics)) if self.metrics.is_file() else []

    @property
    def has_adapter(self) -> bool:
        return (self.adapter / "adapter_config.json").is_file()

    def require_adapter(self) -> Path:
        """The adapter folder, or the one message every command gives when training has not written it yet."""
        if self.has_adapter:
            return self.adapter
        status = self.read_summary().status if self.summary.is_file() else None
        state = f"summary.json says {status!r}" if status else "there is no summary.json yet"
        raise RunDirError(
            f"{self.adapter} holds no trained adapter (no adapter_config.json; {state}): training has not finished "
            f"writing it. Wait for `thinktune train` to end, resume it (thinktune train --resume {self.path}), or "
            f"use the base model meanwhile (thinktune eval {self.path} --base)."
        )

    def read_summary(self) -> RunSummary:
        """summary.json as a :class:`RunSummary` (an empty one, status None, when it is absent)."""
        if not self.summary.is_file():
            return RunSummary()
        try:
            raw = json.loads(self.summary.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunDirError(f"{self.summary} is not readable JSON ({e})") from None
        return RunSummary.from_dict(raw if isinstance(raw, dict) else {})

    def update_summary(self, **fields: Any) -> RunSummary:
        """Merge `fields` into summary.json (written atomically) and return the result."""
        current = self.read_summary()
        known = {f.name for f in dataclasses.fields(RunSummary)}
        extra = {**current.extra, **{k: v for k, v in fields.items() if k not in known}}
        summary = dataclasses.replace(current, **{k: v for k, v in fields.items() if k in known}, extra=extra)
        write_json(self.summary, summary.to_dict())
        return summary


@dataclass(frozen=True)
class RunSummary:
    """summary.json: what a training stage did. Written by the train layer, read by report, export, demo and UI.

    Every field is optional: a running run has a status and little else. Fields another version wrote and this one
    does not know are kept in `extra` and written back unchanged."""

    status: str | None = None  # running | completed | interrupted | diverged | out_of_memory | failed
    stage: str | None = None  # sft | grpo | dpo
    error: str | None = None
    resumed_from: str | None = None
    steps: int | None = None
    max_steps: int | None = None
    epochs: float | None = None
    session_wall_time_s: float | None = None
    wall_time_s: float | None = None
    train_tokens: int | None = None
    supervised_tokens: int | None = None
    first_train_loss: float | None = None
    final_train_loss: float | None = None
    initial_eval_loss: float | None = None
    final_eval_loss: float | None = None
    best_eval_loss: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    precision: str | None = None
    device: str | None = None
    world_size: int | None = None
    train_examples: int | None = None
    validation_examples: int | None = None
    adapter: str | None = None
    loss_curve: str | None = None
    signal: str | None = None
    checkpoint: str | None = None
    resume_hint: str | None = None
    # the reinforcement stage (grpo, dpo)
    init_from: str | None = None  # the SFT run or adapter the stage continued
    first_reward: float | None = None
    final_reward: float | None = None
    rewards: dict[str, Any] | None = None  # per reward: first and final mean
    warnings: list[str] | None = None  # guard-rail warnings (no reward spread, clipped completions)
    prompts_dropped: int | None = None  # prompts over grpo.max_prompt_length
    pairs: int | None = None  # DPO pairs trained on
    questions_with_pair: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunSummary:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in raw.items() if k in known},
            extra={k: v for k, v in raw.items() if k not in known},
        )

    @property
    def command(self) -> str:
        """The command that trained (and resumes) this run: ``train`` for SFT, ``grpo`` or ``dpo``."""
        return self.stage if self.stage in ("grpo", "dpo") else "train"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**out, **self.extra}


def example_to_dict(ex: Example) -> dict[str, Any]:
    return {
        "question": ex.question,
        "reasoning": ex.reasoning,
        "answer": ex.answer,
        "system": ex.system,
        "meta": dict(ex.meta),
    }


def example_from_dict(d: dict[str, Any]) -> Example:
    return Example(d["question"], d.get("reasoning", ""), d["answer"], d.get("system"), d.get("meta") or {})


def save_examples(path: str | Path, examples: list[Example]) -> None:
    write_jsonl(path, (example_to_dict(e) for e in examples))
