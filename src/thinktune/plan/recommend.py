"""`thinktune plan`'s decisions: settings from a config, recommendations that fit a VRAM budget, and the
pre-flight check `thinktune train` runs before loading weights (:func:`check_fits` / :func:`ensure_fits`).

The memory model itself (what is counted and how) lives in :mod:`thinktune.plan.memory`:

    from thinktune.plan.recommend import check_fits, ensure_fits
    fits, estimate, recommendation = check_fits(cfg)          # cfg: thinktune.config.Config
    ensure_fits(cfg)   # raises DoesNotFitError: "... cannot fit on <GPU> (<X> GB): estimated <Y> GB; try: ..."
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from thinktune.errors import DoesNotFitError, PlanError, ThinktuneError
from thinktune.models.attention import resolve_attention
from thinktune.models.precision import resolve_precision
from thinktune.plan.arch import Arch, load_arch
from thinktune.plan.memory import ALL_LINEAR, Estimate, GiB, Sampling, Setup, estimate

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ config -> setup


def resolve_targets(target_modules: list[str] | str) -> tuple[str, ...]:
    if target_modules == "all-linear":
        return ALL_LINEAR
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    unknown = [n for n in names if n not in ALL_LINEAR]
    if unknown:
        raise PlanError(
            f"lora.target_modules={names!r}: plan models the block linears {', '.join(ALL_LINEAR)}; "
            f"{unknown} are not among them."
        )
    return tuple(n for n in ALL_LINEAR if n in names)


STAGES = ("sft", "grpo", "dpo")


def setup_from_config(
    cfg: Any, *, device: str = "cuda", bf16_supported: bool = True, stage: str = "sft"
) -> Setup:
    """The :class:`Setup` a :class:`~thinktune.config.Config` describes, as training would run it. GRPO trains on
    padded micro-batches of prompt + completion (`per_device_train_batch_size` completions each) and samples every
    completion of an optimizer step at once; DPO on chosen + rejected pairs, after sampling its answers."""
    if stage not in STAGES:
        raise PlanError(f"stage {stage!r}: use one of {', '.join(STAGES)}.")
    m, lo, t = cfg.model, cfg.lora, cfg.train
    padding_free = t.padding_free and stage == "sft"
    attention = resolve_attention(m.attn_implementation, device, padding_free=padding_free)
    gc = {"on": True, "off": False, "auto": device == "cuda"}[t.gradient_checkpointing]
    max_length, micro, sampling = cfg.data.max_length, t.per_device_train_batch_size, None
    if stage == "grpo":
        g = cfg.grpo
        max_length = g.max_prompt_length + g.max_completion_length
        per_step = micro * t.gradient_accumulation_steps
        sampling = Sampling(
            g.max_prompt_length,
            g.max_completion_length,
            rows=min(per_step, g.sampling_batch_size or per_step),
            num_generations=g.num_generations,
            stage="grpo",
            reference_adapter=g.beta > 0 and bool(g.init_from),
        )
    elif stage == "dpo":
        d = cfg.dpo
        max_length = d.max_prompt_length + d.max_completion_length
        micro = 2 * micro  # the chosen and the rejected answer of each pair go through the model together
        sampling = Sampling(
            d.max_prompt_length,
            d.max_completion_length,
            rows=max(cfg.eval.batch_size, d.samples),
            stage="dpo",
            reference_adapter=bool(d.init_from),
        )
    return Setup(
        max_length=max_length,
        micro_batch=micro,
        grad_accum=t.gradient_accumulation_steps,
        precision=resolve_precision(m.dtype, device, bf16_supported=bf16_supported).short,
        qlora=m.load_in_4bit,
        lora_r=lo.r,
        target_modules=resolve_targets(lo.target_modules),
        lora_dropout=lo.lora_dropout,
        gradient_checkpointing=gc,
        optim=t.optim,
        padding_free=padding_free,
        attention=attention,
        device=device,
        sampling=sampling,
    )


# ------------------------------------------------------------------------------------------ recommendation


@dataclass
class Recommendation:
    fits: bool
    setup: Setup
    estimate: Estimate
    overrides: list[str]
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fits": self.fits,
            "overrides": self.overrides,
            "reasons": self.reasons,
            "estimate": self.estimate.to_dict(),
        }


def _lengths_to_try(want: int, fixed: bool) -> list[int]:
    if fixed:
        return [want]
    out, n = [want], want
    while n > 256:
        n = max(256, (int(n * 0.75) // 128) * 128)
        out.append(n)
    return out


def _batches_to_try(effective: int, fixed: int | None) -> list[int]:
    if fixed is not None:
        return [fixed]
    out, b = [], 1
    while b <= max(1, min(effective, 64)):
        out.append(b)
        b *= 2
    return sorted(out, reverse=True)


def overrides_for(s: Setup, base: Setup) -> list[str]:
    out = []
    if s.qlora != base.qlora:
        out.append(f"model.load_in_4bit={'true' if s.qlora else 'false'}")
    sp = s.sampling
    if sp is not None and sp.stage == "grpo":
        out += [
            f"grpo.num_generations={sp.num_generations}",
            f"grpo.max_completion_length={sp.completion_length}",
        ]
        if sp.rows < s.micro_batch * s.grad_accum:
            out.append(f"grpo.sampling_batch_size={sp.rows}")
    elif sp is not None:
        out.append(f"dpo.max_completion_length={sp.completion_length}")
    else:
        out.append(f"data.max_length={s.max_length}")
    micro = s.micro_batch // 2 if sp is not None and sp.stage == "dpo" else s.micro_batch
    out += [
        f"train.per_device_train_batch_size={micro}",
        f"train.gradient_accumulation_steps={s.grad_accum}",
        f"train.gradient_checkpointing={'on' if s.gradient_checkpointing else 'off'}",
    ]
    return out


def recommend(
    arch: Arch,
    base: Setup,
    vram_bytes: int,
    *,
    effective_batch: int,
    want_length: int,
    fix_length: bool = False,
    fix_batch: int | None = None,
    allow_qlora: bool = True,
) -> Recommendation:
    """The fastest settings that fit: LoRA before QLoRA, the wanted max_length before shorter ones, gradient
    checkpointing only when nothing fits without it, then the largest micro-batch (accumulation makes up the
    effective batch)."""
    methods = [True] if base.qlora else ([False, True] if allow_qlora else [False])
    if base.precision == "fp32":
        methods = [False]
    tried: Estimate | None = None
    for length in _lengths_to_try(want_length, fix_length):
        for qlora in methods:
            for gc in (False, True):
                for b in _batches_to_try(effective_batch, fix_batch):
                    s = replace(
                        base,
                        max_length=length,
                        micro_batch=b,
                        grad_accum=max(1, math.ceil(effective_batch / b)),
                        qlora=qlora,
                        gradient_checkpointing=gc,
                    )
                    est = estimate(arch, s)
                    if tried is None or est.total < tried.total:
                        tried = est
                    if est.total <= vram_bytes:
                        reasons = []
                        if length < want_length:
                            reasons.append(f"max_length lowered from {want_length} to {length} to fit")
                        if qlora and not base.qlora:
                            reasons.append("16-bit LoRA does not fit at this length: QLoRA (4-bit base)")
                        if gc:
                            reasons.append("gradient checkpointing on: nothing fits without it")
                        return Recommendation(True, s, est, overrides_for(s, base), reasons)
    assert tried is not None
    return Recommendation(
        False,
        tried.setup,
        tried,
        overrides_for(tried.setup, base),
        [
            f"nothing fits in {vram_bytes / GiB:.1f} GiB; the smallest setting tried needs {tried.total / GiB:.1f} GiB"
        ],
    )


def _rl_variant(
    base: Setup, completion: int, generations: int, micro: int, accum: int, qlora: bool, gc: bool, rows: int
) -> Setup:
    sp = base.sampling
    assert sp is not None
    if sp.stage == "grpo":
        sampling = replace(sp, completion_length=completion, num_generations=generations, rows=rows)
        length = sp.prompt_length + completion
    else:
        sampling = replace(sp, completion_length=completion)
        length = sp.prompt_length + completion
    return replace(
        base, max_length=length, micro_batch=micro, grad_accum=accum, qlora=qlora, gradient_checkpointing=gc,
        sampling=sampling,
    )  # fmt: skip


def recommend_rl(
    arch: Arch, base: Setup, vram_bytes: int, *, prompts_per_step: int | None = None, allow_qlora: bool = True
) -> Recommendation:
    """Settings for GRPO / DPO that fit: the configured completion length and generations before shorter or
    fewer, LoRA before QLoRA, no gradient checkpointing before checkpointing, then the largest micro-batch
    (accumulation keeps the completions per step: prompts x generations)."""
    sp = base.sampling
    assert sp is not None
    dpo = sp.stage == "dpo"
    unit = 2 if dpo else 1  # DPO micro-batches hold pairs
    per_step = base.micro_batch * base.grad_accum // unit
    prompts = prompts_per_step or max(1, per_step // max(1, sp.num_generations))
    lengths = [sp.completion_length]
    while lengths[-1] > 256:
        lengths.append(max(256, (int(lengths[-1] * 0.75) // 64) * 64))
    gens = (
        [sp.num_generations]
        if dpo
        else sorted({sp.num_generations, *(g for g in (8, 4, 2) if g < sp.num_generations)}, reverse=True)
    )
    methods = (
        [True] if base.qlora else ([False, True] if allow_qlora and base.precision != "fp32" else [False])
    )
    tried: Estimate | None = None
    for completion in lengths:
        for g in gens:
            effective = per_step if dpo else prompts * g
            # completions decoded together: all of a step's (fastest), then fewer (a smaller KV cache)
            chunks = (
                [sp.rows]
                if dpo
                else sorted({effective, *(r for r in (64, 32, 16, 8, g) if g <= r < effective)}, reverse=True)
            )
            for qlora in methods:
                for gc in (False, True):
                    for rows, micro in ((r, m) for r in chunks for m in _batches_to_try(effective, None)):
                        if effective % micro:
                            continue
                        s = _rl_variant(
                            base, completion, g, micro * unit, effective // micro, qlora, gc, rows
                        )
                        est = estimate(arch, s)
                        if tried is None or est.total < tried.total:
                            tried = est
                        if est.total <= vram_bytes:
                            reasons = []
                            if completion < sp.completion_length:
                                reasons.append(
                                    f"max_completion_length lowered from {sp.completion_length} to {completion} to fit"
                                )
                            if g < sp.num_generations:
                                reasons.append(
                                    f"num_generations lowered from {sp.num_generations} to {g} to fit"
                                )
                            if qlora and not base.qlora:
                                reasons.append("16-bit LoRA does not fit: QLoRA (4-bit base)")
                            if gc:
                                reasons.append("gradient checkpointing on: nothing fits without it")
                            if not dpo and rows < effective:
                                reasons.append(
                                    f"completions decoded {rows} at a time, not all {effective}: a smaller KV cache"
                                )
                            return Recommendation(True, s, est, overrides_for(s, base), reasons)
    assert tried is not None
    return Recommendation(
        False, tried.setup, tried, overrides_for(tried.setup, base),
        [f"nothing fits in {vram_bytes / GiB:.1f} GiB; the smallest setting tried needs {tried.total / GiB:.1f} GiB"],
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ train-side check


def parse_vram(text: str) -> int:
    """'8GB', '7.5 GiB', '8192MB', '8' (GiB) -> bytes. GPU memory is binary: 8GB means 8 GiB, as vendors mean."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(gib|gb|g|mib|mb|m|tib|tb|t)?\s*", text.lower())
    if not m:
        raise PlanError(f"--vram {text!r}: give a size such as 8GB, 7.5GiB or 8192MB.")
    value, unit = float(m.group(1)), (m.group(2) or "gb")[0]
    bytes_ = int(value * {"m": 2**20, "g": GiB, "t": 2**40}[unit])
    if bytes_ < 256 * 2**20:
        raise PlanError(f"--vram {text!r} is under 256 MiB; did you mean {text}GB?")
    return bytes_


def detected_gpu() -> tuple[str, int, bool] | None:
    """(name, total memory in bytes, bf16 supported) of CUDA device 0, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory, torch.cuda.is_bf16_supported()


def detected_vram() -> int | None:
    """Total memory of CUDA device 0 in bytes, or None on a machine without CUDA."""
    gpu = detected_gpu()
    return gpu[1] if gpu else None


def check_fits(
    cfg: Any, vram_bytes: int | None = None, *, loss: str = "chunked", stage: str = "sft"
) -> tuple[bool, Estimate | None, Recommendation | None]:
    """Cheap pre-flight check (config.json only, no weights): (fits, estimate, recommendation if it does not).

    Without a GPU (and no `vram_bytes`) nothing is checked: (True, None, None). A model whose config cannot be
    read or modelled is not blocked either: the reason is logged and (True, None, None) returned."""
    gpu = detected_gpu() if vram_bytes is None else None
    if vram_bytes is None:
        if gpu is None:
            return True, None, None
        vram_bytes = gpu[1]
    bf16 = gpu[2] if gpu else True
    try:
        arch, _ = load_arch(cfg.model.name_or_path, cfg.model.revision)
        base = replace(setup_from_config(cfg, device="cuda", bf16_supported=bf16, stage=stage), loss=loss)
        est = estimate(arch, base)
    except ThinktuneError as e:
        log.warning("memory plan skipped: %s", e)
        return True, None, None
    if est.total <= vram_bytes:
        return True, est, None
    if base.sampling is not None:
        return False, est, recommend_rl(arch, base, vram_bytes)
    rec = recommend(
        arch,
        base,
        vram_bytes,
        effective_batch=base.micro_batch * base.grad_accum,
        want_length=base.max_length,
    )
    return False, est, rec


def ensure_fits(
    cfg: Any, vram_bytes: int | None = None, *, gpu_name: str | None = None, stage: str = "sft"
) -> Estimate | None:
    """Raise :class:`DoesNotFitError` naming the GPU, the estimate and overrides that fit; else the estimate."""
    fits, est, rec = check_fits(cfg, vram_bytes, stage=stage)
    if fits:
        return est
    assert est is not None and rec is not None
    if vram_bytes is None:
        gpu = detected_gpu()
        assert gpu is not None
        gpu_name, vram_bytes = gpu_name or gpu[0], gpu[1]
    raise DoesNotFitError(fit_message(gpu_name or "this GPU", vram_bytes, est, rec))


def fit_message(gpu_name: str, vram_bytes: int, est: Estimate, rec: Recommendation) -> str:
    head = (
        f"this configuration cannot fit on {gpu_name} ({vram_bytes / GiB:.1f} GB): estimated "
        f"{est.total / GiB:.1f} GB (peak in the {est.peak_phase} phase)"
    )
    if rec.fits:
        return (
            f"{head}; try: {' '.join(rec.overrides)} (estimated {rec.estimate.total / GiB:.1f} GB). "
            f"`thinktune plan` shows the breakdown."
        )
    return f"{head}; even {' '.join(rec.overrides)} needs {rec.estimate.total / GiB:.1f} GB: use a smaller model."
