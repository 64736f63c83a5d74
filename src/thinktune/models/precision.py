"""The one precision decision: weight dtype, mixed-precision autocast, and the label logs show.

bf16 where the GPU supports it; fp16 weights with fp16 autocast and fp32 adapter weights where it does not
(never fp16 gradients: the "Attempting to unscale FP16 gradients" error of the common tutorial). On a CPU, bf16
weights where the CPU has bf16 dot-product units (AVX512-BF16 or AMX: recent Xeon, EPYC from Zen 4), with the
adapter kept in fp32; fp32 elsewhere, where bf16 would be emulated and slower than fp32.
Training, inference, QLoRA's compute dtype and the memory plan all take the value from :func:`resolve_precision`,
so nothing parses a label to find out what was decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thinktune.errors import ConfigError

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


def cpu_bf16_supported() -> bool:
    """The CPU computes bf16 matrix products natively (AVX512-BF16 or AMX tiles).

    There a bf16 matrix product runs several times an fp32 one (``benchmarks/cpu_matmul.py``); without the units
    PyTorch emulates bf16 and it is slower than fp32. ``THINKTUNE_CPU_BF16=0`` answers no (the test suite sets it,
    so its numbers do not depend on the CPU that runs it); unset or ``auto``, the CPU answers.
    """
    import os

    import torch

    raw = os.environ.get("THINKTUNE_CPU_BF16", "")
    value = raw.strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value not in ("", "auto"):
        raise ConfigError(
            f"THINKTUNE_CPU_BF16={raw!r}: use 0 to keep a CPU in fp32, or leave it unset (bf16 where the CPU has "
            "bf16 units); model.dtype=float32 keeps one run in fp32"
        )
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(requested: str, device: str, *, bf16_supported: bool | None = None) -> Precision:
    """``model.dtype`` on `device`. `bf16_supported=None` asks the current GPU or CPU (only when it matters)."""
    on_gpu = device.startswith("cuda")
    if requested == "auto":
        if not on_gpu:
            if bf16_supported is None:
                bf16_supported = device == "cpu" and cpu_bf16_supported()
            if bf16_supported:
                # No autocast: the frozen base computes in bf16 and PEFT keeps the adapter in fp32, so the
                # trained weights and their optimizer state stay full precision (the loss head's softmax is fp32).
                return Precision("bfloat16", None, "bf16 (CPU with bf16 units)")
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
