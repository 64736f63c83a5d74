"""One prepared GPU run (under 8 minutes on one H100/H200): throughput, MFU, the 8 GB cap, plan vs measured.

    python benchmarks/gpu.py --out "$OUT"            # on the GPU machine
    python benchmarks/gpu.py --smoke --out /tmp/g    # tiny config on CPU: proves the script runs

Needs torch, transformers, peft, accelerate, trl and datasets (trl/datasets may come from wheels on PYTHONPATH);
no network, no data files: the model is the DeepSeek-R1-Distill-Qwen-1.5B architecture from thinktune's embedded
published config.json with random weights in bf16, and the examples are random token ids with the exact
(total, prompt) token lengths of the 198 medical-o1 demo rows under the R1-Distill tokenizer
(benchmarks/medical_o1_lengths.json).

Parts, each timed against one budget (default 450 s; a part that would start past it is skipped) and each
caught on its own, so one failure never loses the others. After every part the results so far are written to
--out as gpu_results.json and gpu_results.md.

1. arms: the three recipes of benchmarks/train_throughput.py (tutorial, TRL defaults, thinktune's
   build_trainer) on the 1.5B architecture: examples/s, tokens/s, MFU (4N FLOPs per real token for LoRA: forward
   2N + backward through activations 2N, no weight gradients; the 6N full-fine-tuning convention is shown too),
   peak memory (torch.cuda.max_memory_allocated), guards.
2. cap8: torch.cuda.set_per_process_memory_fraction to 8 GiB (an RTX 4060): the largest tokens per step that
   trains (one packed micro-batch of medical-o1 examples, thinktune's path: packed attention, TRL's chunked LM
   head, LoRA r=16 all-linear, gradient checkpointing), with the plan's estimate next to each measured peak.
3. plan: benchmarks/plan_gpu_check.py's arms (estimate within 15% of the measured peak), uncapped.
4. grpo: a few GRPO steps of thinktune's path (build_grpo_trainer) on the 1.5B architecture, 4 prompts x 8
   generations of 512 tokens per step: seconds per step, sampled tokens/s, peak memory against the plan's estimate
   (`thinktune plan --stage grpo`).
5. qlora7b: DeepSeek-R1-Distill-Qwen-7B architecture, 4-bit NF4, one step at 4096 tokens under the 8 GiB cap;
   only when bitsandbytes imports.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
MODEL_7B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
GiB = 2**30
MIN_SECONDS = {
    "arms": 120,
    "cap8": 60,
    "plan": 60,
    "grpo": 90,
    "qlora7b": 150,
}  # a part starts only with this much left
PEAK_BF16 = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "4090": 165e12,
}  # dense bf16 FLOP/s


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.monotonic(), seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


def peak_flops(name: str) -> float | None:
    for key, value in PEAK_BF16.items():
        if key in name:
            return value * (756 / 989 if key == "H100" and "PCIe" in name else 1)
    return None


def tiny_config() -> dict:
    from thinktune.plan.arch import KNOWN_CONFIGS

    return {
        **KNOWN_CONFIGS[MODEL],
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 4096,
    }


def length_mix(n: int, scale: float = 1.0) -> list[tuple[int, int]]:
    rows = json.loads((HERE / "medical_o1_lengths.json").read_text())["lengths"]
    out = [(max(4, int(t * scale)), max(2, int(p * scale))) for t, p in rows]
    return [out[i % len(out)] for i in range(n)]


def synthetic_examples(lengths: list[tuple[int, int]], vocab: int, seed: int = 0) -> list[Any]:
    """Encoded examples with random ids of the given (total, prompt) lengths: the completion is trained."""
    import torch

    from thinktune.formatting.formatter import Encoded

    gen = torch.Generator().manual_seed(seed)
    out = []
    for total, prompt in lengths:
        ids = torch.randint(10, vocab, (total,), generator=gen).tolist()
        out.append(Encoded(ids, [0] * prompt + [1] * (total - prompt), prompt, prompt, example=None))
    return out


def synthetic_tokenizer() -> Any:
    """A minimal fast tokenizer: the trainers only need the pad and eos ids (the data is already token ids)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def model_folder(config: dict, work: Path) -> Path:
    """The architecture with random bf16 weights, saved once so every arm loads the same weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = work / "model"
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    gc.collect()
    return folder


# ------------------------------------------------------------------------------------------ parts


def part_arms(ctx: dict) -> dict:
    import torch
    import train_throughput as tt

    from thinktune.configfile import load_config
    from thinktune.models.attention import resolve_attention
    from thinktune.models.loading import load_model
    from thinktune.models.precision import resolve_precision

    on_gpu, steps, batch = ctx["on_gpu"], ctx["steps"], ctx["batch"]
    encoded = synthetic_examples(length_mix((steps + 1) * batch, ctx["scale"]), ctx["config"]["vocab_size"])
    max_length = -(-max(t for t, _ in length_mix(198, ctx["scale"])) // 128) * 128
    folder, tok, device = str(ctx["folder"]), ctx["tok"], ctx["device"]
    mcfg = load_config(None, [f"model.name_or_path={folder}", "model.dtype=bfloat16"]).model
    precision = resolve_precision("bfloat16", device)  # bf16 autocast on a GPU, plain bf16 weights on a CPU

    def fresh(attention: str = "sdpa") -> Any:
        torch.manual_seed(0)
        return load_model(mcfg, device=device, precision=precision, attention=attention)

    base_nll = tt.completion_nll(fresh(), encoded)
    work = ctx["work"]
    tcfg = tt.thinktune_config(MODEL if on_gpu else folder, steps, batch, str(work / "thinktune"))
    tcfg.model.dtype = "bfloat16"
    builders = {
        "tutorial": lambda: tt.arm_tutorial(
            fresh(), tok, encoded, max_length, steps, batch, str(work / "tut")
        ),
        "trl-default": lambda: tt.arm_trl(fresh(), tok, encoded, max_length, steps, batch, str(work / "trl")),
        "thinktune": lambda: tt.arm_thinktune(
            tcfg,
            fresh(resolve_attention("auto", device, padding_free=True)),
            tok,
            encoded,
            str(work / "thinktune"),
            precision,
        ),
    }
    n_params = ctx["n_params"]
    flops = peak_flops(ctx["device_name"])
    rows = []
    for name, build in builders.items():
        if ctx["budget"].left() < ctx["arm_reserve"]:
            rows.append({"arm": name, "skipped": "time budget"})
            continue
        try:
            row = tt.run_arm(name, build, encoded, base_nll, steps, batch)
        except Exception as e:  # one arm failing keeps the others
            rows.append(
                {"arm": name, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
            )
            continue
        row["mfu_4n"] = row["tokens_per_s"] * 4 * n_params / flops if flops else None
        row["mfu_6n"] = row["tokens_per_s"] * 6 * n_params / flops if flops else None
        rows.append(row)
        print(f"  arm {name}: {row['tokens_per_s']:.0f} tokens/s", flush=True)
        torch.cuda.empty_cache() if on_gpu else None
    good = [r for r in rows if "tokens_per_s" in r]
    return {
        "rows": rows,
        "table": tt.table(good) if good else "",
        "max_length": max_length,
        "n_params": n_params,
    }


def _packed_inputs(tokens: int, ctx: dict) -> dict:
    import torch

    lengths, total = [], 0
    for t, p in length_mix(10_000, ctx["scale"]):
        if total + t > tokens:
            t = tokens - total
            p = min(p, t - 1)
        if t < 2:
            break
        lengths.append((t, p))
        total += t
        if total >= tokens:
            break
    enc = synthetic_examples(lengths, ctx["config"]["vocab_size"], seed=1)
    ids = torch.tensor([[i for e in enc for i in e.input_ids]], device=ctx["device"])
    labels = torch.tensor(
        [[i if m else -100 for e in enc for i, m in zip(e.input_ids, e.completion_mask, strict=True)]]
    )
    pos = torch.cat([torch.arange(len(e.input_ids)) for e in enc])[None]
    cu = torch.tensor(
        [0, *torch.tensor([len(e.input_ids) for e in enc]).cumsum(0).tolist()], dtype=torch.int32
    )
    dev = ctx["device"]
    return {
        "input_ids": ids,
        "labels": labels.to(dev),
        "position_ids": pos.to(dev),
        "cu_seq_lens_q": cu.to(dev),
        "cu_seq_lens_k": cu.to(dev),
        "max_length_q": max(len(e.input_ids) for e in enc),
        "max_length_k": max(len(e.input_ids) for e in enc),
        "use_cache": False,
        "n_examples": len(enc),
    }


def _lora_model(folder: str, ctx: dict, checkpointing: bool, **load: Any) -> tuple[Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from plan_gpu_check import set_checkpointing
    from transformers import AutoModelForCausalLM

    from thinktune.models.attention import register_packed_sdpa

    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, attn_implementation=register_packed_sdpa(), **load
    )
    if "quantization_config" in load:
        from thinktune.models.qlora import prepare_kbit_model

        prepare_kbit_model(model, gradient_checkpointing=checkpointing)
    else:
        model.to(ctx["device"])
        set_checkpointing(model, checkpointing)
    fused = False
    try:
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
        fused = True
    except ImportError:
        pass
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, (opt, fused)


def _measure(model: Any, opt: Any, fused: bool, inputs: dict, ctx: dict) -> tuple[int, float]:
    """One warm-up step, then the peak of one more (bytes) and its seconds."""
    import torch
    from plan_gpu_check import cpu_peak_allocated, train_step

    batch = {k: v for k, v in inputs.items() if k != "n_examples"} | (
        {"fused_lm_head": True} if fused else {}
    )
    step = lambda: train_step(model, opt, batch, ctx["device"])  # noqa: E731
    step()
    if ctx["on_gpu"]:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(), time.perf_counter() - t
    t = time.perf_counter()
    peak = cpu_peak_allocated(step)
    return peak, time.perf_counter() - t


def _estimate(arch: Any, tokens: int, checkpointing: bool, qlora: bool, device: str) -> int:
    from thinktune.plan.memory import Setup, estimate

    setup = Setup(
        max_length=tokens,
        qlora=qlora,
        gradient_checkpointing=checkpointing,
        attention="packed_sdpa",
        device="cuda" if device == "cuda" else "cpu",
    )
    return estimate(arch, setup).peak_allocated


def part_cap8(ctx: dict) -> dict:
    import torch

    from thinktune.plan.arch import arch_from_config

    cap = ctx["cap_bytes"]
    if ctx["on_gpu"]:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(0).total_memory)
    arch = arch_from_config(ctx["config"], MODEL)
    rows, largest = [], None
    try:
        for checkpointing in (True, False):
            model, (opt, fused) = _lora_model(str(ctx["folder"]), ctx, checkpointing)
            for tokens in ctx["cap_tokens"]:
                if ctx["budget"].left() < 20:
                    rows.append({"tokens": tokens, "checkpointing": checkpointing, "skipped": "time budget"})
                    break
                inputs = _packed_inputs(tokens, ctx)
                row = {"tokens": tokens, "checkpointing": checkpointing, "examples": inputs["n_examples"]}
                try:
                    peak, seconds = _measure(model, opt, fused, inputs, ctx)
                    row |= {
                        "peak": peak,
                        "fits": peak <= cap,
                        "step_s": seconds,
                        "tokens_per_s": tokens / seconds,
                    }
                except torch.OutOfMemoryError:
                    row |= {"fits": False, "oom": True}
                opt.zero_grad(set_to_none=True)
                del inputs
                gc.collect()
                torch.cuda.empty_cache() if ctx["on_gpu"] else None
                row["estimate"] = _estimate(arch, tokens, checkpointing, False, ctx["device"])
                rows.append(row)
                print(f"  cap8 {row}", flush=True)
                if checkpointing and row.get("fits"):
                    largest = max(largest or 0, tokens)
                if not row.get("fits"):
                    break
            del model, opt
            gc.collect()
            torch.cuda.empty_cache() if ctx["on_gpu"] else None
    finally:
        if ctx["on_gpu"]:
            torch.cuda.set_per_process_memory_fraction(1.0)
    at_8k = next((r for r in rows if r["tokens"] == 8192 and r["checkpointing"] and "peak" in r), None)
    return {
        "cap_gb": cap / GiB,
        "rows": rows,
        "largest_tokens_per_step_with_checkpointing": largest,
        "peak_gb_at_8192_with_checkpointing": at_8k["peak"] / GiB if at_8k else None,
        "target_8192_within_7gb": (at_8k["peak"] <= 7 * GiB) if at_8k else None,
    }


def part_plan(ctx: dict) -> dict:
    import plan_gpu_check

    rows, info = plan_gpu_check.run(tiny=not ctx["on_gpu"])
    return {"rows": rows, "info": info, "table": plan_gpu_check.table(rows, info)}


def part_qlora7b(ctx: dict) -> dict:
    import importlib.util

    import torch

    if not ctx["on_gpu"]:
        return {"skipped": "no CUDA"}
    if importlib.util.find_spec("bitsandbytes") is None:
        return {"skipped": "bitsandbytes is not installed"}
    from thinktune.models.qlora import build_quantization_config, qlora_settings
    from thinktune.plan.arch import KNOWN_CONFIGS, arch_from_config

    config = KNOWN_CONFIGS[MODEL_7B]
    t = time.perf_counter()
    sub = {**ctx, "work": ctx["work"] / "q7", "config": config}
    sub["work"].mkdir(exist_ok=True)
    folder = model_folder(config, sub["work"])
    save_s = time.perf_counter() - t
    cfg = type("M", (), {"load_in_4bit": True, "dtype": "auto"})()
    qc = build_quantization_config(qlora_settings(cfg, bf16_supported=True))
    cap = ctx["cap_bytes"]
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(0).total_memory)
    try:
        model, (opt, fused) = _lora_model(str(folder), sub, True, quantization_config=qc, device_map={"": 0})
        inputs = _packed_inputs(4096, sub)
        try:
            peak, seconds = _measure(model, opt, fused, inputs, sub)
            result = {"tokens": 4096, "peak_gb": peak / GiB, "fits_8gb": peak <= cap, "step_s": seconds}
        except torch.OutOfMemoryError:
            result = {"tokens": 4096, "oom": True, "fits_8gb": False}
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    result["estimate_gb"] = _estimate(arch_from_config(config, MODEL_7B), 4096, True, True, "cuda") / GiB
    result["random_model_save_s"] = save_s
    return result


def _chatml_tokenizer(work: Path) -> Any:
    """A small byte-level BPE tokenizer with a ChatML template, trained in-process (no asset needed): GRPO's
    prompts go through thinktune's Formatter; ids the random model samples beyond its vocabulary decode to
    nothing."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = ["What is the most likely diagnosis? The answer is A. <think> </think> system user assistant"] * 4
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    folder = work / "chatml-tokenizer"
    fast.save_pretrained(folder)
    return folder


def part_grpo(ctx: dict) -> dict:
    """A few GRPO steps of thinktune's path (build_grpo_trainer: the rollout through thinktune's group sampler,
    the one-pass head off CUDA) on the R1-Distill-Qwen-1.5B shape with random weights: every completion runs to
    max_completion_length (a random model never emits its end-of-turn token), the worst case for the KV cache.
    Peak memory against the plan's estimate for the same settings (thinktune plan --stage grpo)."""
    import torch

    from thinktune.config import validate
    from thinktune.configfile import load_config
    from thinktune.evals.problems import from_examples, load_problems, to_example
    from thinktune.formatting.formatter import Formatter
    from thinktune.models.loading import load_model, load_tokenizer
    from thinktune.models.precision import resolve_precision
    from thinktune.plan.arch import arch_from_config
    from thinktune.plan.memory import estimate
    from thinktune.plan.recommend import setup_from_config
    from thinktune.rundir import RunDir
    from thinktune.train.grpo import build_grpo_trainer
    from thinktune.train.trainer import lora_config

    smoke = not ctx["on_gpu"]
    tokenizer = None
    # the real R1-Distill tokenizer where the offline package is installed (its vocabulary fits)
    if not smoke:
        try:
            from thinktune.models import assets

            tokenizer = str(assets.r1_distill_tokenizer_dir(False))
        except Exception:
            tokenizer = None
    tokenizer = tokenizer or str(_chatml_tokenizer(ctx["work"]))
    completion, prompt_len, generations, prompts = (16, 128, 4, 2) if smoke else (512, 256, 8, 4)
    steps = 1 if smoke else 3
    run_dir = ctx["work"] / "grpo-run"
    run_dir.mkdir(exist_ok=True)
    cfg = validate(
        load_config(
            None,
            [
                f"model.name_or_path={ctx['folder']}",
                f"model.tokenizer={tokenizer}",
                "data.source=sample:mcq",
                f"train.output_dir={ctx['work']}",
                f"train.max_steps={steps + 1}",
                f"train.per_device_train_batch_size={generations}",
                f"train.gradient_accumulation_steps={prompts}",
                "train.logging_steps=1",
                "train.save_steps=100000",
                "train.gradient_checkpointing=on",
                f"grpo.num_generations={generations}",
                f"grpo.max_prompt_length={prompt_len}",
                f"grpo.max_completion_length={completion}",
            ],
        )
    )
    tok = load_tokenizer(cfg.model)
    fmt = Formatter(tok)
    questions = from_examples([to_example(q) for q in load_problems("sample:mcq").questions[:32]], "train")
    device = ctx["device"]
    precision = resolve_precision("auto", device)
    model = load_model(cfg.model, device=device, precision=precision, attention="sdpa")
    trainer, cbs = build_grpo_trainer(
        cfg, model, lora_config(cfg, model), fmt, questions, RunDir(run_dir), device=device, precision=precision,
        checkpointing=True,
    )  # fmt: skip
    timer_ends: list[float] = []
    from transformers import TrainerCallback

    class Ends(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            timer_ends.append(time.perf_counter())

    trainer.add_callback(Ends())
    if ctx["on_gpu"]:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        trainer.train()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        from plan_gpu_check import cpu_peak_allocated

        peak = cpu_peak_allocated(trainer.train)
    records = RunDir(run_dir).metrics_records()
    arch = arch_from_config(ctx["config"], MODEL)
    setup = setup_from_config(cfg, device="cuda" if ctx["on_gpu"] else "cpu", stage="grpo")
    est = estimate(arch, setup)
    timed = timer_ends[1:] if len(timer_ends) > 1 else timer_ends
    return {
        "generations": generations,
        "prompts_per_step": prompts,
        "max_prompt_length": prompt_len,
        "max_completion_length": completion,
        "steps": len(records),
        "seconds_per_step": (timed[-1] - timer_ends[0])
        / max(1, len(timed) - (1 if len(timer_ends) > 1 else 0))
        if len(timer_ends) > 1
        else None,
        "sampling_tokens_per_s": [r.get("generation_tokens_per_s") for r in records],
        "completion_length": [r.get("completion_length") for r in records],
        "peak_gb": peak / GiB,
        "estimate_gb": est.peak_allocated / GiB,
        "estimate_over_measured": est.peak_allocated / peak if peak else None,
        "estimate_peak_phase": est.peak_phase,
        "kv_cache_gb": est.components.get("KV cache (sampling)", 0) / GiB,
        "tokenizer": tokenizer,
    }


# ------------------------------------------------------------------------------------------ report


def markdown(results: dict) -> str:
    env = results["env"]
    lines = [
        "# benchmarks/gpu.py",
        "",
        f"{env['date']}; {env['device']}; torch {env['torch']}, transformers {env['transformers']}, "
        f"peft {env['peft']}, trl {env['trl']}; {env['model']} architecture, random weights, bf16",
        "",
    ]
    parts = results["parts"]
    arms = parts.get("arms", {})
    if "rows" in arms:
        lines += [
            f"## Arms (N = {arms['n_params'] / 1e9:.3f} B parameters, tutorial max_length {arms['max_length']})",
            "",
        ]
        lines.append(arms["table"])
        lines += ["", "| arm | MFU (4N) | MFU (6N) |", "|---|---|---|"]
        for r in arms["rows"]:
            if "mfu_4n" in r and r["mfu_4n"] is not None:
                lines.append(f"| {r['arm']} | {r['mfu_4n']:.1%} | {r['mfu_6n']:.1%} |")
            elif "tokens_per_s" not in r:
                lines.append(f"| {r['arm']} | {r.get('skipped') or r.get('error')} | |")
        lines.append("")
    cap = parts.get("cap8", {})
    if "rows" in cap:
        lines += [
            f"## {cap['cap_gb']:.0f} GiB cap (set_per_process_memory_fraction): one packed micro-batch, LoRA r=16",
            "",
            "| tokens/step | checkpointing | examples | measured peak GiB | plan estimate GiB | est/measured | fits "
            "| tokens/s |",
            "|---:|---|---:|---:|---:|---:|---|---:|",
        ]
        for r in cap["rows"]:
            if "skipped" in r:
                lines.append(f"| {r['tokens']} | {r['checkpointing']} | skipped ({r['skipped']}) | | | | | |")
                continue
            peak = f"{r['peak'] / GiB:.2f}" if "peak" in r else "OOM"
            ratio = f"{r['estimate'] / r['peak']:.3f}" if "peak" in r else "-"
            tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-"
            lines.append(
                f"| {r['tokens']} | {'on' if r['checkpointing'] else 'off'} | {r['examples']} | {peak} | "
                f"{r['estimate'] / GiB:.2f} | {ratio} | {r['fits']} | {tps} |"
            )
        lines += [
            "",
            f"Largest tokens/step within the cap (checkpointing on): {cap['largest_tokens_per_step_with_checkpointing']}; "
            f"peak at 8192 tokens: {cap['peak_gb_at_8192_with_checkpointing']} GiB "
            f"(target within 7 GB: {cap['target_8192_within_7gb']}).",
            "",
        ]
    plan = parts.get("plan", {})
    if "table" in plan:
        lines += ["## Plan estimate vs measured (plan_gpu_check.py)", "", plan["table"], ""]
    q = parts.get("qlora7b")
    if q is not None:
        lines += ["## 7B QLoRA under the cap", "", "```", json.dumps(q, indent=1), "```", ""]
    g = parts.get("grpo")
    if g is not None and "peak_gb" in g:
        lines += [
            "## GRPO (thinktune's path, random weights: every completion runs to the limit)",
            "",
            f"{g['prompts_per_step']} prompts x {g['generations']} generations per step, prompts up to "
            f"{g['max_prompt_length']} tokens, completions {g['max_completion_length']}, LoRA r=16, checkpointing on.",
            "",
            "| s/step | sampled tok/s | measured peak GiB | plan estimate GiB | est/measured | plan's peak phase | KV cache GiB |",
            "|---:|---|---:|---:|---:|---|---:|",
            f"| {g['seconds_per_step'] or 0:.1f} | {g['sampling_tokens_per_s']} | {g['peak_gb']:.2f} | "
            f"{g['estimate_gb']:.2f} | {g['estimate_over_measured'] or 0:.3f} | {g['estimate_peak_phase']} | "
            f"{g['kv_cache_gb']:.2f} |",
            "",
        ]
    for name, part in parts.items():
        if "error" in part or "skipped" in part and name != "qlora7b":
            lines += [f"- part {name}: {part.get('error') or part.get('skipped')}"]
    lines += ["", f"Total wall time {results['wall_s']:.0f} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_results.json and gpu_results.md")
    p.add_argument("--smoke", action="store_true", help="tiny config on CPU, few steps: checks the script")
    p.add_argument(
        "--budget", type=float, default=450.0, help="seconds; parts that would start later are skipped"
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per arm (default 10; smoke 1)")
    p.add_argument("--batch", type=int, default=None, help="examples per micro-batch in the arms (default 8)")
    p.add_argument("--parts", default="arms,cap8,plan,grpo,qlora7b", help="comma-separated subset")
    args = p.parse_args(argv)

    import logging
    import warnings

    import peft
    import torch
    import transformers

    from thinktune.plan.arch import KNOWN_CONFIGS

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    on_gpu = torch.cuda.is_available() and not args.smoke
    device = "cuda" if on_gpu else "cpu"
    config = tiny_config() if args.smoke else KNOWN_CONFIGS[MODEL]
    work = Path(tempfile.mkdtemp(prefix="tt-gpu-"))
    try:
        trl_version = __import__("trl").__version__
    except ImportError:
        trl_version = None
    started = time.monotonic()
    budget = Budget(args.budget)
    folder = model_folder(config, work)
    with torch.device("meta"):
        meta = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config))
    ctx = {
        "on_gpu": on_gpu,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if on_gpu else f"CPU ({platform.processor() or 'cpu'})",
        "config": config,
        "folder": folder,
        "work": work,
        "tok": synthetic_tokenizer(),
        "budget": budget,
        "steps": args.steps or (1 if args.smoke else 10),
        "batch": args.batch or (2 if args.smoke else 8),
        "scale": 0.1 if args.smoke else 1.0,  # smoke: examples a tenth as long
        "n_params": sum(p.numel() for p in meta.parameters()),
        "cap_bytes": 8 * GiB,
        "cap_tokens": [256, 512] if args.smoke else [4096, 8192, 12288, 16384, 24576, 32768],
        "arm_reserve": 5 if args.smoke else 45,
    }
    del meta
    results: dict[str, Any] = {
        "env": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": ctx["device_name"],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl_version,
            "model": MODEL + (" (smoke: tiny)" if args.smoke else ""),
            "argv": sys.argv[1:],
        },
        "parts": {},
    }
    funcs = {
        "arms": part_arms,
        "cap8": part_cap8,
        "plan": part_plan,
        "grpo": part_grpo,
        "qlora7b": part_qlora7b,
    }
    for name in args.parts.split(","):
        left = budget.left()
        if left < MIN_SECONDS.get(name, 15) * (0.1 if args.smoke else 1):
            results["parts"][name] = {"skipped": f"time budget ({left:.0f} s left)"}
        else:
            print(f"part {name} ({left:.0f} s left)", flush=True)
            t = time.perf_counter()
            try:
                results["parts"][name] = funcs[name](ctx)
            except Exception as e:
                results["parts"][name] = {
                    "error": f"{type(e).__name__}: {e}",
                    "trace": traceback.format_exc()[-3000:],
                }
                print(results["parts"][name]["trace"], file=sys.stderr, flush=True)
            results["parts"][name]["seconds"] = time.perf_counter() - t
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
        results["wall_s"] = time.monotonic() - started
        (out / "gpu_results.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "gpu_results.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    errors = [n for n, p in results["parts"].items() if "error" in p]
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
