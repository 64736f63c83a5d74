"""The one-pass LM-head loss in plain torch (``train.loss_head``), for where TRL's Triton head cannot run.

TRL's SFTTrainer projects hidden states through the LM head in
tiles and recomputes every tile in the backward, which saves memory on a GPU; without Triton (a CPU) it also
scores every position, prompt included, and folds each tile with a dozen whole-tile torch passes. Where the head
is frozen (LoRA never trains it), the gradient of a token's log-probability with respect to its hidden state is
``(onehot(target) - softmax(z)) @ W``, known as soon as the tile is: :class:`OnePassLogProb` computes it in the
forward, tile by tile over the supervised positions only, and keeps only that ``tokens x hidden`` matrix for the
backward. One projection forward, one back, no ``tokens x vocabulary`` logits kept. On 2 CPU cores with
SmolLM2's 49k vocabulary and 1,480 tokens (85% supervised), TRL's head takes 6.4 s forward+backward, full
logits with ``F.cross_entropy`` 2.5 s, this one 2.0 s (benchmarks/train_throughput.py measures whole steps).
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch
from torch import nn

TILE = 512  # tokens per projection tile: 512 x 49k fp32 is 100 MB transient, fastest on 2 CPU cores


class OnePassLogProb(torch.autograd.Function):
    """Per-token ``log p(target)`` under ``hidden @ weight.T / temperature``, its entropy and whether it is the
    argmax; the gradient with respect to ``hidden`` is computed in the forward (``weight`` must not need a
    gradient). GRPO scores completions at its sampling temperature, as TRL's head does."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
    ) -> Any:
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
            if temperature != 1.0:
                z.div_(temperature)
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
                if temperature != 1.0:
                    p.div_(temperature)  # d z / d hidden = W / temperature
                torch.mm(p.to(w.dtype), w, out=grad_hidden[s:e])
        ctx.save_for_backward(grad_hidden)
        ctx.mark_non_differentiable(entropy, top1)
        return logp, entropy, top1

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor | None, *_: Any) -> Any:
        (grad_hidden,) = ctx.saved_tensors
        if grad_logp is None or grad_hidden is None:
            return None, None, None, None
        return grad_hidden * grad_logp.to(grad_hidden.dtype)[:, None], None, None, None


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


def install_onepass_head(model: Any, temperature: float = 1.0) -> bool:
    """Route the trainer's ``fused_lm_head=True`` calls (TRL's loss path) through :class:`OnePassLogProb`.

    ``model`` is the causal LM whose ``forward`` TRL's SFTTrainer (or GRPOTrainer, DPOTrainer) already patched
    (the PEFT model's base model); `temperature` is the one TRL's head divides the logits by (GRPO's sampling
    temperature). Calls the one-pass head cannot serve exactly (a trained or non-plain head) go to TRL's head.
    Returns whether it was installed."""
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
        logp, entropy, top1 = OnePassLogProb.apply(hidden[mask], head.weight, labels[mask], temperature)
        # masked_scatter keeps the loss connected to the model when a micro-batch has no supervised token
        log_probs = logp.new_zeros(mask.shape).masked_scatter(mask, logp)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        with torch.no_grad():  # the vocabulary-mean logit (DPO logs it): h . mean(W) / T, no logits needed
            mean = hidden[mask].float() @ head.weight.float().mean(0) / temperature
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count,
            log_probs=log_probs,
            entropy=entropy.new_zeros(mask.shape).masked_scatter(mask, entropy),
            mean_logits=mean.new_zeros(mask.shape).masked_scatter(mask, mean),
            is_top1=top1.new_zeros(mask.shape).masked_scatter(mask, top1),
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)
    return True
