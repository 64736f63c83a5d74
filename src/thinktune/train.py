"""The training recipe, top to bottom in :func:`train`; the only module that talks to TRL.

    thinktune train configs/demo-cpu.yaml train.max_steps=20
    thinktune train --resume runs/<name>                    # continue from the latest checkpoint
    accelerate launch --config_file configs/accelerate/ddp.yaml -m thinktune train configs/<recipe>.yaml

config -> tokenizer -> data (load, split, render through the one Formatter, length policy, data report) ->
model + LoRA -> TRL SFTTrainer -> train -> save. What it does differently from the common tutorial:

- SFTTrainer gets the Formatter's token ids and completion mask, so TRL neither re-templates nor re-tokenizes;
  only the completion (reasoning, answer, end-of-turn token) is trained, padding never is (labels come from the
  completion mask, not from the pad id, which may equal the end-of-turn token).
- Padding-free batches: examples are concatenated with position ids restarting at 0; each example attends only
  to itself (flash-attention's varlen kernel, or thinktune's packed SDPA, :mod:`thinktune.speed`), so no compute
  is spent on padding or on attention across examples.
- The memory plan runs against the detected GPU before any weights load; gradient checkpointing ``auto`` is on
  only when the plan needs it; QLoRA loads a 4-bit NF4 base (:mod:`thinktune.modeling`).
- Every example fits ``max_length`` before training (the data doctor's policy); nothing is truncated later.
- bf16 where the GPU supports it, fp16 autocast with fp32 adapter weights where it does not, fp32 on CPU.

Behaviour is added with TrainerCallbacks (:mod:`thinktune.callbacks`), never by subclassing the Trainer.
Under ``accelerate launch`` every process runs this function; only the main process writes the run folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

from thinktune import doctor, safety, trainrun
from thinktune.config import Config, dump_yaml
from thinktune.data import load_configured, split_examples
from thinktune.formatting import Encoded, Formatter
from thinktune.modeling import load_model, load_tokenizer, pick_dtype, prepare_kbit_model, quantization_config
from thinktune.plan import ensure_fits
from thinktune.preflight import TrainError, preflight
from thinktune.rundir import RunDir, save_examples
from thinktune.speed import training_attention, use_gradient_checkpointing
from thinktune.utils import environment_info, seed_everything, write_json

log = logging.getLogger(__name__)


def train(cfg: Config, *, resume: str | Path | None = None) -> RunDir:
    """Fine-tune `cfg.model` with LoRA on `cfg.data`; returns the run folder (see :mod:`thinktune.rundir`).

    With `resume`, continue that run from its latest checkpoint with the same data and data order; `cfg` must be
    the run's own config (the CLI reads it from the run folder).
    """
    import torch
    from accelerate import PartialState

    started = time.time()
    # Rank and world size under accelerate launch / torchrun (one process otherwise). Without CUDA, say so: a CPU
    # process group (gloo) is only recognised as distributed with cpu=True.
    dist = PartialState(cpu=not torch.cuda.is_available())
    main = dist.is_main_process

    # 0. Refuse what cannot work before loading anything heavy.
    checkpoint = None
    if resume is not None:
        run, checkpoint = trainrun.reopen(cfg, resume, main=main)
    model_facts = preflight(cfg)
    device = str(dist.device)
    # The memory plan against the detected GPU (config.json only): stop with settings that fit. No-op on CPU.
    ensure_fits(cfg)
    checkpointing = use_gradient_checkpointing(cfg, device)
    attention = training_attention(cfg.model.attn_implementation, device, cfg.train.padding_free)
    if resume is None:
        run = trainrun.new_run(cfg, dist)
    seed_everything(cfg.train.seed)
    dtype_name, precision = pick_dtype(cfg.model.dtype, device)
    if main:
        log.info("run folder: %s", run.path)
        log.info("resolved config:\n%s", dump_yaml(cfg))

    # 1. Tokenizer and the one formatter (the same prompt text at training and at inference).
    tok = load_tokenizer(cfg.model)
    d = cfg.data
    fmt = Formatter(tok, reasoning=d.reasoning, system_prompt=d.system_prompt, text_template=d.text_template)

    # 2. Data: examples -> token ids + completion mask, after the length policy; saved into the run folder.
    if checkpoint is None:
        train_enc, val_enc = _prepare_data(cfg, fmt, run, write=main)
    else:  # the exact examples of the interrupted run, not a re-read of a source that may have changed
        train_enc = [fmt.encode(e) for e in run.examples("train")]
        val_enc = [fmt.encode(e) for e in run.examples("validation")] if run.validation_data.is_file() else []
    if not train_enc:
        raise TrainError(f"no training examples left after the length policy; see {run.data_report}")
    if main:
        if checkpoint is None:
            env = environment_info() | {
                "device": device,
                "precision": precision,
                "dtype": dtype_name,
                "attn_implementation": attention,
                "gradient_checkpointing": checkpointing,
                "world_size": dist.num_processes,
                "max_position_embeddings": model_facts.max_positions,
            }
            write_json(run.env_file, env)
        trainrun.write_summary(run, {"status": "running", "resumed_from": checkpoint})

    # 3. Model (a 4-bit NF4 base for QLoRA, frozen and prepared before LoRA) and LoRA (PEFT's LoraConfig,
    # field for field from cfg.lora).
    load_kwargs: dict[str, Any] = {"attn_implementation": attention}
    if cfg.model.load_in_4bit:
        load_kwargs |= {"quantization_config": quantization_config(cfg.model), "device_map": {"": device}}
    model = load_model(cfg.model, device=device, dtype=dtype_name, **load_kwargs)
    if cfg.model.load_in_4bit:
        model = prepare_kbit_model(model, gradient_checkpointing=checkpointing)

    # 4. The trainer, with thinktune's behaviour as callbacks.
    trainer, cbs = build_trainer(
        cfg,
        model,
        tok,
        train_enc,
        val_enc,
        run,
        device=device,
        precision=precision,
        checkpoint=checkpoint,
        checkpointing=checkpointing,
    )
    if main:
        trainable, total = trainer.model.get_nb_trainable_parameters()
        log.info("precision %s on %s x%d", precision, device, dist.num_processes)
        lo = cfg.lora
        share = f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / max(total, 1):.2f}%)"
        where = (
            f"{lo.target_modules} of the last {lo.top_layers} blocks" if lo.top_layers else lo.target_modules
        )
        log.info("LoRA r=%d alpha=%d on %s: %s", lo.r, lo.lora_alpha, where, share)
        log.info("%d training examples, %d held out", len(train_enc), len(val_enc))

    # 5. Train (evaluating first, so the curve starts at the base model's held-out loss).
    try:
        with _quiet_renames():
            trainer.train(resume_from_checkpoint=checkpoint)
        if (
            val_enc
            and not cbs["stop"].stopped
            and not _evaluated_at(trainer.state, trainer.state.global_step)
        ):
            trainer.evaluate()  # the final held-out loss, when the last step was not an evaluation step
    except BaseException as e:
        # Out of memory, disk full, NaN: a ThinktuneError saying what to do instead of a traceback.
        status, explained = safety.explain_failure(e, cfg, run)
        if main:
            error = explained or e
            trainrun.write_summary(run, {"status": status, "error": f"{type(error).__name__}: {error}"})
        if explained is not None:
            raise explained from None
        raise

    # 6. Save the adapter with the tokenizer and its exact chat template beside it; then summary.json.
    signal_name = cbs["stop"].signal_name
    if signal_name is None:
        try:  # written beside adapter/ and renamed into place: never half an adapter
            safety.save_adapter(trainer, run, main=main)
        except BaseException as e:  # a full disk (OSError, or safetensors' own error) or an interruption
            status, explained = safety.explain_failure(e, cfg, run)
            if main:
                trainrun.write_summary(run, {"status": status, "error": str(explained or e)})
            if explained is not None:
                raise explained from None
            raise
    if main:
        facts = {"precision": precision, "device": device, "world_size": dist.num_processes}
        facts |= {"train_examples": len(train_enc), "validation_examples": len(val_enc)}
        trainrun.finish(run, trainer, started=started, signal_name=signal_name, facts=facts)
    dist.wait_for_everyone()
    return run


# ------------------------------------------------------------------------------------------ data


def _prepare_data(
    cfg: Config, fmt: Formatter, run: RunDir, *, write: bool
) -> tuple[list[Encoded], list[Encoded]]:
    d = cfg.data
    loaded = load_configured(d)
    notes = fmt.check(loaded.examples[:3])
    train_ex, val_ex = split_examples(
        loaded.examples, val_size=d.val_size, seed=d.seed, shuffle=d.shuffle, max_examples=d.max_examples
    )
    train_enc, val_enc = doctor.encode_all(fmt, train_ex), doctor.encode_all(fmt, val_ex)
    on_train = doctor.apply_length_policy(fmt, train_enc, d.max_length, d.length_policy)
    on_val = doctor.apply_length_policy(fmt, val_enc, d.max_length, d.length_policy)
    if write:
        both = doctor.PolicyResult(
            kept=on_train.kept + on_val.kept,
            dropped=on_train.dropped + on_val.dropped,
            shortened=on_train.shortened + on_val.shortened,
            cut_counts={k: on_train.cut_counts[k] + on_val.cut_counts[k] for k in on_train.cut_counts},
        )
        report = doctor.build_report(
            fmt,
            loaded.summary(),
            train_enc + val_enc,
            both,
            max_length=d.max_length,
            policy=d.length_policy,
            notes=notes,
            splits={"train": len(on_train.kept), "validation": len(on_val.kept)},
            tokenizer_name=cfg.model.tokenizer or cfg.model.name_or_path,
        )
        doctor.write_report(run.path, report, train_enc + val_enc, d.max_length)
        save_examples(run.train_data, [e.example for e in on_train.kept])
        if val_ex:
            save_examples(run.validation_data, [e.example for e in on_val.kept])
        for note in notes:
            log.info("template: %s", note)
    return on_train.kept, on_val.kept


def to_dataset(encoded: list[Encoded]) -> Any:
    """Pre-tokenized rows for SFTTrainer: it builds labels from completion_mask and does not re-tokenize."""
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": [e.input_ids for e in encoded], "completion_mask": [e.completion_mask for e in encoded]}
    )


# ------------------------------------------------------------------------------------------ trainer


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
    precision: str,
    has_eval: bool,
    resuming: bool,
    checkpointing: bool | None = None,
) -> Any:
    """TRL's SFTConfig for this run; `checkpointing=None` resolves train.gradient_checkpointing here."""
    from trl import SFTConfig

    t = cfg.train
    on_gpu = device.startswith("cuda")
    if checkpointing is None:
        checkpointing = use_gradient_checkpointing(cfg, device)
    early = t.early_stopping_patience is not None and has_eval
    return SFTConfig(
        output_dir=str(run.checkpoints),
        seed=t.seed,
        data_seed=t.seed,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # transformers 5: a value below 1 is a fraction of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        # bf16 autocast where supported; fp16 autocast keeps the LoRA weights in fp32 (PEFT upcasts them), so
        # the gradient scaler never meets fp16 gradients; CPU trains in plain fp32.
        bf16=precision == "bf16" or (precision == "bfloat16" and on_gpu),
        fp16=precision.startswith("fp16") or (precision == "float16" and on_gpu),
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps,
        eval_on_start=has_eval and not resuming,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        report_to=t.report_to,
        include_num_input_tokens_seen="all",
        # The data is already rendered, tokenized and within max_length (the length policy ran first):
        completion_only_loss=True,
        padding_free=t.padding_free,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        use_liger_kernel=t.use_liger_kernel,
        torch_compile=t.torch_compile,
        max_length=None,
        dataset_num_proc=None,
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
    precision: str,
    checkpoint: str | None = None,
    checkpointing: bool | None = None,
) -> tuple[Any, dict[str, Any]]:
    """SFTTrainer with PEFT LoRA, pre-tokenized data, and thinktune's callbacks (returned by name)."""
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import ProgressCallback
    from trl import SFTTrainer

    from thinktune.callbacks import (
        GracefulStop,
        LossCurve,
        MetricsWriter,
        ProgressBar,
        saved_supervised_tokens,
    )

    supervised = 0
    if checkpoint is not None:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
        supervised = saved_supervised_tokens(state)
    cbs: dict[str, Any] = {
        "metrics": MetricsWriter(str(run.metrics), supervised_tokens=supervised),
        "curve": LossCurve(run.metrics, run.loss_curve, title=f"{run.path.name}: {cfg.model.name_or_path}"),
        "stop": GracefulStop(),
        "progress": ProgressBar(),
        "finite": safety.NonFiniteGuard(cfg, run, precision),
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


def fast_path(cfg: Config, model: Any, device: str) -> None:
    """thinktune's kernels on the PEFT model SFTTrainer built (see thinktune.kernels): the one-pass LM-head loss
    where train.loss_head picks it, shared LoRA dropout masks, and one-node LoRA projections (train.lora_kernel)."""
    from thinktune import kernels

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if kernels.use_onepass_head(cfg.train.loss_head, device):
        if kernels.install_onepass_head(base):
            log.info("loss: one-pass LM head over the supervised positions (train.loss_head)")
        elif cfg.train.loss_head == "onepass":
            log.warning(
                "train.loss_head=onepass: this model's head is not a plain projection (bias, scaling, soft-capping "
                "or an MoE router loss); TRL's head computes the loss instead"
            )
    if cfg.lora.shared_dropout and cfg.lora.lora_dropout > 0:
        kernels.share_lora_dropout(model)
    if kernels.use_lora_kernel(cfg.train.lora_kernel, device):
        n = kernels.fuse_lora_linears(model)
        log.info("LoRA: %d projections computed as one node each (train.lora_kernel)", n)


@contextlib.contextmanager
def _quiet_renames():
    # transformers 5 renamed gradient_checkpointing, which TRL 1.x still sets and reads: not the user's concern.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def _evaluated_at(state: Any, step: int) -> bool:
    # From the Trainer's own log (identical on every process, restored on resume), not from metrics.jsonl,
    # which only the main process writes.
    return any(h.get("step") == step and "eval_loss" in h for h in state.log_history)
