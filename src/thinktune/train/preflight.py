"""Checks before training that read only the model's config, never its weights: refuse early and clearly.

`thinktune train` runs :func:`preflight` before loading weights, so a typo in a target module or a max_length
beyond the model's positions costs seconds, not a 7B download and load.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinktune.config import Config
from thinktune.errors import ModelLoadError, ThinktuneError, TrainError
from thinktune.models.loading import pretrained_source
from thinktune.models.qlora import require_optimizer_support, require_qlora_support

log = logging.getLogger(__name__)

TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
    "trackio": ("trackio",),
}


@dataclass
class ModelFacts:
    max_positions: int | None
    linear_names: list[str]  # leaf names of the linear layers LoRA can adapt (lm_head excluded)


def preflight(cfg: Config, stage: str = "sft") -> ModelFacts:
    """Refuse a request that cannot work, reading only the model's config (no weights): 4-bit or a bitsandbytes
    optimizer without CUDA/bitsandbytes, a speed option that is not installed, missing trackers, a max_length beyond the model's positions,
    target modules the model does not have."""
    problems: list[str] = []
    m, t = cfg.model, cfg.train
    # QLoRA and bitsandbytes optimizers: no CUDA or no bitsandbytes is refused here, before any weights load.
    try:
        if m.load_in_4bit:
            require_qlora_support()
        require_optimizer_support(t.optim)
    except ThinktuneError as e:
        problems.append(str(e))
    problems += speed_problems(cfg)
    trackers = [t.report_to] if isinstance(t.report_to, str) else list(t.report_to)
    for name in trackers:
        if name in ("none", "all"):
            continue
        if name not in TRACKERS:
            problems.append(f"train.report_to: unknown tracker {name!r}; use none, {', '.join(TRACKERS)}.")
        elif not any(importlib.util.find_spec(mod) for mod in TRACKERS[name]):
            problems.append(f"train.report_to includes {name!r} but it is not installed: pip install {name}.")
    if stage == "sft" and t.early_stopping_patience is not None and t.save_steps % t.eval_steps:
        # Early stopping keeps the best adapter, so a checkpoint must exist at every evaluation.
        problems.append(
            f"train.early_stopping_patience needs train.save_steps ({t.save_steps}) to be a multiple of "
            f"train.eval_steps ({t.eval_steps}); e.g. set train.save_steps={t.eval_steps}."
        )
    if problems:
        raise TrainError("cannot train with this configuration:\n  - " + "\n  - ".join(problems))

    config = _model_config(cfg)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    max_positions = getattr(text, "max_position_embeddings", None)
    if stage != "sft":
        # GRPO and DPO sample: the longest prompt they keep plus the longest completion must fit the positions.
        section = cfg.grpo if stage == "grpo" else cfg.dpo
        longest = section.max_prompt_length + section.max_completion_length
        if isinstance(max_positions, int) and longest > max_positions:
            problems.append(
                f"{stage}.max_prompt_length + {stage}.max_completion_length = {longest} is larger than the "
                f"{max_positions} positions {m.name_or_path!r} supports (max_position_embeddings); lower them."
            )
    elif isinstance(max_positions, int) and cfg.data.max_length > max_positions:
        problems.append(
            f"data.max_length={cfg.data.max_length} is larger than the {max_positions} positions "
            f"{m.name_or_path!r} supports (max_position_embeddings); set data.max_length={max_positions} or less "
            "(and data.length_policy=truncate_reasoning to keep long examples)."
        )
    blocks = getattr(text, "num_hidden_layers", None)
    top = cfg.lora.top_layers
    if top is not None and isinstance(blocks, int) and top > blocks:
        problems.append(
            f"lora.top_layers={top}, but {m.name_or_path!r} has {blocks} transformer blocks; set "
            f"lora.top_layers={blocks} or less (or null for all of them)."
        )
    linear = _linear_module_names(config, m.trust_remote_code)
    problems += _target_module_problems(cfg.lora.target_modules, linear, m.name_or_path)
    if problems:
        raise TrainError("cannot train with this configuration:\n  - " + "\n  - ".join(problems))
    return ModelFacts(max_positions if isinstance(max_positions, int) else None, linear)


def _model_config(cfg: Config) -> Any:
    from transformers import AutoConfig

    m = cfg.model
    source, kwargs = pretrained_source(m)
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except Exception as e:
        where = "folder" if Path(source).exists() else "id"
        raise ModelLoadError(
            f"model.name_or_path={m.name_or_path!r}: could not read the model config from the {where} {source!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Give a model folder holding "
            "config.json, a .gguf file, or a hub id you can reach (HF_HUB_OFFLINE is set when offline)."
        ) from None


def _linear_module_names(config: Any, trust_remote_code: bool) -> list[str]:
    """Leaf names of the model's linear layers, from a weightless copy on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    names = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
    }
    out = model.get_output_embeddings()
    return sorted(n for n in names if model.get_submodule(n) is not out)


def _target_module_problems(targets: list[str] | str, linear: list[str], model_name: str) -> list[str]:
    leaves = sorted({n.rsplit(".", 1)[-1] for n in linear})
    if targets == "all-linear":
        return []
    if isinstance(targets, str):  # PEFT treats a single string as a regular expression over full module names
        try:
            ok = any(re.fullmatch(targets, n) for n in linear)
        except re.error as e:
            return [f"lora.target_modules={targets!r} is not a valid regular expression ({e})."]
        if ok:
            return []
        return [
            f"lora.target_modules={targets!r} matches no linear layer of {model_name!r}; its layers are named "
            f"{', '.join(leaves)} (or use all-linear)."
        ]
    problems = []
    for t in targets:
        if t in ("lm_head", "embed_tokens"):
            problems.append(
                f"lora.target_modules: {t!r} cannot be adapted here (TRL computes the loss from lm_head's weight "
                "directly); adapt the blocks' linear layers."
            )
        elif not any(n == t or n.endswith("." + t) for n in linear):
            close = difflib.get_close_matches(t, leaves, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"lora.target_modules: {model_name!r} has no linear layer named {t!r}.{hint} Its layers are named "
                f"{', '.join(leaves)} (or use all-linear)."
            )
    return problems


def speed_problems(cfg: Any) -> list[str]:
    """Speed options that cannot run here, each with its fix (empty when all can)."""
    t = cfg.train
    problems = []
    if t.use_liger_kernel:
        if importlib.util.find_spec("liger_kernel") is None:
            problems.append(
                "train.use_liger_kernel=true needs the liger-kernel package: pip install liger-kernel "
                "(or set train.use_liger_kernel=false)."
            )
        else:
            import torch

            if not torch.cuda.is_available():
                problems.append(
                    "train.use_liger_kernel=true needs a CUDA GPU (Liger's kernels are Triton); "
                    "set train.use_liger_kernel=false on this machine."
                )
    if t.group_by_length and t.padding_free:
        log.info("train.group_by_length with padding_free: batches are packed anyway; only the order changes")
    return problems
