"""Shared helpers for the training tests: small data sets, a fast tiny model, configs, run-folder checks."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from thinktune.train.recipe import train

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def arithmetic_rows(n: int = 12) -> list[dict[str, str]]:
    """Short, memorisable medical-o1-schema rows (a model can drive their loss down in a few steps)."""
    rows = []
    for i in range(n):
        a, b = i % 5 + 1, i // 5 + 2
        rows.append(
            {
                "Question": f"What is {a} plus {b}?",
                "Complex_CoT": f"Adding {a} and {b} gives {a + b}.",
                "Response": f"The sum is {a + b}.",
            }
        )
    return rows


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_tiny_chatml(out: Path, *, vocab_size: int = 400, seed: int = 0) -> Path:
    """A tiny random Llama with a small byte-level BPE tokenizer trained in-process and a ChatML template.

    Used where only the training mechanics matter (resume, signals, DDP): with a 400-token vocabulary a step
    takes milliseconds, where the real 49k-151k vocabularies spend a second per step in the loss alone.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from thinktune.models import assets

    texts = [" ".join(r.values()) for r in arithmetic_rows(40)] + ["<think> </think> system user assistant"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHATML
    tok_dir = out / "tokenizer"
    fast.save_pretrained(tok_dir)
    return assets.build_tiny_model(out / "model", tok_dir, "llama", seed=seed, max_position_embeddings=512)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False), encoding="utf-8")
    return path


def tiny_sections(model_dir: Path, data: Path, out_dir: Path, **train: Any) -> dict[str, dict[str, Any]]:
    """A config for a few fast CPU steps on the arithmetic rows."""
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"source": str(data), "max_length": 256, "val_size": 4},
        "lora": {"r": 8, "lora_alpha": 16},
        "train": {
            "output_dir": str(out_dir),
            "run_name": "run",
            "max_steps": 8,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "learning_rate": 5e-3,
            "warmup_ratio": 0.0,
            "logging_steps": 1,
            "eval_steps": 4,
            "save_steps": 4,
            **train,
        },
    }


RUN_FILES = (
    "config.yaml",
    "env.json",
    "data_report.json",
    "length_histogram.png",
    "data/train.jsonl",
    "data/validation.jsonl",
    "metrics.jsonl",
    "loss_curve.png",
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
    "adapter/tokenizer_config.json",
    "summary.json",
)


def read_metrics(run: Path) -> tuple[list[dict], list[dict]]:
    """(train records, eval records) of a run's metrics.jsonl."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if "loss" in r], [r for r in records if "eval_loss" in r]


def adapter_tensors(adapter_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread: tiny models spend more time synchronising threads than computing, and on a shared
    2-core machine two spinning threads can make a tiny run several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def quick_config(tmp_path: Path, model: str | Path, *overrides: str) -> Any:
    """A config on the bundled sample data whose runs go under tmp_path/runs."""
    from thinktune.configfile import load_config

    return load_config(
        None,
        [
            f"model.name_or_path={model}",
            "data.source=sample",
            f"train.output_dir={tmp_path / 'runs'}",
            *overrides,
        ],
    )


def refused(cfg: Any, match: str, tmp_path: Path) -> str:
    """Training must refuse cfg with a ThinktuneError matching `match`, before creating a run folder."""
    import pytest

    from thinktune.errors import ThinktuneError

    with pytest.raises(ThinktuneError, match=match) as info:
        train(cfg)
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a run folder was created"
    return str(info.value)


def refuse_weight_loading(monkeypatch: Any) -> None:
    """Fail the test if anything tries to load model weights (refusals must come first)."""
    from thinktune.train import recipe as T

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("model weights were loaded before the configuration was refused")

    monkeypatch.setattr(T, "load_model", refuse)


def tiny_training_setup(tmp_path_factory: Any, name: str, rows: int) -> tuple[Path, Path, Path]:
    """(folder, tiny ChatML model, arithmetic data with `rows` rows) for a module's training tests."""
    root = tmp_path_factory.mktemp(name)
    return root, build_tiny_chatml(root / "tiny"), write_rows(root / "arith.jsonl", arithmetic_rows(rows))
