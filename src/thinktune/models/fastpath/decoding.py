"""Decoding on a CPU: the output head as ``(W @ x^T)^T`` for the few rows a generation step projects, the
one-query attention of a 16-bit decoding step as a grouped product, and LoRA projections merged into one weight
(:func:`decoding_kernels` enters all three)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from thinktune.models.attention import PACKED_SDPA
from thinktune.models.fastpath.lora import merged_lora

SKINNY_ROWS = 64  # up to this many rows, W @ x^T beats x @ W^T for a large CPU head (measured, 2 cores)
GROUPED_DECODING = "thinktune_grouped_decoding"  # registered with transformers, per wrapped implementation
_HALF = (torch.bfloat16, torch.float16)


@contextlib.contextmanager
def decoding_kernels(model: Any, *, merge: bool = True) -> Iterator[None]:
    """The CPU decoding kernels around a generation loop (each leaves alone what it cannot serve); `merge` False
    keeps the LoRA projections apart (a batch whose rows use different adapters)."""
    with (
        skinny_head(model),
        grouped_decoding(model),
        merged_lora(model) if merge else contextlib.nullcontext(),
    ):
        yield


@contextlib.contextmanager
def skinny_head(model: Any) -> Iterator[None]:
    """While decoding on a CPU, project the few new positions through the output head as ``(W @ x^T)^T``.

    For a 49k x 576 head and 6 rows, MKL takes 41 ms for ``F.linear`` and 17 ms for the transposed product (the
    same arithmetic in another order); at one row or at training sizes the two are equal. In bf16 (a CPU with
    bf16 units) ``F.linear`` is the faster order at 3 and 8 rows (2.9 and 4.3 ms against 5.0 and 4.9 on 2 Zen 5
    cores, ``benchmarks/cpu_matmul.py``; at one row the transposed order saves 0.7 ms). Elsewhere (a GPU, a bf16
    head, a biased or missing head, many rows) the head is left alone."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if (
        not isinstance(head, nn.Linear)
        or head.bias is not None
        or head.weight.device.type != "cpu"
        or head.weight.dtype != torch.float32
        or "forward" in vars(head)
    ):
        yield
        return
    weight = head.weight

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > SKINNY_ROWS or x.dtype != weight.dtype or torch.is_grad_enabled():
            return nn.Linear.forward(head, x)
        return (weight @ x.reshape(rows, -1).t()).t().reshape(*x.shape[:-1], weight.shape[0])

    head.forward = forward
    try:
        yield
    finally:
        del head.forward


# ------------------------------------------------------------------------------------------ decoding attention


def grouped_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Attention of one new position per row, (B, H, 1, D) against (B, Hkv, L, D): transformers' eager arithmetic
    (the product and scale in the input's dtype, the softmax in fp32, its output cast back), with the H/Hkv query
    heads that share a key head stacked as rows of one product instead of repeating the keys. `mask` is SDPA's:
    bool (True attends) or additive, broadcastable to (B, 1, 1, L). Returns (B, 1, H, D), attention functions'
    layout."""
    b, h, _, d = query.shape
    groups = key.shape[1]
    scores = torch.matmul(query.view(b, groups, h // groups, d), key.transpose(2, 3)) * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).view(b, 1, h, d)


def _decoding_step(query: Any, key: Any, mask: Any, dropout: float, kwargs: dict[str, Any]) -> bool:
    """A call :func:`grouped_attention` serves: one query position per row on a CPU in 16 bits, whole key groups,
    a mask of SDPA's shape for one position (or none), nothing transformers' SDPA path would add."""
    if query.device.type != "cpu" or query.dtype not in _HALF or query.dim() != 4 or query.shape[2] != 1:
        return False
    if dropout or query.shape[1] % key.shape[1] or key.dtype != query.dtype:
        return False
    if any(kwargs.get(k) is not None for k in ("sliding_window", "softcap", "s_aux")):
        return False
    if kwargs.get("output_attentions"):
        return False
    return mask is None or (
        mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1 and mask.shape[-1] == key.shape[2]
    )


def _wrap(inner: str) -> str:
    """Register (once) the grouped decoding attention over transformers' `inner` implementation: decoding
    steps it serves, everything else (the prefill, training) goes to `inner` unchanged, masks included."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = f"{GROUPED_DECODING}:{inner}"
    if name in ALL_ATTENTION_FUNCTIONS:
        return name
    fallback = ALL_ATTENTION_FUNCTIONS[inner]

    def forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):  # noqa: ANN001
        if _decoding_step(query, key, attention_mask, dropout, kwargs):
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            return grouped_attention(query, key, value, attention_mask, scale), None
        return fallback(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

    AttentionInterface.register(name, forward)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    return name


@contextlib.contextmanager
def grouped_decoding(model: Any) -> Iterator[None]:
    """While generating on a CPU in bf16/fp16, run each one-token decoding step's attention as
    :func:`grouped_attention`.

    torch's CPU SDPA kernel is slow for a single query in 16 bits: for 8 rows of SmolLM2's heads (9 query heads on
    3 key heads) against 150 / 550 cached positions it took 0.57 / 2.13 ms in bf16 against 0.09 / 0.27 ms in fp32
    on 2 Zen 5 cores, and the grouped product 0.11 / 0.20 ms in bf16 (``benchmarks/cpu_matmul.py``); summed over
    30 layers and 448 decoded tokens that is most of the difference. In fp32 (where SDPA is as fast), on a GPU,
    with another implementation than SDPA (eager, flash-attention) or a composite model with sub-configs, nothing
    changes; the prefill and any call with more than one query go to the model's own implementation.
    """
    config = getattr(model, "config", None)
    inner = getattr(config, "_attn_implementation", None)
    param = next(model.parameters(), None)
    if (
        param is None
        or param.device.type != "cpu"
        or param.dtype not in _HALF
        or inner not in ("sdpa", PACKED_SDPA)
        or getattr(config, "sub_configs", None)
    ):
        yield
        return
    config._attn_implementation_internal = _wrap(inner)
    try:
        yield
    finally:
        config._attn_implementation_internal = inner
