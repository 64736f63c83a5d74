"""The one precision decision on a CPU: bf16 where the CPU has bf16 units, fp32 elsewhere, and a bf16 run that
trains the adapter in fp32 over a frozen bf16 base."""

from __future__ import annotations

import json

import pytest
import torch

from _train_helpers import (
    arithmetic_rows,
    read_metrics,
    single_thread,
    tiny_sections,
    write_config,
    write_rows,
)
from thinktune.configfile import load_config
from thinktune.errors import ConfigError
from thinktune.models import precision as P
from thinktune.train import recipe as T
from thinktune.train.recipe import train


def test_auto_on_a_cpu_follows_its_bf16_units():
    with_units = P.resolve_precision("auto", "cpu", bf16_supported=True)
    assert (with_units.dtype, with_units.autocast, with_units.short) == ("bfloat16", None, "bf16")
    assert "CPU" in with_units.label
    without = P.resolve_precision("auto", "cpu", bf16_supported=False)
    assert (without.dtype, without.autocast, without.label) == ("float32", None, "fp32 (CPU)")
    # An explicit choice wins over the CPU's units, and GPUs decide as before.
    assert P.resolve_precision("float32", "cpu", bf16_supported=True).dtype == "float32"
    assert P.resolve_precision("auto", "cuda", bf16_supported=True).autocast == "bf16"
    assert P.resolve_precision("auto", "cuda", bf16_supported=False).autocast == "fp16"


def test_auto_asks_the_cpu_only_for_the_cpu(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_supported", lambda: True)
    assert P.resolve_precision("auto", "cpu").dtype == "bfloat16"
    assert P.resolve_precision("auto", "mps").dtype == "float32"  # not a CPU: its units say nothing there
    monkeypatch.setattr(P, "cpu_bf16_supported", lambda: False)
    assert P.resolve_precision("auto", "cpu").dtype == "float32"


def test_the_environment_switch_answers_no(monkeypatch):
    monkeypatch.setenv("THINKTUNE_CPU_BF16", "0")
    assert P.cpu_bf16_supported() is False
    monkeypatch.setenv("THINKTUNE_CPU_BF16", "off")
    assert P.cpu_bf16_supported() is False
    monkeypatch.setenv("THINKTUNE_CPU_BF16", "fp32")
    with pytest.raises(ConfigError, match=r"THINKTUNE_CPU_BF16='fp32': use 0 .*model.dtype=float32"):
        P.cpu_bf16_supported()
    monkeypatch.delenv("THINKTUNE_CPU_BF16")
    # Without the switch the answer is the CPU's: a bool either way, and the same as PyTorch's probes.
    probes = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert P.cpu_bf16_supported() is bool(probes)


@pytest.mark.slow
def test_a_bf16_cpu_run_trains_an_fp32_adapter_over_a_frozen_bf16_base(tmp_path, tiny_qwen2_dir, monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_supported", lambda: True)
    data = write_rows(tmp_path / "arith.jsonl", arithmetic_rows(12))
    sections = tiny_sections(
        tiny_qwen2_dir,
        data,
        tmp_path / "runs",
        run_name="bf16",
        learning_rate=2e-2,
        eval_steps=8,
        save_steps=8,
    )
    sections["lora"]["lora_dropout"] = 0.0
    cfg = load_config(write_config(tmp_path / "bf16.yaml", sections), [])
    trained, load = {}, T.load_model

    def keep(*args, **kwargs):  # hold on to the in-memory model to read its dtypes afterwards
        trained["model"] = load(*args, **kwargs)
        return trained["model"]

    monkeypatch.setattr(T, "load_model", keep)
    with single_thread():
        run = train(cfg)

    env = json.loads(run.env_file.read_text())
    assert env["precision"] == "bf16 (CPU with bf16 units)"
    params = list(trained["model"].named_parameters())
    assert {p.dtype for name, p in params if "lora_" in name} == {torch.float32}
    assert {p.dtype for name, p in params if "lora_" not in name} == {torch.bfloat16}
    assert all(p.requires_grad == ("lora_" in name) for name, p in params)
    # The one-node LoRA projection computes in one dtype, so these projections keep PEFT's forward.
    from peft.tuners.lora.layer import Linear as LoraLinear

    lora_layers = [m for m in trained["model"].modules() if type(m) is LoraLinear]
    assert lora_layers and not any("forward" in vars(m) for m in lora_layers)
    train_log, eval_log = read_metrics(run.path)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train_log)
    assert eval_log[-1]["eval_loss"] < eval_log[0]["eval_loss"] - 0.15
