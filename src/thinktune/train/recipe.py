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
  to itself (flash-attention's varlen kernel, or thinktune's packed SDPA, :mod:`thinktune.models.attention`), so no compute
  is spent on padding or on attention across examples.
- The memory plan runs against the detected GPU before any weights load; gradient checkpointing ``auto`` is on
  only when the plan needs it; QLoRA loads a 4-bit NF4 base (:mod:`thinktune.models.qlora`).
- Every example fits ``max_length`` before training (the data doctor's policy); nothing is truncated later.
- bf16 where the GPU supports it, fp16 autocast with fp32 adapter weights where it does not; on a CPU a bf16 base
  with an fp32 adapter where it has bf16 units, fp32 elsewhere.

Behaviour is added with TrainerCallbacks (:mod:`thinktune.train.callbacks`), never by subclassing the Trainer.
Under ``accelerate launch`` every process runs this function; only the main process writes the run folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from thinktune.config import Config
from thinktune.configfile import dump_yaml
from thinktune.data.load import load_configured, split_examples
from thinktune.errors import TrainError
from thinktune.formatting import doctor
from thinktune.formatting.formatter import Encoded, Formatter
from thinktune.models.attention import resolve_attention
from thinktune.models.loading import load_model, load_tokenizer
from thinktune.models.precision import resolve_precision
from thinktune.models.qlora import prepare_kbit_model, quantization_config
from thinktune.plan.recommend import ensure_fits
from thinktune.report.plots import length_histogram
from thinktune.rundir import RunDir, save_examples
from thinktune.train import failures, runfolder
from thinktune.train.checkpoints import save_adapter
from thinktune.train.preflight import preflight
from thinktune.train.trainer import build_trainer, quiet_renames, use_gradient_checkpointing
from thinktune.utils import seed_everything

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
        run, checkpoint = runfolder.reopen(cfg, resume, main=main)
    model_facts = preflight(cfg)
    device = str(dist.device)
    # The memory plan against the detected GPU (config.json only): stop with settings that fit. No-op on CPU.
    ensure_fits(cfg)
    checkpointing = use_gradient_checkpointing(cfg, device)
    attention = resolve_attention(cfg.model.attn_implementation, device, padding_free=cfg.train.padding_free)
    precision = resolve_precision(cfg.model.dtype, device)
    if resume is None:
        run = runfolder.new_run(cfg, dist)
    seed_everything(cfg.train.seed)
    if main:
        log.info("run folder: %s", run.path)
        log.info("resolved config:\n%s", dump_yaml(cfg))

    # 1. Tokenizer and the one formatter (the same prompt text at training and at inference).
    tok = load_tokenizer(cfg.model)
    fmt = Formatter.from_config(tok, cfg.data)

    # 2. Data: examples -> token ids + completion mask, after the length policy; saved into the run folder.
    if checkpoint is None:
        train_enc, val_enc = _prepare_data(cfg, fmt, run, write=main)
    else:  # the exact examples of the interrupted run, not a re-read of a source that may have changed
        train_enc = [fmt.encode(e) for e in run.examples("train")]
        val_enc = [fmt.encode(e) for e in run.examples("validation")] if run.validation_data.is_file() else []
    if not train_enc:
        raise TrainError(f"no training examples left after the length policy; see {run.data_report}")
    if main:
        runtime = runfolder.runtime(
            device=device,
            precision=precision,
            attention=attention,
            checkpointing=checkpointing,
            dist=dist,
            facts=model_facts,
        )
        runfolder.mark_running(run, checkpoint=checkpoint, runtime=runtime, stage="sft")

    # 3. Model (a 4-bit NF4 base for QLoRA, frozen and prepared before LoRA) and LoRA (PEFT's LoraConfig,
    # field for field from cfg.lora).
    quantization = quantization_config(cfg.model)  # None unless model.load_in_4bit
    model = load_model(
        cfg.model, device=device, precision=precision, attention=attention, quantization=quantization
    )
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
        log.info("precision %s on %s x%d", precision.label, device, dist.num_processes)
        lo = cfg.lora
        share = f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / max(total, 1):.2f}%)"
        where = (
            f"{lo.target_modules} of the last {lo.top_layers} blocks" if lo.top_layers else lo.target_modules
        )
        log.info("LoRA r=%d alpha=%d on %s: %s", lo.r, lo.lora_alpha, where, share)
        log.info("%d training examples, %d held out", len(train_enc), len(val_enc))

    # 5. Train (evaluating first, so the curve starts at the base model's held-out loss).
    # Out of memory, disk full, NaN: recorded, and a ThinktuneError saying what to do instead of a traceback.
    with failures.recorded(cfg, run, main=main), quiet_renames():
        trainer.train(resume_from_checkpoint=checkpoint)
        if (
            val_enc
            and not cbs["stop"].stopped
            and not _evaluated_at(trainer.state, trainer.state.global_step)
        ):
            trainer.evaluate()  # the final held-out loss, when the last step was not an evaluation step

    # 6. Save the adapter with the tokenizer and its exact chat template beside it; then summary.json.
    signal_name = cbs["stop"].signal_name
    if signal_name is None:
        # Written beside adapter/ and renamed into place: never half an adapter. A full disk (OSError, or
        # safetensors' own error) or an interruption is recorded and explained.
        with failures.recorded(cfg, run, main=main):
            save_adapter(trainer, run, main=main)
    if main:
        facts = {"precision": precision.label, "device": device, "world_size": dist.num_processes}
        facts |= {"train_examples": len(train_enc), "validation_examples": len(val_enc)}
        runfolder.finish(run, trainer, started=started, signal_name=signal_name, facts=facts)
    dist.wait_for_everyone()
    return run


# ------------------------------------------------------------------------------------------ data


def _prepare_data(
    cfg: Config, fmt: Formatter, run: RunDir, *, write: bool
) -> tuple[list[Encoded], list[Encoded]]:
    d = cfg.data
    loaded = load_configured(d, reserved=fmt.reserved)
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
        doctor.write_report(run.path, report)
        length_histogram(
            run.length_histogram, [e.lengths for e in train_enc + val_enc], d.max_length, title=loaded.source
        )
        save_examples(run.train_data, [e.example for e in on_train.kept])
        if val_ex:
            save_examples(run.validation_data, [e.example for e in on_val.kept])
        for note in notes:
            log.info("template: %s", note)
    return on_train.kept, on_val.kept


# ------------------------------------------------------------------------------------------ trainer


def _evaluated_at(state: Any, step: int) -> bool:
    # From the Trainer's own log (identical on every process, restored on resume), not from metrics.jsonl,
    # which only the main process writes.
    return any(h.get("step") == step and "eval_loss" in h for h in state.log_history)
