"""QLoRA and bitsandbytes: the one quantization builder, and the refusals where bitsandbytes cannot run.

Training, evaluation, comparison and chat all load a ``model.load_in_4bit`` base through
:func:`quantization_config` (NF4, double quantization, uint8 storage, computing in the run's precision), so the
model a QLoRA run is evaluated or chatted with is the model it was trained as. Export never quantizes: it merges
into a 16-bit base.
"""

from __future__ import annotations

from typing import Any

from thinktune.config import ModelConfig
from thinktune.errors import ModelLoadError
from thinktune.models.precision import resolve_precision

#: transformers' optimizer names that run on bitsandbytes (8-bit states and/or paged memory).
_BNB_OPTIM_MARKERS = ("8bit", "bnb", "paged_")


def uses_bitsandbytes(optim: str) -> bool:
    """Whether a transformers optimizer name (train.optim) runs on bitsandbytes (8-bit or paged states)."""
    return any(marker in optim for marker in _BNB_OPTIM_MARKERS)


def _require_bitsandbytes(what: str) -> None:
    import importlib.util

    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append(
            "no CUDA GPU is available: bitsandbytes' 4-bit weights and 8-bit/paged optimizers run on NVIDIA "
            "GPUs. Here, train 16-bit LoRA instead (model.load_in_4bit=false, train.optim=adamw_torch)."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        problems.append(
            "the bitsandbytes package is not installed: pip install 'thinktune[qlora]' "
            "(or pip install 'bitsandbytes>=0.45')."
        )
    if problems:
        raise ModelLoadError(f"{what} cannot run on this machine:\n  - " + "\n  - ".join(problems))


def require_qlora_support() -> None:
    """Refuse a 4-bit base before any weights load on a machine without CUDA or without bitsandbytes."""
    _require_bitsandbytes("QLoRA (model.load_in_4bit=true)")


def require_optimizer_support(optim: str) -> None:
    """Refuse a bitsandbytes optimizer (e.g. train.optim=paged_adamw_8bit) where it cannot run; other
    optimizers pass."""
    if uses_bitsandbytes(optim):
        _require_bitsandbytes(f"train.optim={optim}")


def qlora_settings(cfg: ModelConfig, *, bf16_supported: bool | None = None) -> dict[str, Any] | None:
    """The 4-bit loading settings as plain values (None when model.load_in_4bit is off): NF4 with double
    quantization, computing in bf16 (fp16 on GPUs without bf16, e.g. Turing/T4). `bf16_supported=None` asks the
    current GPU."""
    if not cfg.load_in_4bit:
        return None
    if cfg.dtype == "float32":
        raise ModelLoadError(
            "model.load_in_4bit with model.dtype=float32: QLoRA computes in bf16/fp16; use auto."
        )
    compute = resolve_precision(cfg.dtype, "cuda", bf16_supported=bf16_supported).dtype
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": compute,
        "bnb_4bit_quant_storage": "uint8",
    }


def build_quantization_config(settings: dict[str, Any]) -> Any:
    """A transformers BitsAndBytesConfig from :func:`qlora_settings` (no hardware check)."""
    import torch
    from transformers import BitsAndBytesConfig

    kwargs = dict(settings)
    kwargs["bnb_4bit_compute_dtype"] = getattr(torch, kwargs["bnb_4bit_compute_dtype"])
    return BitsAndBytesConfig(**kwargs)


def quantization_config(cfg: ModelConfig) -> Any | None:
    """`BitsAndBytesConfig` for ``load_model(cfg, quantization=...)``, or None without
    model.load_in_4bit. Raises a clear error on a machine without CUDA or bitsandbytes.

    After a 4-bit load, call :func:`prepare_kbit_model` before wrapping the model with LoRA."""
    settings = qlora_settings(cfg)
    if settings is None:
        return None
    require_qlora_support()
    return build_quantization_config(settings)


def prepare_kbit_model(model: Any, *, gradient_checkpointing: bool) -> Any:
    """Ready a 4-bit model for LoRA training: freeze every base weight and, with gradient checkpointing,
    turn it on (non-reentrant) and make the embedding output require grad so the first block's adapters get
    gradients.

    This is peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=...,
    gradient_checkpointing_kwargs={"use_reentrant": False}) minus one step: PEFT also upcasts every 16-bit
    parameter (embeddings, lm_head, norms) to fp32, which for DeepSeek-R1-Distill-Qwen-7B adds 2.2 GB
    (2 x 152064 x 3584 weights from 2 to 4 bytes) and alone breaks the 8 GB budget; with bf16 compute it buys
    nothing. TRL's SFTTrainer (1.16) no longer calls it either; it casts the adapters to bf16 itself."""
    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    return model
