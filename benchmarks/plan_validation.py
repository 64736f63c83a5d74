"""Check `thinktune plan`'s memory estimate against the measured peak of real LoRA training steps, on CPU.

    .venv/bin/python benchmarks/plan_validation.py            # the full table (a few minutes on 2 cores)
    .venv/bin/python benchmarks/plan_validation.py --quick    # two small cases
    .venv/bin/python benchmarks/plan_validation.py --measure '{"model": ..., "tokens": 256, ...}'  # one case

Each case runs in a fresh subprocess: plain transformers + PEFT (LoRA r=16 on all block linears, dropout 0.05,
AdamW), fp32 on CPU, random weights from the model's config, one warm-up step (so the optimizer state exists,
as in every later step), then measured steps of forward + backward + optimizer step + zero_grad.

How the peak is measured, and why:
- "measured" = bytes alive when the step starts (parameters, buffers, optimizer state and inputs, summed from
  the live tensors) + the peak of the CPU allocator's running total during one step, read from the
  allocation events of `torch.profiler` (profile_memory=True). That is the CPU counterpart of
  `torch.cuda.max_memory_allocated`: every tensor allocation and free, nothing else, so it checks exactly
  what the estimator models (tensor memory), free of allocator and page-cache effects.
- "RSS" cross-checks it without the profiler: with glibc's mmap threshold pinned at 64 KiB
  (MALLOC_MMAP_THRESHOLD_, which also stops the threshold from adapting), every large tensor is its own
  mapping, returned on free, so the peak resident set (VmHWM, reset before the step through
  /proc/self/clear_refs) minus the resident set at the step's start tracks the step's tensor peak plus the
  runtime's own buffers (oneDNN scratch, OpenMP stacks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# A small Qwen2 with the real 152k vocabulary (untied, as R1-Distill-Qwen) so the loss path is realistic.
SMALL_QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "num_hidden_layers": 4,
    "vocab_size": 151936,
    "tie_word_embeddings": False,
    "max_position_embeddings": 4096,
}
#: Small enough for the test suite: the same family with a 32k vocabulary.
TEST_QWEN2 = {
    **SMALL_QWEN2,
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 2,
    "vocab_size": 32000,
}
#: A small vocabulary and a wide MLP, so the peak falls inside the backbone's backward instead of the loss.
WIDE_QWEN2 = {**SMALL_QWEN2, "intermediate_size": 2048, "vocab_size": 512}
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"

FULL_CASES = [
    *({"model": SMOLLM2, "tokens": t, "gc": False, "loss": "full"} for t in (128, 256, 512)),
    {"model": SMOLLM2, "tokens": 512, "gc": True, "loss": "full"},
    {"model": SMOLLM2, "tokens": 512, "gc": False, "loss": "chunked"},
    *({"model": "small-qwen2", "tokens": t, "gc": False, "loss": "full"} for t in (256, 512, 1024)),
    {"model": "small-qwen2", "tokens": 1024, "gc": True, "loss": "full"},
    {"model": "small-qwen2", "tokens": 1024, "gc": True, "loss": "chunked"},
    {"model": "wide-qwen2", "tokens": 1024, "gc": False, "loss": "full"},
    {"model": "wide-qwen2", "tokens": 1024, "gc": True, "loss": "full"},
]
QUICK_CASES = [
    {"model": "small-qwen2", "tokens": 256, "gc": False, "loss": "full"},
    {"model": "small-qwen2", "tokens": 256, "gc": True, "loss": "chunked"},
]


def config_for(model: str) -> dict:
    from thinktune.plan.arch import KNOWN_CONFIGS

    if model in ("small-qwen2", "test-qwen2", "wide-qwen2"):
        return dict({"small-qwen2": SMALL_QWEN2, "test-qwen2": TEST_QWEN2, "wide-qwen2": WIDE_QWEN2}[model])
    return dict(KNOWN_CONFIGS[model])


def setup_for(case: dict):
    from thinktune.plan.memory import Setup

    return Setup(
        max_length=case["tokens"],
        precision="fp32",
        gradient_checkpointing=case["gc"],
        loss=case["loss"],
        device="cpu",
    )


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(case: dict) -> dict:
    """Run in a fresh process: build the model, train one warm-up step, then measure one step two ways."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(**config_for(case["model"]))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    if case["loss"] == "chunked":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    if case["gc"]:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(
        model,
        LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    if case["gc"]:
        model.enable_input_require_grads()  # as TRL's SFTTrainer does with PEFT + checkpointing
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (1, case["tokens"]))
    kwargs = {"fused_lm_head": True} if case["loss"] == "chunked" else {}

    def step() -> float:
        loss = model(input_ids=ids, labels=ids, use_cache=False, **kwargs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    t0 = time.perf_counter()
    step()  # warm-up: allocates the optimizer state, as every later step finds it
    step_s = time.perf_counter() - t0

    storages = {}
    for t in [*model.parameters(), *model.buffers(), ids]:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    for state in opt.state.values():
        for t in state.values():
            if torch.is_tensor(t):
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    live = sum(storages.values())

    # RSS method (no profiler running): peak resident set during one step minus the resident set before it.
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _rss("VmRSS")
    step()
    rss_peak = _rss("VmHWM") - rss_before

    # Allocator method: the profiler's running total of CPU tensor bytes during one step.
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    peak = 0
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation and node.typed[1].device.type == "cpu":
            peak = max(peak, node.typed[1].total_allocated)
        stack.extend(node.children)
    return {"live_at_start": live, "step_peak": peak, "rss_step_peak": rss_peak, "step_seconds": step_s}


def run_cases(cases: list[dict]) -> list[dict]:
    """Measure `cases` in one fresh subprocess (one after another) and set each beside its estimate."""
    from thinktune.plan.arch import arch_from_config
    from thinktune.plan.memory import estimate

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, __file__, "--measure", json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"measurement failed for {cases}:\n{out.stderr[-3000:]}")
    rows = []
    for case, measured in zip(cases, json.loads(out.stdout.strip().splitlines()[-1]), strict=True):
        est = estimate(arch_from_config(config_for(case["model"]), case["model"]), setup_for(case))
        total = measured["live_at_start"] + measured["step_peak"]
        rss_total = measured["live_at_start"] + measured["rss_step_peak"]
        rows.append(
            {
                **case,
                "estimate": est.peak_allocated,
                "estimate_phase": est.peak_phase,
                "measured": total,
                "ratio": est.peak_allocated / total,
                "rss_measured": rss_total,
                "rss_ratio": est.peak_allocated / rss_total,
                **measured,
            }
        )
    return rows


def run_case(case: dict) -> dict:
    """Measure `case` in a fresh subprocess and set it beside the estimate."""
    return run_cases([case])[0]


def table(rows: list[dict]) -> str:
    mb = 2**20
    lines = [
        "| model | tokens | checkpointing | loss | estimate (MiB) | measured (MiB) | estimate/measured | "
        "RSS-measured (MiB) | estimate/RSS | estimated peak phase |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        name = "SmolLM2-135M" if r["model"] == SMOLLM2 else r["model"]
        lines.append(
            f"| {name} | {r['tokens']} | {'on' if r['gc'] else 'off'} | {r['loss']} | {r['estimate'] / mb:,.0f} | "
            f"{r['measured'] / mb:,.0f} | {r['ratio']:.3f} | {r['rss_measured'] / mb:,.0f} | "
            f"{r['rss_ratio']:.3f} | {r['estimate_phase']} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="two small cases only")
    p.add_argument("--measure", help="(internal) measure one JSON case in this process and print JSON")
    p.add_argument("--json", action="store_true", help="print the rows as JSON after the table")
    args = p.parse_args()
    if args.measure:
        todo = json.loads(args.measure)
        print(json.dumps([measure(c) for c in todo] if isinstance(todo, list) else measure(todo)))
        return
    rows = []
    for case in QUICK_CASES if args.quick else FULL_CASES:
        rows.append(run_case(case))
        print(f"  measured {case}: ratio {rows[-1]['ratio']:.3f}", file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
