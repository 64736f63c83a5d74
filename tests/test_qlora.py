"""QLoRA configuration: the 4-bit settings, the BitsAndBytesConfig built from them, the clear refusal on a
machine without CUDA/bitsandbytes, bitsandbytes optimizers, and the model preparation after a 4-bit load."""

from __future__ import annotations

import pytest

from thinktune.config import ModelConfig, validate
from thinktune.configfile import load_config
from thinktune.errors import ModelLoadError, ThinktuneError
from thinktune.models.qlora import (
    build_quantization_config,
    prepare_kbit_model,
    qlora_settings,
    quantization_config,
    require_optimizer_support,
    require_qlora_support,
    uses_bitsandbytes,
)

needs_no_cuda = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)


def _checkpointing(model) -> bool:
    return getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing


def test_settings_are_nf4_double_quant_with_bf16_compute():
    s = qlora_settings(ModelConfig(name_or_path="m", load_in_4bit=True), bf16_supported=True)
    assert s == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_quant_storage": "uint8",
    }
    # GPUs without bf16 (Turing, e.g. a T4) compute in fp16; an explicit dtype wins.
    assert (
        qlora_settings(ModelConfig(load_in_4bit=True), bf16_supported=False)["bnb_4bit_compute_dtype"]
        == "float16"
    )
    explicit = ModelConfig(load_in_4bit=True, dtype="float16")
    assert qlora_settings(explicit, bf16_supported=True)["bnb_4bit_compute_dtype"] == "float16"
    assert qlora_settings(ModelConfig(load_in_4bit=False)) is None
    with pytest.raises(ModelLoadError, match="bf16/fp16"):
        qlora_settings(ModelConfig(load_in_4bit=True, dtype="float32"))


def test_bitsandbytes_config_fields():
    import torch

    bnb = build_quantization_config(qlora_settings(ModelConfig(load_in_4bit=True), bf16_supported=True))
    assert bnb.load_in_4bit and not bnb.load_in_8bit
    assert bnb.bnb_4bit_quant_type == "nf4"
    assert bnb.bnb_4bit_use_double_quant is True
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16
    fp16 = build_quantization_config(qlora_settings(ModelConfig(load_in_4bit=True), bf16_supported=False))
    assert fp16.bnb_4bit_compute_dtype == torch.float16


def test_no_quantization_without_load_in_4bit():
    assert quantization_config(ModelConfig(name_or_path="m")) is None


@needs_no_cuda
def test_qlora_refused_without_cuda_with_the_fix():
    with pytest.raises(ModelLoadError) as e:
        require_qlora_support()
    msg = str(e.value)
    assert "QLoRA (model.load_in_4bit=true)" in msg and "no CUDA GPU" in msg
    assert "model.load_in_4bit=false" in msg
    assert isinstance(e.value, ThinktuneError)
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        quantization_config(ModelConfig(name_or_path="m", load_in_4bit=True))


def test_missing_bitsandbytes_names_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(ModelLoadError, match=r"pip install 'thinktune\[qlora\]'"):
        require_qlora_support()


@needs_no_cuda
def test_bitsandbytes_optimizers_are_checked_the_same_way():
    assert uses_bitsandbytes("paged_adamw_8bit") and uses_bitsandbytes("adamw_bnb_8bit")
    assert not uses_bitsandbytes("adamw_torch") and not uses_bitsandbytes("adafactor")
    require_optimizer_support("adamw_torch")  # nothing to check
    with pytest.raises(ModelLoadError, match="train.optim=paged_adamw_8bit cannot run on this machine"):
        require_optimizer_support("paged_adamw_8bit")


def test_config_refuses_qlora_in_fp32():
    cfg = load_config(
        None, ["model.name_or_path=m", "data.source=sample", "model.load_in_4bit=true", "model.dtype=float32"]
    )
    with pytest.raises(ThinktuneError, match="QLoRA computes in bf16/fp16"):
        validate(cfg)


def test_prepare_kbit_model_freezes_checkpoints_and_keeps_16bit_weights(tiny_qwen2_dir):
    """What the training side does after a 4-bit load (checked on a bf16 model: no bitsandbytes here)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.bfloat16)
    prepare_kbit_model(model, gradient_checkpointing=True)
    assert not any(p.requires_grad for p in model.parameters())
    # Unlike peft.prepare_model_for_kbit_training, embeddings, lm_head and norms stay 16-bit.
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert _checkpointing(model)
    out = model.get_input_embeddings()(torch.tensor([[1, 2, 3]]))
    assert out.requires_grad  # so the first block's adapters get gradients through the checkpoint
    plain = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.bfloat16)
    prepare_kbit_model(plain, gradient_checkpointing=False)
    assert not _checkpointing(plain)
    assert not plain.get_input_embeddings()(torch.tensor([[1]])).requires_grad
