"""Batched generation vs one prompt at a time, on the CPU, with the real SmolLM2-135M-Instruct.

    .venv/bin/python benchmarks/generate_batched.py                 # 8 prompts, 64 new tokens, greedy
    .venv/bin/python benchmarks/generate_batched.py --prompts 16 --max-new-tokens 128 --batch-size 16
    .venv/bin/python benchmarks/generate_batched.py --threads 1     # on a busy shared CPU

The prompts are questions from the bundled sample data, rendered by the Formatter (SmolLM2's ChatML
template). Both ways run thinktune.infer.generate.generate with the same greedy settings; the table shows output
tokens per second (end-of-turn token included), the speed-up of batching, and how many outputs are identical
token for token (left padding changes the shapes of the matrix products, so float rounding can, rarely, flip a
greedy choice; the count says whether it did).

A third row decodes the same prompts batched with the weights in bf16, what `model.dtype=auto` picks on a CPU with
bf16 units (AVX512-BF16 or AMX); its outputs are compared with the fp32 batched ones. Without the units PyTorch
emulates bf16 and the row shows how much slower that is (`--no-bf16` leaves it out). A fourth row decodes in bf16
as before thinktune grouped the decoding step's attention (torch's SDPA kernel for every step,
thinktune.models.fastpath.decoding.grouped_decoding switched off), the baseline of that kernel in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="timed repetitions of each way (best is reported)")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's choice). On a CPU shared with other busy processes, 1 "
        "thread can be several times faster than 2: OpenMP threads wait on each other when a core is taken.",
    )
    ap.add_argument("--no-bf16", action="store_true", help="leave out the bf16 row")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinktune.data.load import load_examples
    from thinktune.formatting.formatter import Formatter
    from thinktune.infer.generate import generate
    from thinktune.models import assets
    from thinktune.models.fastpath import decoding
    from thinktune.models.precision import cpu_bf16_supported

    if args.threads:
        torch.set_num_threads(args.threads)

    folder = assets.smollm2_dir(with_weights=True)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    fmt = Formatter(tok)
    questions = [e.question for e in load_examples("sample").examples][: args.prompts]
    prompts = [fmt.prompt(q) for q in questions]
    kw = {
        "eot_id": fmt.eot_id,
        "prompt_opens_think": fmt.prompt_opens_think,
        "max_new_tokens": args.max_new_tokens,
    }
    generate(model, tok, prompts[:2], batch_size=2, **{**kw, "max_new_tokens": 4})  # warm-up

    def timed(batch_size: int, on: Any = model):
        best, gens = float("inf"), None
        for _ in range(args.repeats):
            start = time.perf_counter()
            gens = generate(on, tok, prompts, batch_size=batch_size, **kw)
            best = min(best, time.perf_counter() - start)
        return best, gens

    t_single, single = timed(1)
    t_batch, batched = timed(args.batch_size)
    if not args.no_bf16:
        bf16 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
        generate(bf16, tok, prompts[:2], batch_size=2, **{**kw, "max_new_tokens": 4})  # warm-up
        t_bf16, batched_bf16 = timed(args.batch_size, bf16)
        with mock.patch.object(decoding, "grouped_decoding", lambda model: contextlib.nullcontext()):
            t_sdpa, batched_sdpa = timed(args.batch_size, bf16)
    tokens_single = sum(g.new_tokens for g in single)
    tokens_batch = sum(g.new_tokens for g in batched)
    identical = sum(a.text == b.text for a, b in zip(single, batched, strict=True))
    stopped = sum(g.stopped for g in batched)

    print(
        f"SmolLM2-135M-Instruct (fp32 unless named, CPU, torch threads {torch.get_num_threads()}), {len(prompts)} prompts, "
        f"greedy, max_new_tokens {args.max_new_tokens}; {stopped} of {len(prompts)} batched outputs ended at "
        f"the end-of-turn token"
    )
    rows = [
        ("one prompt at a time", 1, t_single, tokens_single),
        ("batched (left padding)", args.batch_size, t_batch, tokens_batch),
    ]
    if not args.no_bf16:
        units = "with" if cpu_bf16_supported() else "WITHOUT"
        rows.append(
            ("batched, bf16 weights", args.batch_size, t_bf16, sum(g.new_tokens for g in batched_bf16))
        )
        rows.append(("bf16, SDPA decoding", args.batch_size, t_sdpa, sum(g.new_tokens for g in batched_sdpa)))
    print(f"{'mode':<24}{'batch':>6}{'seconds':>10}{'out tokens':>12}{'tokens/s':>10}{'vs single':>11}")
    base_rate = tokens_single / t_single
    for name, bs, secs, toks in rows:
        rate = toks / secs
        print(f"{name:<24}{bs:>6}{secs:>10.2f}{toks:>12}{rate:>10.1f}{rate / base_rate:>10.2f}x")
    print(f"identical outputs: {identical} of {len(prompts)}")
    if not args.no_bf16:
        same = sum(a.text == b.text for a, b in zip(batched, batched_bf16, strict=True))
        print(
            f"bf16 ({units} the CPU's bf16 units): {same} of {len(prompts)} outputs identical to fp32 batched; "
            f"{sum(g.stopped for g in batched_bf16)} ended at the end-of-turn token"
        )
        rate = sum(g.new_tokens for g in batched_bf16) / t_bf16
        rate_sdpa = sum(g.new_tokens for g in batched_sdpa) / t_sdpa
        same = sum(a.text == b.text for a, b in zip(batched, batched_sdpa, strict=True))
        print(
            f"bf16 decoding with the grouped attention: {rate / rate_sdpa:.2f}x the tokens/s of SDPA decoding in "
            f"this run; SDPA decoding's outputs: {same} of {len(prompts)} identical to fp32 batched, "
            f"{sum(g.stopped for g in batched_sdpa)} ended at the end-of-turn token"
        )
    for a, b in zip(single, batched, strict=True):
        if a.text != b.text:
            at = next(
                (i for i, (x, y) in enumerate(zip(a.text, b.text, strict=False)) if x != y),
                min(len(a.text), len(b.text)),
            )
            print(
                f"  first difference at character {at}: {a.text[max(0, at - 30) : at + 30]!r} vs {b.text[max(0, at - 30) : at + 30]!r}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
