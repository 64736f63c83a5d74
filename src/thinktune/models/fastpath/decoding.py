"""Decoding on a CPU: the output head as ``(W @ x^T)^T`` for the few rows a generation step projects."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

SKINNY_ROWS = 64  # up to this many rows, W @ x^T beats x @ W^T for a large CPU head (measured, 2 cores)


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
