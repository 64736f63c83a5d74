"""The one precision decision: weight dtype, mixed-precision autocast, and the label logs show.

bf16 where the GPU supports it; fp16 weights with fp16 autocast and fp32 adapter weights where it does not
(never fp16 gradients: the "Attempting to unscale FP16 gradients" error of the common tutorial); fp32 on a CPU.
Training, inference, QLoRA's compute dtype and the memory plan all take the value from :func:`resolve_precision`,
so nothing parses a label to find out what was decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class Precision:
    dtype: str  # weight dtype: bfloat16 | float16 | float32
    autocast: str | None  # the Trainer's mixed precision: "bf16", "fp16", or None (plain)
    label: str  # what logs and env.json show

    @property
    def short(self) -> str:
        """bf16 / fp16 / fp32: the bytes per weight the memory plan counts."""
        return _SHORT[self.dtype]

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)


def cuda_bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(requested: str, device: str, *, bf16_supported: bool | None = None) -> Precision:
    """``model.dtype`` on `device`. `bf16_supported=None` asks the current GPU (only when it matters)."""
    on_gpu = device.startswith("cuda")
    if requested == "auto":
        if not on_gpu:
            return Precision("float32", None, "fp32 (CPU)")
        if bf16_supported is None:
            bf16_supported = cuda_bf16_supported()
        if bf16_supported:
            return Precision("bfloat16", "bf16", "bf16")
        return Precision("float16", "fp16", "fp16 mixed precision (fp32 adapter weights)")
    if requested not in _SHORT:
        raise ValueError(f"model.dtype={requested!r}: use auto, bfloat16, float16 or float32")
    autocast = _SHORT[requested] if on_gpu and requested != "float32" else None
    return Precision(requested, autocast, requested)
