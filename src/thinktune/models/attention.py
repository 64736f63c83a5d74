"""The attention kernel: one resolver for ``model.attn_implementation``, and thinktune's packed SDPA.

:func:`resolve_attention` is the one place that decides which kernel a model runs with: training (padding-free
batches), inference and the memory plan all ask it. ``auto`` means flash-attention when it is installed on a
GPU, else the packed SDPA for padding-free training, else transformers' SDPA; an explicit choice is kept.

Packed SDPA: transformers' SDPA path turns a padding-free micro-batch into one dense ``T x T`` block-diagonal
mask (and keeps a copy per layer for the backward), so attention costs ``(sum of lengths)^2`` and the mask
grows to gigabytes at 8k tokens. Without flash-attention, thinktune registers ``thinktune_packed_sdpa`` with
transformers' public ``AttentionInterface``: each example of the packed row attends only to itself
(``torch.nn.attention.varlen`` on CUDA where it checks out, one causal SDPA call per example otherwise), with
no mask at all. Anything that is not a packed row (padded batches, generation) goes to transformers' SDPA.

On 2 CPU cores, four packed examples of 400-900 tokens (SmolLM2 head shapes): transformers' masked SDPA takes
1.36 s per layer forward+backward, the per-example loop 0.75 s; outputs agree exactly in fp32
(tests/test_speed.py). The packed path is also correct where transformers' is not: transformers only derives
the block-diagonal mask from position ids when no KV cache is passed (``use_cache=False``).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

log = logging.getLogger(__name__)

PACKED_SDPA = "thinktune_packed_sdpa"
PACKED_SDPA_OPTION = "packed_sdpa"  # the model.attn_implementation value
_registered = False
_varlen_state: dict[str, Any] = {}  # device type -> the varlen function when it checked out, else None


# ------------------------------------------------------------------------------------------ packed attention


def _bounds(cu_seq_lens: Any) -> list[int]:
    """Python ints of the segment boundaries, computed once per batch: every layer gets the same tensor object,
    so the device-to-host copy happens in the first layer only."""
    cached = getattr(cu_seq_lens, "_thinktune_bounds", None)
    if cached is None:
        cached = [int(x) for x in cu_seq_lens.tolist()]
        try:
            cu_seq_lens._thinktune_bounds = cached
        except (
            AttributeError,
            RuntimeError,
        ):  # a tensor subclass that refuses attributes: recompute next time
            pass
    return cached


def _bounds_from_positions(position_ids: Any) -> list[int] | None:
    """Segment starts of a packed row (positions restart at 0), or None when the row is one sequence."""
    row = position_ids[0]
    # A host sync (and a graph break under torch.compile), but never a silent fall-back to one causal row.
    starts = (row == 0).nonzero().flatten().tolist()
    if len(starts) <= 1 or starts[0] != 0:
        return None
    return [*starts, int(row.numel())]


def _segmented_sdpa(
    query: Any, key: Any, value: Any, bounds: list[int], scaling: float | None, gqa: bool
) -> Any:
    """Causal SDPA on each example of a packed row; (1, H, T, D) in, (1, T, H, D) out."""
    import torch
    import torch.nn.functional as F

    outs = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=False):
        if end <= start:
            continue
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa))
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    return out.transpose(1, 2).contiguous()


def _varlen_call(fn: Any) -> Any:
    """Adapt torch.nn.attention.varlen.varlen_attn across torch releases (is_causal in 2.10, window_size after;
    enable_gqa from 2.12): returns call(q, k, v, cu, max_len, scale) on (T, H, D) tensors, or None."""
    import inspect

    params = inspect.signature(fn).parameters
    if "window_size" in params:
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        causal = {"is_causal": True}
    else:
        return None
    takes_scale, takes_gqa = "scale" in params, "enable_gqa" in params

    def call(q: Any, k: Any, v: Any, cu: Any, max_len: int, scale: float | None) -> Any:
        if k.shape[1] != q.shape[1] and not takes_gqa:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        kwargs = dict(causal)
        if k.shape[1] != q.shape[1]:
            kwargs["enable_gqa"] = True
        if scale is not None:
            if not takes_scale:
                q = q * (scale * q.shape[-1] ** 0.5)  # the kernel divides by sqrt(head_dim)
            else:
                kwargs["scale"] = scale
        return fn(q, k, v, cu, cu, max_len, max_len, **kwargs)

    return call


def _checked_varlen(device: Any, dtype: Any) -> Any:
    """torch's varlen flash-attention, once it reproduced the per-example SDPA (output and gradients) on a
    small packed batch on this GPU; None where it is missing, fails, or disagrees."""
    key = f"{device.type}:{dtype}"
    if key in _varlen_state:
        return _varlen_state[key]
    _varlen_state[key] = None
    if device.type != "cuda":
        return None
    try:
        import torch
        from torch.nn.attention.varlen import varlen_attn

        call = _varlen_call(varlen_attn)
        if call is None:
            return None
        gen = torch.Generator(device=device).manual_seed(0)
        lens = [37, 64, 5, 90]
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
        shape = (1, 4, sum(lens), 64)
        q = torch.randn(shape, device=device, dtype=dtype, generator=gen).requires_grad_()
        k = torch.randn((1, 2, sum(lens), 64), device=device, dtype=dtype, generator=gen).requires_grad_()
        v = torch.randn((1, 2, sum(lens), 64), device=device, dtype=dtype, generator=gen).requires_grad_()
        ref = _segmented_sdpa(q, k, v, [int(x) for x in cu.tolist()], None, True)
        grads_ref = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
        t = lambda x: x[0].transpose(0, 1)  # noqa: E731  (1, H, T, D) -> (T, H, D)
        out = call(t(q), t(k), t(v), cu, max(lens), None)
        grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        tol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
        ok = torch.allclose(out.float(), ref[0].float(), atol=tol, rtol=tol) and all(
            torch.allclose(a.float(), b.float(), atol=tol * 4, rtol=tol * 4)
            for a, b in zip(grads, grads_ref, strict=True)
        )
        if ok:
            _varlen_state[key] = call
            log.info("packed attention: torch.nn.attention.varlen (flash) on %s", device)
        else:
            log.warning("packed attention: torch varlen_attn disagreed with SDPA; using per-example SDPA")
    except Exception as e:  # missing module, unsupported GPU or dtype: the per-example loop is always correct
        log.info("packed attention: torch varlen_attn unavailable (%s); using per-example SDPA", e)
    return _varlen_state[key]


def packed_sdpa_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers attention function (see ``AttentionInterface``): a packed padding-free row attends example
    by example; everything else goes to transformers' own SDPA function unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    packed = attention_mask is None and query.shape[0] == 1 and q_len == kv_len and q_len > 1
    bounds = None
    if packed:
        if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:
            raise ValueError(f"{PACKED_SDPA} does not implement sliding windows or soft-capping")
        cu = kwargs.get("cu_seq_lens_q")
        if cu is not None and int(cu.numel()) > 2:
            bounds = cu  # a tensor; turned into ints only when the per-example loop needs them
        elif cu is None and kwargs.get("position_ids") is not None:
            bounds = _bounds_from_positions(kwargs["position_ids"])
    if bounds is None:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    if dropout:
        raise ValueError(f"{PACKED_SDPA} does not implement attention dropout")
    gqa = key.shape[1] != query.shape[1]
    varlen = _checked_varlen(query.device, query.dtype) if query.is_cuda else None
    if varlen is not None and not isinstance(bounds, list):
        max_len = kwargs.get("max_length_q") or int(bounds.diff().max())
        t = lambda x: x[0].transpose(0, 1)  # noqa: E731  (1, H, T, D) -> (T, H, D)
        out = varlen(t(query), t(key), t(value), bounds.to(query.device, "int32"), int(max_len), scaling)
        return out[None], None
    if not isinstance(bounds, list):
        bounds = _bounds(bounds)
    return _segmented_sdpa(query, key, value, bounds, scaling, gqa), None


def _packed_mask(*args: Any, batch_size: int, attention_mask: Any = None, **kwargs: Any) -> Any:
    """No mask for a single unpadded row (packed or not: the attention function separates examples); transformers'
    SDPA mask for anything padded."""
    from transformers.masking_utils import sdpa_mask

    if batch_size == 1 and attention_mask is None:
        return None
    return sdpa_mask(*args, batch_size=batch_size, attention_mask=attention_mask, **kwargs)


def register_packed_sdpa() -> str:
    """Register the packed SDPA attention (and its mask function) with transformers once; returns its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
        AttentionMaskInterface.register(PACKED_SDPA, _packed_mask)
        _registered = True
    return PACKED_SDPA


# ------------------------------------------------------------------------------------------ the resolver


def flash_attention_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attention(
    requested: str, device: str, *, padding_free: bool = False, flash_available: bool | None = None
) -> str:
    """The ``model.attn_implementation`` option to run with (``auto`` resolved; never registers anything).

    `padding_free` is true for training on concatenated examples, which only flash-attention's varlen kernel
    and the packed SDPA handle without a dense mask. `flash_available=None` looks for the flash_attn package."""
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        if flash_available is None:
            flash_available = flash_attention_installed()
        if flash_available:
            return "flash_attention_2"
    return PACKED_SDPA_OPTION if padding_free else "sdpa"


def implementation_name(option: str) -> str:
    """What to pass to transformers as ``attn_implementation`` for a resolved option (registers packed SDPA)."""
    return register_packed_sdpa() if option == PACKED_SDPA_OPTION else option
