"""Two pieces of the training step in plain torch, for where TRL's and PEFT's generic ones are slow: a CPU.

**The one-pass LM head** (``train.loss_head``). TRL's SFTTrainer projects hidden states through the LM head in
tiles and recomputes every tile in the backward, which saves memory on a GPU; without Triton (a CPU) it also
scores every position, prompt included, and folds each tile with a dozen whole-tile torch passes. Where the head
is frozen (LoRA never trains it), the gradient of a token's log-probability with respect to its hidden state is
``(onehot(target) - softmax(z)) @ W``, known as soon as the tile is: :class:`OnePassLogProb` computes it in the
forward, tile by tile over the supervised positions only, and keeps only that ``tokens x hidden`` matrix for the
backward. One projection forward, one back, no ``tokens x vocabulary`` logits kept. On 2 CPU cores with
SmolLM2's 49k vocabulary and 1,480 tokens (85% supervised), TRL's head takes 6.4 s forward+backward, full
logits with ``F.cross_entropy`` 2.5 s, this one 2.0 s (benchmarks/train_throughput.py measures whole steps).

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
"""

from __future__ import annotations

import contextlib
import functools
import types
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

TILE = 512  # tokens per projection tile: 512 x 49k fp32 is 100 MB transient, fastest on 2 CPU cores


# ------------------------------------------------------------------------------------------ one-pass LM head


class OnePassLogProb(torch.autograd.Function):
    """Per-token ``log p(target)`` under ``hidden @ weight.T``, its entropy and whether it is the argmax; the
    gradient with respect to ``hidden`` is computed in the forward (``weight`` must not need a gradient)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> Any:
        ctx.set_materialize_grads(False)
        n = hidden.shape[0]
        # grad mode is off inside forward; needs_input_grad says whether it was on outside
        want_grad = ctx.needs_input_grad[0]
        acc = torch.promote_types(hidden.dtype, torch.float32)  # softmax in fp32 at least
        logp = torch.empty(n, dtype=acc, device=hidden.device)
        entropy = torch.empty_like(logp)
        top1 = torch.empty(n, dtype=torch.bool, device=hidden.device)
        grad_hidden = (
            torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if want_grad else None
        )
        w = weight.to(hidden.dtype)
        for s in range(0, n, TILE):
            e = min(s + TILE, n)
            t = targets[s:e, None]
            z = (hidden[s:e] @ w.t()).to(acc)
            # Few passes over the tile (they, not the matmuls, dominate a small model's big-vocabulary head):
            # max with its index (the first of tied maxima, like TRL's is_top1), exp, sum, normalise, one dot.
            peak, top = z.max(-1, keepdim=True)
            top1[s:e] = top[:, 0] == t[:, 0]
            z.sub_(peak)
            p = z.exp()
            total = p.sum(-1, keepdim=True)
            log_total = total.log()
            logp[s:e] = (z.gather(-1, t) - log_total)[:, 0]
            p.div_(total)
            # entropy = log sum(exp z) - sum(p z) = log_total - sum(p (z - peak))
            entropy[s:e] = log_total[:, 0] - torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).view(-1)
            if grad_hidden is not None:
                # d log p_target / dz = onehot(target) - p
                p.neg_().scatter_add_(-1, t, torch.ones_like(t, dtype=p.dtype))
                torch.mm(p.to(w.dtype), w, out=grad_hidden[s:e])
        ctx.save_for_backward(grad_hidden)
        ctx.mark_non_differentiable(entropy, top1)
        return logp, entropy, top1

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor | None, *_: Any) -> Any:
        (grad_hidden,) = ctx.saved_tensors
        if grad_logp is None or grad_hidden is None:
            return None, None, None
        return grad_hidden * grad_logp.to(grad_hidden.dtype)[:, None], None, None


def _plain_head(model: Any) -> bool:
    """The head is ``hidden @ W.T``: no bias, logit scaling, soft-capping or MoE router loss to add."""
    text = model.config.get_text_config()
    head = model.get_output_embeddings()
    scaled = any(
        getattr(text, name, None) is not None
        for name in (
            "final_logit_softcapping",
            "logit_scale",
            "output_multiplier",
            "lm_head_multiplier",
            "logits_scaling",
        )
    )
    return (
        head is not None
        and isinstance(head, nn.Linear)
        and head.bias is None
        and not scaled
        and not getattr(text, "output_router_logits", False)
    )


def use_onepass_head(choice: str, device: str) -> bool:
    """train.loss_head: ``auto`` takes the one-pass head where TRL's runs without Triton (anything but CUDA/XPU)."""
    if choice == "auto":
        return not (device.startswith("cuda") or device.startswith("xpu"))
    return choice == "onepass"


def install_onepass_head(model: Any) -> bool:
    """Route the trainer's ``fused_lm_head=True`` calls (TRL's loss path) through :class:`OnePassLogProb`.

    ``model`` is the causal LM whose ``forward`` TRL's SFTTrainer already patched (the PEFT model's base model).
    Calls the one-pass head cannot serve exactly (a trained or non-plain head) go to TRL's head. Returns whether
    it was installed."""
    from trl.trainer.utils import FusedCausalLMOutput

    if not _plain_head(model) or not isinstance(getattr(model, "forward", None), types.MethodType):
        return False
    trl_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(
        self: Any,
        *args: Any,
        fused_lm_head: bool = False,
        labels: Any = None,
        shift_labels: Any = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        head = self.get_output_embeddings()
        if not fused_lm_head or head.weight.requires_grad:
            return trl_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        hidden, labels = hidden.to(head.weight.device), labels.to(head.weight.device)
        mask = labels != -100
        logp, entropy, top1 = OnePassLogProb.apply(hidden[mask], head.weight, labels[mask])
        # masked_scatter keeps the loss connected to the model when a micro-batch has no supervised token
        log_probs = logp.new_zeros(mask.shape).masked_scatter(mask, logp)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count,
            log_probs=log_probs,
            entropy=entropy.new_zeros(mask.shape).masked_scatter(mask, entropy),
            is_top1=top1.new_zeros(mask.shape).masked_scatter(mask, top1),
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)
    return True


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
    PEFT's own); returns how many were fused."""
    from peft.tuners.lora.layer import Linear as LoraLinearLayer

    fused = 0
    for module in model.modules():
        if type(module) is LoraLinearLayer and "forward" not in module.__dict__:
            module.forward = types.MethodType(_lora_fast_forward, module)
            fused += 1
    return fused


# ------------------------------------------------------------------------------------------ decoding head

SKINNY_ROWS = 64  # up to this many rows, W @ x^T beats x @ W^T for a large CPU head (measured, 2 cores)


@contextlib.contextmanager
def skinny_head(model: Any) -> Iterator[None]:
    """While decoding on a CPU, project the few new positions through the output head as ``(W @ x^T)^T``.

    For a 49k x 576 head and 6 rows, MKL takes 41 ms for ``F.linear`` and 17 ms for the transposed product (the
    same arithmetic in another order); at one row or at training sizes the two are equal. Elsewhere (a GPU, a
    biased or missing head, many rows) the head is left alone."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if (
        not isinstance(head, nn.Linear)
        or head.bias is not None
        or head.weight.device.type != "cpu"
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
