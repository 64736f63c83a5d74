"""LoRA projections in plain torch for a CPU, where PEFT's generic modules are slow: shared dropout masks
and one-node projections. Both keep PEFT's arithmetic (tests/test_kernels.py checks values and gradients).

**Shared LoRA dropout** (``lora.shared_dropout``). PEFT gives each adapted projection its own dropout of the
layer input, so q/k/v draw three masks and keep three copies of the same hidden states, gate/up two. Here
projections that read the same tensor share one dropped copy: each still sees its input dropped with
probability p; the masks are correlated across those projections instead of independent. On a CPU the mask
comes from 16-bit random integers (4 per 64-bit draw, p rounded to a multiple of 1/65536) instead of
``bernoulli_``: a dropout of 540 x 576 values takes 1.2 ms instead of 5.2 ms.

**One-node LoRA projections** (``train.lora_kernel``). PEFT computes ``base(x) + lora_B(lora_A(drop(x))) *
scale`` as five autograd nodes, with two extra passes over the ``tokens x out`` output forward (the scaling, the
sum) and more backward. :class:`LoraLinear` is one node: the LoRA product is accumulated into the base
projection's output by ``addmm_``, and the backward adds the adapter's input gradient into the base one the same
way. The arithmetic is PEFT's; only the passes over memory go.

**Merged projections while decoding** (:func:`merged_lora`). Generating never needs the adapter apart from its
base: a decoding step with ``W + scale * B A`` as one weight is one product per projection instead of three (on
2 EPYC cores in fp32, 8 sampled SmolLM2 completions of 448 tokens with the demo's 210 adapted projections: 1.21x
the tokens a second, ``benchmarks/decode_lora.py``). The merged weights are temporary copies: the base weights and the
adapter are never written, so training goes on from exactly the weights it had.
"""

from __future__ import annotations

import contextlib
import types
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

# ------------------------------------------------------------------------------------------ shared dropout


def _cpu_dropout_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """Keep-mask with P(drop) = round(p * 65536) / 65536 and its rescale, from 4 int16 per 64-bit draw."""
    k = round(p * 65536)
    n = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    keep = words.view(torch.int16)[:n].view(x.shape) >= (k - 32768)
    return keep, 65536 / (65536 - k)


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    if x.device.type != "cpu":
        return nn.functional.dropout(x, p, training=True)
    keep, scale = _cpu_dropout_mask(x, p)
    return _MaskedScale.apply(x, keep, scale)


class _Memo:
    """The last dropped input of one model: (the input, its version, p) -> the dropped copy."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.key: tuple[Any, int, float] | None = None
        self.output: torch.Tensor | None = None

    def forget(self, ref: Any) -> None:
        """Weak-reference callback: the input died, so drop its copy (and the graph behind it), unless a newer
        input already took its place."""
        if self.key is not None and self.key[0] is ref:
            self.clear()


class SharedDropout(nn.Dropout):
    """nn.Dropout that hands out the same dropped copy to every projection reading the same input tensor."""

    def __init__(self, p: float, memo: _Memo) -> None:
        super().__init__(p)
        self._memo = memo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        memo = self._memo
        if memo.key is not None and memo.key[0]() is x and memo.key[1:] == (x._version, self.p):
            return memo.output  # type: ignore[return-value]
        out = dropout(x, self.p)
        # the weak reference's callback drops the cached copy (and its graph) once the input is gone
        memo.key, memo.output = (weakref.ref(x, memo.forget), x._version, self.p), out
        return out


def share_lora_dropout(model: nn.Module) -> int:
    """Replace each LoRA layer's nn.Dropout with a SharedDropout bound to one memo for the model; returns how
    many were replaced."""
    memo = _Memo()
    replaced = 0
    for module in model.modules():
        table = getattr(module, "lora_dropout", None)
        if not isinstance(table, nn.ModuleDict):
            continue
        for name, layer in list(table.items()):
            if type(layer) is nn.Dropout and layer.p > 0:
                shared = SharedDropout(layer.p, memo)
                shared.train(layer.training)
                table[name] = shared
                replaced += 1
    return replaced


# ------------------------------------------------------------------------------------------ one-node LoRA


class LoraLinear(torch.autograd.Function):
    """``x W^T + b + scale * (d A^T) B^T`` for a frozen base ``W``/``b``; ``d`` is the dropped input, or None
    when the adapter reads ``x`` itself (no dropout). Gradients for x, d, A and B."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        dropped: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        d2 = x2 if dropped is None else dropped.reshape(-1, shape[-1])
        u = d2 @ lora_a.t()
        y = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
        y.addmm_(u, lora_b.t(), alpha=scale)
        ctx.save_for_backward(d2, u, weight, lora_a, lora_b)
        ctx.scale, ctx.shape, ctx.same = scale, shape, dropped is None
        return y.view(*shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # type: ignore[override]
        d2, u, weight, lora_a, lora_b = ctx.saved_tensors
        scale, need = ctx.scale, ctx.needs_input_grad
        g2 = grad.reshape(-1, grad.shape[-1])
        gu = g2 @ lora_b  # the gradient at the adapter's rank, before the scaling
        grad_a = (gu.t() @ d2).mul_(scale) if need[4] else None
        grad_b = (g2.t() @ u).mul_(scale) if need[5] else None
        grad_x = grad_d = None
        if need[0]:
            grad_x = g2 @ weight
            if ctx.same:
                grad_x.addmm_(gu, lora_a, alpha=scale)
            grad_x = grad_x.view(ctx.shape)
        if not ctx.same and need[1]:
            grad_d = (gu @ lora_a).mul_(scale).view(ctx.shape)
        return grad_x, grad_d, None, None, grad_a, grad_b, None


def use_lora_kernel(choice: str, device: str) -> bool:
    """train.lora_kernel: ``auto`` takes the one-node projection off CUDA/XPU (where elementwise passes are cheap
    next to the matrix products, and autocast owns the dtypes)."""
    if choice == "auto":
        return not (device.startswith("cuda") or device.startswith("xpu"))
    return choice == "fused"


def _lora_fast_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A PEFT ``lora.Linear`` forward: one :class:`LoraLinear` node when the call is plain LoRA (one active
    adapter, unmerged, no mixed batch, frozen ``nn.Linear`` base, same dtype, no autocast); PEFT's otherwise."""
    base = self.base_layer
    active = self.active_adapters
    if not args and set(kwargs) == {"adapter_names"} and not torch.is_grad_enabled():
        mixed = _mixed_rows(self, x, kwargs["adapter_names"])
        if mixed is not None:
            return mixed
    if (
        args
        or kwargs
        or self.disable_adapters
        or self.merged
        or len(active) != 1
        or active[0] not in self.lora_A
        or active[0] in self.lora_variant
        or type(base) is not nn.Linear
        or base.weight.requires_grad
        or (base.bias is not None and base.bias.requires_grad)
        or torch.is_autocast_enabled(x.device.type)
    ):
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    if lora_b.bias is not None or not (
        x.dtype == base.weight.dtype == lora_a.weight.dtype == lora_b.weight.dtype
    ):
        return type(self).forward(self, x, *args, **kwargs)
    dropped = self.lora_dropout[name](x)
    return LoraLinear.apply(
        x,
        None if dropped is x else dropped,
        base.weight,
        base.bias,
        lora_a.weight,
        lora_b.weight,
        self.scaling[name],
    )


def _mixed_rows(self: Any, x: torch.Tensor, names: Any) -> torch.Tensor | None:
    """PEFT's mixed batch (row i uses adapter ``names[i]``, ``"__base__"`` none) for one adapter, without its
    per-module gather and scatter of sub-batches: every row goes through the adapter's rank-r product and a
    per-row factor (its scaling, or 0) zeroes it for base rows before it is added. None where it does not apply."""
    base = self.base_layer
    used = set(names) - {"__base__"}
    if (
        len(used) != 1
        or x.dim() != 3
        or x.shape[0] != len(names)
        or self.merged
        or self.disable_adapters
        or type(base) is not nn.Linear
    ):
        return None
    (name,) = used
    if name not in self.lora_A or name in self.lora_variant:
        return None
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    if lora_b.bias is not None or not (
        x.dtype == base.weight.dtype == lora_a.weight.dtype == lora_b.weight.dtype
    ):
        return None
    scale = self.scaling[name]
    rows = torch.tensor([scale if n == name else 0.0 for n in names], dtype=x.dtype, device=x.device)
    u = (x @ lora_a.weight.t()).mul_(rows.view(-1, 1, 1))  # eval: no dropout
    y = nn.functional.linear(x, base.weight, base.bias)
    y.view(-1, y.shape[-1]).addmm_(u.view(-1, u.shape[-1]), lora_b.weight.t())
    return y


def fuse_lora_linears(model: nn.Module) -> int:
    """Give each PEFT ``lora.Linear`` of ``model`` the one-node forward (calls it cannot serve fall back to
    PEFT's own); returns how many were fused. A projection whose adapter dtype is not its base's (a bf16 base
    on a CPU, the adapter in fp32) keeps PEFT's forward: the one node computes in one dtype."""
    from peft.tuners.lora.layer import Linear as LoraLinearLayer

    fused = 0
    for module in model.modules():
        if type(module) is LoraLinearLayer and "forward" not in module.__dict__:
            adapters = [*module.lora_A.values(), *module.lora_B.values()]
            if any(a.weight.dtype != module.base_layer.weight.dtype for a in adapters):
                continue
            module.forward = types.MethodType(_lora_fast_forward, module)
            fused += 1
    return fused


# ------------------------------------------------------------------------------------------ merged decoding

MERGE_BUDGET_BYTES = 1 << 30  # merged copies beyond this stay unmerged: the copies are memory no plan counted


def _mergeable(module: Any) -> str | None:
    """The adapter a PEFT ``lora.Linear`` would merge for decoding: one active plain LoRA adapter (no DoRA or
    other variant, no LoRA bias), unmerged and enabled, on an fp32 ``nn.Linear`` on a CPU with fp32 factors.
    A 16-bit base stays unmerged: rounding ``W + scale * B A`` to 16 bits would decode another model than the
    one the adapter's fp32 factors describe."""
    base = module.base_layer
    active = module.active_adapters
    if module.merged or module.disable_adapters or len(active) != 1 or type(base) is not nn.Linear:
        return None
    name = active[0]
    if name not in module.lora_A or name in module.lora_variant or module.lora_B[name].bias is not None:
        return None
    weights = (base.weight, module.lora_A[name].weight, module.lora_B[name].weight)
    if any(w.device.type != "cpu" or w.dtype != torch.float32 for w in weights):
        return None
    return name


@contextlib.contextmanager
def merged_lora(model: nn.Module, budget: int = MERGE_BUDGET_BYTES) -> Iterator[int]:
    """While generating on a CPU without gradients, compute each mergeable LoRA projection (:func:`_mergeable`)
    as ``x (W + scale * B A)^T + b`` with a temporary merged copy of its weight; yields how many were merged.
    Calls the merged forward cannot serve (gradients on, PEFT's ``adapter_names`` mixed batches) take the
    module's own forward. Nothing is merged when the copies would exceed `budget` bytes."""
    from peft.tuners.lora.layer import Linear as LoraLinearLayer

    chosen = []
    if not torch.is_grad_enabled():
        for module in model.modules():
            if type(module) is LoraLinearLayer and (name := _mergeable(module)) is not None:
                chosen.append((module, name))
    if sum(m.base_layer.weight.numel() * m.base_layer.weight.element_size() for m, _ in chosen) > budget:
        chosen = []
    saved = []
    try:
        for module, name in chosen:
            with torch.no_grad():
                weight = module.base_layer.weight + module.get_delta_weight(name)
            saved.append((module, module.__dict__.get("forward")))
            module.forward = types.MethodType(_merged_forward(weight, module.__dict__.get("forward")), module)
        yield len(saved)
    finally:
        for module, forward in saved:
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def _merged_forward(weight: torch.Tensor, own: Any) -> Any:
    def forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or torch.is_grad_enabled() or x.dtype != weight.dtype:
            return (
                own(x, *args, **kwargs) if own is not None else type(self).forward(self, x, *args, **kwargs)
            )
        return nn.functional.linear(x, weight, self.base_layer.bias)

    return forward
