"""Check `thinktune plan`'s estimate against torch.cuda.max_memory_allocated on a real GPU.

    python benchmarks/plan_gpu_check.py            # on a CUDA machine (about a minute on an H100)
    python benchmarks/plan_gpu_check.py --tiny     # a scaled-down model on CPU: proves the script runs

Self-contained: needs torch, transformers and peft (trl is optional: with it, TRL's chunked LM head is checked
too); no network, no bitsandbytes. It builds the DeepSeek-R1-Distill-Qwen-1.5B architecture from thinktune's
embedded config.json with random weights in bf16, wraps it with LoRA (r=16, alpha 32, dropout 0.05, all block
linears; PEFT keeps the adapters in fp32) and trains it the way `Trainer(bf16=True)` does: forward under
`torch.autocast(bfloat16)`, backward, AdamW step, `zero_grad(set_to_none=True)`. For each arm (tokens per
micro-step, checkpointing, loss path, packed micro-batch) it runs a warm-up step, resets the peak counter, runs
two more steps and compares the peak with the estimate; an arm passes within 15%. The table goes to stdout and,
when $OUT is set, to $OUT/plan_gpu_check.md (with a JSON copy).

With --tiny the same arms run on CPU (bf16 autocast) with a 2-layer model of the same shape family, and the
peak is read from the CPU allocator's running total in torch.profiler's allocation events.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from thinktune.plan.arch import KNOWN_CONFIGS, arch_from_config  # noqa: E402  (stdlib-only modules
from thinktune.plan.memory import Setup, estimate  # noqa: E402

MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
TOLERANCE = 0.15
# (tokens per micro-step, micro-batch (packed rows when > 1), gradient checkpointing, loss path)
ARMS = [
    (2048, 1, False, "full"),
    (2048, 1, True, "full"),
    (4096, 1, False, "full"),
    (4096, 1, True, "full"),
    (8192, 1, False, "full"),
    (8192, 1, True, "full"),
    (8192, 4, True, "full"),  # four 2048-token examples packed padding-free: SDPA gets a block mask
    (8192, 1, True, "chunked"),
    (8192, 1, False, "chunked"),
]
TINY_ARMS = [(128, 1, False, "full"), (128, 2, True, "full"), (128, 1, True, "chunked")]


def tiny_config() -> dict:
    """The 1.5B config shrunk to CPU size, same family (Qwen2, GQA 6:1, untied embeddings)."""
    return {
        **KNOWN_CONFIGS[MODEL],
        "hidden_size": 192,
        "intermediate_size": 512,
        "num_attention_heads": 6,
        "num_key_value_heads": 1,
        "num_hidden_layers": 2,
        "vocab_size": 8192,
    }


def cpu_peak_allocated(fn) -> int:
    """Peak of the CPU allocator's running total while fn runs (relative to its start)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation and node.typed[1].device.type == "cpu":
            peak = max(peak, node.typed[1].total_allocated)
        stack.extend(node.children)
    return peak


def live_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def run(tiny: bool) -> tuple[list[dict], dict]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    device = "cpu" if tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny to check the script on CPU")
    config_dict = tiny_config() if tiny else KNOWN_CONFIGS[MODEL]
    arch = arch_from_config(config_dict, MODEL + (" (tiny)" if tiny else ""))
    config = AutoConfig.for_model(**config_dict)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
        except TypeError:  # transformers < 4.56 names it torch_dtype
            model = AutoModelForCausalLM.from_config(
                config, torch_dtype=torch.bfloat16, attn_implementation="sdpa"
            )
    try:
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer installs
        has_trl = True
    except ImportError:
        has_trl = False
    base = model
    model = get_peft_model(
        model,
        LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    build_s = time.perf_counter() - t0
    info = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor()})",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "peft": __import__("peft").__version__,
        "trl": __import__("trl").__version__ if has_trl else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(build_s, 1),
    }
    rows = []
    for tokens, rows_in_batch, ckpt, loss_kind in TINY_ARMS if tiny else ARMS:
        if loss_kind == "chunked" and not has_trl:
            continue
        set_checkpointing(base, ckpt)
        ids = torch.randint(0, config.vocab_size, (1, tokens), device=device)
        length = tokens // rows_in_batch
        inputs = {"input_ids": ids, "labels": ids.clone(), "use_cache": False}  # as TRL's SFTTrainer
        if rows_in_batch > 1:  # padding-free packing: positions restart at every example
            inputs["position_ids"] = torch.arange(length, device=device).repeat(rows_in_batch)[None]
        if loss_kind == "chunked":
            inputs["fused_lm_head"] = True

        step = functools.partial(train_step, model, opt, inputs, device)
        step()  # warm-up: optimizer state, kernels' workspaces
        gc.collect()
        t1 = time.perf_counter()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            step()
            step()
            torch.cuda.synchronize()
            measured = torch.cuda.max_memory_allocated()
            reserved = torch.cuda.max_memory_reserved()
        else:
            live = live_bytes(
                [*model.parameters(), *model.buffers(), *inputs_tensors(inputs)]
                + [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
            )
            measured = live + cpu_peak_allocated(step)
            reserved = None
        step_s = (time.perf_counter() - t1) / (2 if device == "cuda" else 1)
        setup = Setup(
            max_length=length,
            micro_batch=rows_in_batch,
            gradient_checkpointing=ckpt,
            loss=loss_kind,
            device=device,
        )
        est = estimate(arch, setup)
        ratio = est.peak_allocated / measured
        rows.append(
            {
                "tokens": tokens,
                "rows": rows_in_batch,
                "checkpointing": ckpt,
                "loss": loss_kind,
                "estimate": est.peak_allocated,
                "estimate_phase": est.peak_phase,
                "measured": measured,
                "reserved": reserved,
                "ratio": ratio,
                "pass": abs(ratio - 1) <= TOLERANCE,
                "step_seconds": round(step_s, 3),
            }
        )
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
        del ids, inputs, step
        gc.collect()
    return rows, info


def set_checkpointing(model, on: bool) -> None:
    """Non-reentrant checkpointing with the embedding output requiring grad, as TRL's SFTTrainer sets it up
    with PEFT (transformers 5 renamed the methods; older names kept for older installs)."""
    if on:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    else:
        if hasattr(model, "activation_checkpointing_disable"):
            model.activation_checkpointing_disable()
        else:
            model.gradient_checkpointing_disable()
        try:
            model.disable_input_require_grads()
        except AttributeError:  # older transformers: no hook was ever registered
            pass


def train_step(model, opt, inputs: dict, device: str) -> None:
    """One optimizer step the way Trainer(bf16=True) runs it: forward under autocast, backward, AdamW."""
    import torch

    with torch.autocast(device, dtype=torch.bfloat16):
        loss = model(**inputs).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def inputs_tensors(inputs: dict) -> list:
    return [v for v in inputs.values() if hasattr(v, "untyped_storage")]


def table(rows: list[dict], info: dict) -> str:
    # GiB for the real model, MiB for the --tiny one
    unit, gib = ("GiB", 2**30) if max(r["measured"] for r in rows) > 2**30 else ("MiB", 2**20)
    lines = [
        f"# thinktune plan: estimate vs measured peak ({MODEL} architecture, random weights)",
        "",
        f"device: {info['device']}; torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}, "
        f"trl {info['trl']}; {info['date']}",
        "LoRA r=16 alpha 32 dropout 0.05 on all block linears (fp32 adapters), bf16 base under autocast, AdamW, "
        "SDPA; peak = torch.cuda.max_memory_allocated over two steps after a warm-up step "
        "(on CPU: live tensors + the allocator's running total in torch.profiler).",
        "",
        f"| tokens/step | rows | checkpointing | loss | estimate ({unit}) | measured ({unit}) | reserved ({unit}) | "
        f"estimate/measured | within {TOLERANCE:.0%} | step (s) |",
        "|---:|---:|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        reserved = f"{r['reserved'] / gib:.2f}" if r["reserved"] else "-"
        lines.append(
            f"| {r['tokens']} | {r['rows']} | {'on' if r['checkpointing'] else 'off'} | {r['loss']} | "
            f"{r['estimate'] / gib:.2f} | {r['measured'] / gib:.2f} | {reserved} | {r['ratio']:.3f} | "
            f"{'PASS' if r['pass'] else 'FAIL'} | {r['step_seconds']} |"
        )
    passed = sum(r["pass"] for r in rows)
    lines += ["", f"{passed}/{len(rows)} arms within {TOLERANCE:.0%}."]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="run a scaled-down model on CPU (checks the script)")
    args = p.parse_args()
    rows, info = run(args.tiny)
    text = table(rows, info)
    print(text)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "plan_gpu_check.md").write_text(text + "\n", encoding="utf-8")
        (Path(out) / "plan_gpu_check.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
