"""The run folder: everything later steps need, as files. Later commands read it, never live objects.

runs/<name>/
  config.yaml            resolved configuration
  env.json               versions, device, precision
  data_report.json       load summary, template facts, lengths, length policy (+ length_histogram.png)
  data/train.jsonl       the exact examples trained on (after the length policy)
  data/validation.jsonl  the held-out examples (evaluation and before/after comparison use these)
  metrics.jsonl          one line per logging step (step, epoch, loss, eval_loss, learning_rate, ...)
  loss_curve.png
  adapter/               PEFT adapter + tokenizer + the exact chat template used in training
  checkpoints/           resumable Trainer checkpoints (last K kept)
  summary.json           status (completed / interrupted / failed), time, tokens, final losses
  eval_<model>.json/.jsonl, compare.jsonl, report.html, export/   written by later commands
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from thinktune.config import Config, from_dict
from thinktune.data import Example
from thinktune.errors import ThinktuneError
from thinktune.formatting import Formatter
from thinktune.utils import read_jsonl, write_jsonl


class RunDirError(ThinktuneError):
    pass


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
    loss_curve = property(lambda self: self.path / "loss_curve.png")
    adapter = property(lambda self: self.path / "adapter")
    checkpoints = property(lambda self: self.path / "checkpoints")
    summary = property(lambda self: self.path / "summary.json")

    def config(self) -> Config:
        raw = yaml.safe_load(self.config_file.read_text(encoding="utf-8")) or {}
        return from_dict(raw)

    def examples(self, split: str = "validation") -> list[Example]:
        path = self.validation_data if split == "validation" else self.train_data
        if not path.is_file():
            raise RunDirError(f"{path} is missing; this run folder has no {split} split.")
        return [example_from_dict(r) for r in read_jsonl(path)]

    def tokenizer(self) -> Any:
        """The tokenizer saved beside the adapter (with the exact chat template used in training)."""
        from thinktune.modeling import load_tokenizer

        cfg = self.config()
        if (self.adapter / "tokenizer_config.json").is_file():
            cfg.model.tokenizer = str(self.adapter)
            cfg.model.chat_template = None  # already applied and saved with the tokenizer
        return load_tokenizer(cfg.model)

    def formatter(self, tokenizer: Any) -> Formatter:
        """The formatter this run was trained with: same template, reasoning mode, system prompt."""
        d = self.config().data
        return Formatter(
            tokenizer, reasoning=d.reasoning, system_prompt=d.system_prompt, text_template=d.text_template
        )

    def metrics_records(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.metrics)) if self.metrics.is_file() else []


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
