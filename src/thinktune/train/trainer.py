"""The SFT trainer, built from a config: TRL's SFTConfig and SFTTrainer, PEFT's LoraConfig, thinktune's callbacks
and CPU fast path. With :mod:`thinktune.train.grpo` and :mod:`thinktune.train.dpo` (which build TRL's
GRPOTrainer and DPOTrainer), the only code that talks to TRL.

Decisions made here and nowhere else: whether gradient checkpointing is on (``auto``: only when the memory plan
says the run does not fit without it), which LoRA modules ``lora.top_layers`` names, and which fast-path kernels
run on this device.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from thinktune.config import Config
from thinktune.formatting.formatter import Encoded
from thinktune.models.fastpath.lora import fuse_lora_linears, share_lora_dropout, use_lora_kernel
from thinktune.models.fastpath.loss_head import install_onepass_head, use_onepass_head
from thinktune.models.precision import Precision
from thinktune.plan.recommend import check_fits
from thinktune.rundir import RunDir
from thinktune.train.callbacks import (
    GracefulStop,
    LossCurve,
    MetricsWriter,
    ProgressBar,
    saved_supervised_tokens,
)
from thinktune.train.failures import NonFiniteGuard

log = logging.getLogger(__name__)


def use_gradient_checkpointing(cfg: Any, device: str, stage: str = "sft") -> bool:
    """train.gradient_checkpointing resolved: ``auto`` is off on CPU and, on a GPU, on only when the memory plan
    says the run would not fit in the detected GPU's memory without it (recomputation costs about a third more
    compute)."""
    mode = cfg.train.gradient_checkpointing
    if mode != "auto":
        return mode == "on"
    if not device.startswith("cuda"):
        return False
    import copy

    without = copy.deepcopy(cfg)
    without.train.gradient_checkpointing = "off"
    fits, est, _ = check_fits(without, stage=stage)
    if est is None:  # no GPU or no model plan: keep the memory-safe choice
        return True
    log.info(
        "gradient checkpointing %s: the plan estimates %.1f GB without it",
        "off" if fits else "on",
        est.total / 2**30,
    )
    return not fits


def to_dataset(encoded: list[Encoded]) -> Any:
    """Pre-tokenized rows for SFTTrainer: it builds labels from completion_mask and does not re-tokenize."""
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": [e.input_ids for e in encoded], "completion_mask": [e.completion_mask for e in encoded]}
    )


def lora_config(cfg: Config, model: Any = None) -> Any:
    """PEFT's LoraConfig for cfg.lora; `model` (the base model) places lora.top_layers."""
    from peft import LoraConfig

    lo = cfg.lora
    targets, layers = lo.target_modules, None
    blocks = num_blocks(model) if model is not None else None
    if lo.top_layers is not None and blocks is not None and lo.top_layers < blocks:
        layers = list(range(blocks - lo.top_layers, blocks))
        if targets == "all-linear":  # PEFT takes layers_to_transform only with named targets
            targets = linear_leaf_names(model)
    return LoraConfig(
        r=lo.r,
        lora_alpha=lo.lora_alpha,
        lora_dropout=lo.lora_dropout,
        target_modules=targets,
        layers_to_transform=layers,
        use_rslora=lo.use_rslora,
        use_dora=lo.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def num_blocks(model: Any) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(config, "num_hidden_layers", None)
    return n if isinstance(n, int) else None


def linear_leaf_names(model: Any) -> list[str]:
    """What `all-linear` means, by name: every linear layer's last name part except the output head's."""
    from torch import nn

    head = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and m is not head
        }
    )


def sft_config(
    cfg: Config,
    run: RunDir,
    *,
    device: str,
    precision: Precision,
    has_eval: bool,
    resuming: bool,
    checkpointing: bool | None = None,
) -> Any:
    """TRL's SFTConfig for this run; `checkpointing=None` resolves train.gradient_checkpointing here."""
    from trl import SFTConfig

    t = cfg.train
    if checkpointing is None:
        checkpointing = use_gradient_checkpointing(cfg, device)
    early = t.early_stopping_patience is not None and has_eval
    return SFTConfig(
        **training_args(cfg, run, device=device, precision=precision, checkpointing=checkpointing),
        per_device_eval_batch_size=t.per_device_train_batch_size,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps,
        eval_on_start=has_eval and not resuming,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        include_num_input_tokens_seen="all",
        # The data is already rendered, tokenized and within max_length (the length policy ran first):
        completion_only_loss=True,
        padding_free=t.padding_free,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        use_liger_kernel=t.use_liger_kernel,
        torch_compile=t.torch_compile,
        max_length=None,
        dataset_num_proc=None,
    )


def training_args(
    cfg: Config,
    run: RunDir,
    *,
    device: str,
    precision: Precision,
    checkpointing: bool,
    learning_rate: float | None = None,
    max_grad_norm: float | None = None,
) -> dict[str, Any]:
    """The arguments SFT, GRPO and DPO give TRL alike: train.* for the loop, precision, checkpointing, logging,
    saving, the device. `learning_rate` and `max_grad_norm`: a stage's own (grpo.*, dpo.*) instead of train.*."""
    t = cfg.train
    on_gpu = device.startswith("cuda")
    return dict(
        output_dir=str(run.checkpoints),
        seed=t.seed,
        data_seed=t.seed,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate if learning_rate is None else learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # transformers 5: a value below 1 is a fraction of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm if max_grad_norm is None else max_grad_norm,
        optim=t.optim,
        # bf16 autocast where supported; fp16 autocast keeps the LoRA weights in fp32 (PEFT upcasts them), so
        # the gradient scaler never meets fp16 gradients; a CPU trains without autocast (fp32, or a bf16 base with the
        # adapter in fp32 where it has bf16 units).
        bf16=precision.autocast == "bf16",
        fp16=precision.autocast == "fp16",
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        report_to=t.report_to,
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
        use_cpu=not on_gpu,
        dataloader_pin_memory=on_gpu,
        save_only_model=False,
    )


def build_trainer(
    cfg: Config,
    model: Any,
    tokenizer: Any,
    train_enc: list[Encoded],
    val_enc: list[Encoded],
    run: RunDir,
    *,
    device: str,
    precision: Precision,
    checkpoint: str | None = None,
    checkpointing: bool | None = None,
) -> tuple[Any, dict[str, Any]]:
    """SFTTrainer with PEFT LoRA, pre-tokenized data, and thinktune's callbacks (returned by name)."""
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import ProgressCallback
    from trl import SFTTrainer

    supervised = 0
    if checkpoint is not None:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
        supervised = saved_supervised_tokens(state)
    cbs: dict[str, Any] = {
        "metrics": MetricsWriter(str(run.metrics), supervised_tokens=supervised),
        "curve": LossCurve(run.metrics, run.loss_curve, title=f"{run.path.name}: {cfg.model.name_or_path}"),
        "stop": GracefulStop(),
        "progress": ProgressBar(),
        "finite": NonFiniteGuard(cfg, run, precision),
    }
    if cfg.train.early_stopping_patience is not None and val_enc:
        cbs["early"] = EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience)
    with warnings.catch_warnings():
        # transformers 5 renamed gradient_checkpointing, which TRL 1.x still sets and reads: not the user's concern
        warnings.filterwarnings(
            "ignore", message=".*gradient_checkpointing` is deprecated", category=FutureWarning
        )
        args = sft_config(
            cfg,
            run,
            device=device,
            precision=precision,
            has_eval=bool(val_enc),
            resuming=checkpoint is not None,
            checkpointing=checkpointing,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=to_dataset(train_enc),
            eval_dataset=to_dataset(val_enc) if val_enc else None,
            processing_class=tokenizer,
            peft_config=lora_config(cfg, model),
            callbacks=list(cbs.values()),
        )
    trainer.remove_callback(ProgressCallback)  # ProgressBar shows the same bar without printing raw log dicts
    fast_path(cfg, trainer.model, device)
    return trainer, cbs


def fast_path(cfg: Config, model: Any, device: str, *, temperature: float = 1.0) -> None:
    """thinktune's kernels on the PEFT model a trainer built (see thinktune.models.fastpath): the one-pass LM-head
    log-probabilities where train.loss_head picks it (at `temperature`, GRPO's sampling temperature), shared LoRA
    dropout masks, and one-node LoRA projections (train.lora_kernel)."""

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if use_onepass_head(cfg.train.loss_head, device):
        if install_onepass_head(base, temperature):
            log.info("loss: one-pass LM head over the supervised positions (train.loss_head)")
        elif cfg.train.loss_head == "onepass":
            log.warning(
                "train.loss_head=onepass: this model's head is not a plain projection (bias, scaling, soft-capping "
                "or an MoE router loss); TRL's head computes the loss instead"
            )
    if cfg.lora.shared_dropout and cfg.lora.lora_dropout > 0:
        share_lora_dropout(model)
    if use_lora_kernel(cfg.train.lora_kernel, device):
        n = fuse_lora_linears(model)
        if n:
            log.info("LoRA: %d projections computed as one node each (train.lora_kernel)", n)
        else:
            log.info(
                "LoRA: PEFT's projections (the base and the adapter differ in dtype: no one-node kernel)"
            )


@contextlib.contextmanager
def quiet_renames():
    # transformers 5 renamed gradient_checkpointing, which TRL 1.x still sets and reads: not the user's concern.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield
