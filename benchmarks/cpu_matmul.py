"""fp32 against bf16 matrix products on this CPU, at SmolLM2-135M's shapes: why `model.dtype=auto` picks bf16 on a
CPU with bf16 units, why the decoding head's transposed order is kept for fp32 only, and why a 16-bit decoding
step's attention runs as a grouped product rather than through torch's SDPA kernel.

    .venv/bin/python benchmarks/cpu_matmul.py                 # torch's thread count
    .venv/bin/python benchmarks/cpu_matmul.py --threads 1     # on a busy shared CPU

Rows: a training-size product (1,400 positions through a 576 -> 1,536 MLP projection), and the output head
(49,152 x 576) for the few rows a generation step projects, as ``F.linear`` and as the transposed product
``(W @ x^T)^T`` that thinktune's decoding uses in fp32 (thinktune.models.fastpath.decoding); and one decoding
step's attention for 8 rows (9 query heads on 3 key heads of 64) against 150 and 550 cached positions, through
torch's SDPA (what transformers' ``sdpa`` runs) and as thinktune's grouped product (``grouped_attention``, used
in 16 bits only). Each is timed in fp32 and in bf16 in the same run (best of --repeats); the table shows
milliseconds, GFLOP/s and bf16's speed-up. Without bf16 units PyTorch emulates bf16, and the speed-up column
falls below 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def best_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument(
        "--repeats", type=int, default=20, help="timed repetitions of each product (best is kept)"
    )
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from thinktune.models.precision import cpu_bf16_supported

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [
        ("training: 1400 x 576 -> 1536", 1400, 1536, 576, "linear"),
        *[(f"decode head: {r} rows, F.linear", r, 49152, 576, "linear") for r in (1, 3, 8)],
        *[(f"decode head: {r} rows, (W @ x^T)^T", r, 49152, 576, "transposed") for r in (1, 3, 8)],
        *[
            (f"decode attention: 8 x {n}, {how}", 8, n, 64, how)
            for n in (150, 550)
            for how in ("SDPA", "grouped")
        ],
    ]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, bf16 units: {'yes' if cpu_bf16_supported() else 'no'}"
    )
    print(
        f"{'product':<36}{'fp32 ms':>10}{'bf16 ms':>10}{'fp32 GFLOP/s':>14}{'bf16 GFLOP/s':>14}{'bf16 x':>8}"
    )
    for name, rows, out, inp, order in cases:
        if order in ("SDPA", "grouped"):
            times = [
                attention_ms(order, rows, out, dtype, args.repeats)
                for dtype in (torch.float32, torch.bfloat16)
            ]
            flop = 2 * 2 * rows * 9 * out * inp  # scores and the weighted sum, 9 query heads
        else:
            x, w = torch.randn(rows, inp), torch.randn(out, inp)
            times = []
            for dtype in (torch.float32, torch.bfloat16):
                X, W = x.to(dtype), w.to(dtype)
                if order == "linear":
                    times.append(best_ms(lambda X=X, W=W: F.linear(X, W), args.repeats))
                else:
                    times.append(best_ms(lambda X=X, W=W: (W @ X.t()).t(), args.repeats))
            flop = 2 * rows * out * inp
        fp32, bf16 = times
        print(
            f"{name:<36}{fp32:>10.3f}{bf16:>10.3f}{flop / fp32 / 1e6:>14.1f}{flop / bf16 / 1e6:>14.1f}"
            f"{fp32 / bf16:>7.2f}x"
        )
    return 0


def attention_ms(how: str, rows: int, cached: int, dtype, repeats: int) -> float:
    """One decoding step's attention, as transformers calls it (a padded batch: a bool mask, one row padded)."""
    import torch
    import torch.nn.functional as F

    from thinktune.models.fastpath.decoding import grouped_attention

    q = torch.randn(rows, 9, 1, 64).to(dtype)
    k, v = torch.randn(rows, 3, cached, 64).to(dtype), torch.randn(rows, 3, cached, 64).to(dtype)
    mask = torch.ones(rows, 1, 1, cached, dtype=torch.bool)
    mask[0, ..., :20] = False
    if how == "SDPA":
        return best_ms(
            lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True), repeats
        )
    return best_ms(lambda: grouped_attention(q, k, v, mask, 0.125), repeats)


if __name__ == "__main__":
    sys.exit(main())
