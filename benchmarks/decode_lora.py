"""Decoding a LoRA-adapted model on a CPU, the way the demos decode: before and after thinktune's two decoding changes,
in one run, on the real SmolLM2-135M-Instruct.

    .venv/bin/python benchmarks/decode_lora.py                          # a seeded random adapter, all-linear r=16
    .venv/bin/python benchmarks/decode_lora.py --adapter runs/demo/adapter --max-new-tokens 448
    .venv/bin/python benchmarks/decode_lora.py --threads 1              # on a busy shared CPU

The prompts are the bundled multiple-choice questions (sample:mcq), rendered by the Formatter as `thinktune eval`
renders them. Two workloads, each timed with and without the change, same prompts, same model, same settings:

(i)  sampling, GRPO's rollout: :func:`thinktune.infer.generate.sample_groups`, `--group` completions of each of
     `--sample-prompts` prompts at temperature 0.7 with the demo's repetition penalty 1.15; the LoRA projections
     apart (PEFT's factors, thinktune's one-node kernel) against merged into one temporary weight while decoding
     (:func:`thinktune.models.fastpath.lora.merged_lora`, fp32 on a CPU).
(ii) greedy answers, what eval, compare and the GRPO demo's side by side run: :func:`generate_ids` over
     `--prompts` prompts in one batch; transformers' generate with the factors apart (every row decoded until the
     batch's longest answer ends) against thinktune's own loop (a finished row leaves the batch) with merged
     projections; then the base model (adapter off: nothing to merge, its answers stop at more varied lengths)
     through either loop, and the adapted model through transformers' generate with merged projections (the
     merge alone).

Reported: seconds, output tokens (stop token included), tokens/s and the ratio after / before, and how many
outputs are identical token for token (merging rounds differently in the last bits, so a sampled or greedy
choice can flip after a while; the count says how often it did).
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
    ap.add_argument(
        "--adapter", help="a PEFT adapter folder (default: a seeded random all-linear r=16 adapter)"
    )
    ap.add_argument(
        "--prompts", type=int, default=20, help="greedy prompts, one batch (the demo's held-out 20)"
    )
    ap.add_argument("--sample-prompts", type=int, default=1)
    ap.add_argument("--group", type=int, default=8, help="completions per sampled prompt (the demo's 8)")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinktune.data.sources import SAMPLE_PROBLEMS
    from thinktune.evals.mcq import load_mcq
    from thinktune.formatting.formatter import Formatter
    from thinktune.infer import generate as gen
    from thinktune.models import assets
    from thinktune.models.fastpath import decoding
    from thinktune.models.fastpath.lora import fuse_lora_linears

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = assets.smollm2_dir(with_weights=True)
    tok = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if args.adapter:
        model = PeftModel.from_pretrained(base, args.adapter)
        origin = args.adapter
    else:
        torch.manual_seed(0)
        model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        for name, p in model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero; a trained adapter is not
                p.data.normal_(0, 0.02)
        origin = "a seeded random adapter (all-linear, r=16)"
    model.eval()
    fused = fuse_lora_linears(model)
    fmt = Formatter(tok)
    questions = load_mcq(SAMPLE_PROBLEMS["mcq"]).items
    prompts = [tok(fmt.prompt(q.message, q.system), add_special_tokens=False)["input_ids"] for q in questions]
    stops = gen.stop_token_ids(tok, fmt.eot_id)
    apart = mock.patch.object(decoding, "merged_lora", lambda model: contextlib.nullcontext(0))
    transformers_loop = mock.patch.object(gen, "_config_processors", lambda model: ["(benchmark)"])

    def timed(fn: Any, *patches: Any) -> tuple[float, list[list[int]]]:
        with contextlib.ExitStack() as stack:
            for p in patches:
                stack.enter_context(p)
            start = time.perf_counter()
            out = fn()
            return time.perf_counter() - start, out

    def sample() -> list[list[int]]:
        return gen.sample_groups(
            model, tok, prompts[: args.sample_prompts], args.group, stops=stops,
            max_new_tokens=args.max_new_tokens, temperature=0.7, repetition_penalty=1.15, seed=3,
        )  # fmt: skip

    def greedy() -> list[list[int]]:
        return gen.generate_ids(
            model, tok, prompts[: args.prompts], stops=stops, max_new_tokens=args.max_new_tokens,
            repetition_penalty=1.15, batch_size=args.prompts,
        )[0]  # fmt: skip

    gen.sample_groups(model, tok, prompts[:1], 2, stops=stops, max_new_tokens=4, temperature=0.7)  # warm-up
    rows = []
    t0, before = timed(sample, apart)
    t1, after = timed(sample)
    rows.append(("sampling", "factors apart", "merged", t0, before, t1, after))
    t0, before = timed(greedy, apart, transformers_loop)
    t1, after = timed(greedy)
    rows.append(("greedy", "transformers generate", "own loop, merged", t0, before, t1, after))
    with model.disable_adapter():  # the base model's answers stop early more often: the own loop's own gain
        t0, before = timed(greedy, transformers_loop)
        t1, after = timed(greedy)
    rows.append(("base", "transformers generate", "own loop", t0, before, t1, after))
    tm, middle = timed(greedy, transformers_loop)

    print(
        f"SmolLM2-135M-Instruct + {origin}: {fused} LoRA projections, fp32, CPU, torch threads "
        f"{torch.get_num_threads()}; max_new_tokens {args.max_new_tokens}, repetition penalty 1.15; sampling "
        f"{args.sample_prompts} prompt(s) x {args.group} at temperature 0.7, greedy {args.prompts} prompts in one "
        "batch"
    )
    print(
        f"{'workload':<10}{'way':<24}{'seconds':>9}{'out tokens':>12}{'tokens/s':>10}{'ratio':>8}{'identical':>11}"
    )
    for work, was, now, t0, before, t1, after in rows:
        n0, n1 = sum(map(len, before)), sum(map(len, after))
        same = sum(a == b for a, b in zip(before, after, strict=True))
        print(f"{work:<10}{was:<24}{t0:>9.2f}{n0:>12}{n0 / t0:>10.1f}{'1.00x':>8}{'':>11}")
        print(
            f"{'':<10}{now:<24}{t1:>9.2f}{n1:>12}{n1 / t1:>10.1f}{(n1 / t1) / (n0 / t0):>7.2f}x{same:>6} of {len(after)}"
        )
    t0 = rows[1][3]
    stopped = sum(len(r) < args.max_new_tokens for r in rows[2][4])
    print(f"base: {stopped} of {len(rows[2][4])} answers stopped before max_new_tokens")
    print(
        f"greedy, transformers generate with merged projections: {tm:.2f} s, "
        f"{(sum(map(len, middle)) / tm) / (sum(map(len, rows[1][4])) / t0):.2f}x the first greedy row's tokens/s "
        f"(the merge alone); the own loop's wall time {rows[1][5] / t0:.2f}x transformers'"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
