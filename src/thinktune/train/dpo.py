"""The DPO recipe, top to bottom in :func:`dpo`: offline preference training on the model's own answers.

    thinktune dpo runs/demo data.source=sample:mcq
    thinktune dpo --resume runs/<name>

The cheaper path to what GRPO does (HuatuoGPT-o1: offline DPO from 5 sampled answers per question reached 72.2 on
MedQA, close to PPO, at a fraction of the memory): config -> starting point (the SFT run's adapter) -> problems
(as GRPO: overlap refusal, held-out split, prompts through the one Formatter) -> sample ``dpo.samples`` answers per
training question with thinktune's batched, seeded generator -> grade each with the grader `eval` uses -> keep
pairs of one right and one wrong answer (:func:`build_pairs`; how many questions gave a pair is reported) ->
TRL's DPOTrainer with the SFT adapter trainable against its frozen starting copy -> save the policy adapter.
There is no generation during training, so it fits where GRPO does not.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinktune.config import Config
from thinktune.configfile import dump_yaml
from thinktune.errors import TrainError
from thinktune.evals.mcq import Question
from thinktune.evals.records import PairRecord
from thinktune.formatting.formatter import Formatter, adds_bos
from thinktune.infer.generate import Generation, generate
from thinktune.models.attention import resolve_attention
from thinktune.models.fastpath.lora import fuse_lora_linears, use_lora_kernel
from thinktune.models.precision import Precision, resolve_precision
from thinktune.plan.recommend import ensure_fits
from thinktune.rundir import RunDir
from thinktune.train import failures, rl, runfolder
from thinktune.train.callbacks import GracefulStop, LossCurve, MetricsWriter, ProgressBar
from thinktune.train.checkpoints import save_adapter
from thinktune.train.failures import NonFiniteGuard
from thinktune.train.preflight import preflight
from thinktune.train.rewards import MIN_REASONING_WORDS, correct_reward, format_reward
from thinktune.train.trainer import fast_path, quiet_renames, training_args, use_gradient_checkpointing
from thinktune.utils import read_jsonl, seed_everything, write_json, write_jsonl

log = logging.getLogger(__name__)

#: TRL's DPO log keys copied into metrics.jsonl (its implicit rewards are log-ratios to the reference, not the
#: graded rewards).
TRL_LOG_KEYS = {
    "rewards/chosen": "dpo_reward_chosen",
    "rewards/rejected": "dpo_reward_rejected",
    "rewards/accuracies": "dpo_accuracy",
    "rewards/margins": "dpo_margin",
    "logps/chosen": "logps_chosen",
    "logps/rejected": "logps_rejected",
}


def dpo(cfg: Config, *, resume: str | Path | None = None) -> RunDir:
    """DPO on pairs of the starting model's own right and wrong answers; returns the run folder."""
    import torch
    from accelerate import PartialState

    started = time.time()
    dist = PartialState(cpu=not torch.cuda.is_available())
    main = dist.is_main_process

    # 0. Refuse what cannot work before loading anything heavy.
    run, checkpoint = None, None
    if resume is not None:
        run, checkpoint = runfolder.reopen(cfg, resume, main=main, command="dpo")
    start = rl.starting_point(cfg.dpo.init_from, "dpo.init_from")
    device = str(dist.device)
    model_facts = preflight(cfg, stage="dpo")
    ensure_fits(cfg, stage="dpo")
    checkpointing = use_gradient_checkpointing(cfg, device, stage="dpo")
    attention = resolve_attention(cfg.model.attn_implementation, device, padding_free=False)
    precision = resolve_precision(cfg.model.dtype, device)

    # 1. Tokenizer (the SFT adapter's) and the one formatter; 2. the problems (refused or measured before any run
    # folder exists).
    tok = rl.stage_tokenizer(cfg, start)
    fmt = Formatter.from_config(tok, cfg.data)
    run, problems = rl.stage_problems(cfg, fmt, dist, stage="dpo", run=run, checkpoint=checkpoint)
    seed_everything(cfg.train.seed)
    if main:
        log.info("run folder: %s", run.path)
        log.info("resolved config:\n%s", dump_yaml(cfg))
        runtime = runfolder.runtime(
            device=device,
            precision=precision,
            attention=attention,
            checkpointing=checkpointing,
            dist=dist,
            facts=model_facts,
        )
        runfolder.mark_running(
            run, checkpoint=checkpoint, runtime=runtime, stage="dpo", init_from=start.origin
        )

    # 3. The policy (the SFT adapter, trainable).
    model, peft_config = rl.load_policy(
        cfg, start, device=device, precision=precision, attention=attention, checkpointing=checkpointing
    )

    # 4. Pairs from the policy's own sampled answers (sampled once; a resumed run reads them back).
    if checkpoint is None:
        pairs, stats = sample_pairs(cfg, model, fmt, problems.train, device)
        if main:
            write_jsonl(run.pairs, (p.to_dict() for p in pairs))
            report = dict(problems.report)
            report["pairs"] = stats
            write_json(run.data_report, report)
    else:
        pairs = [PairRecord.from_dict(r) for r in read_jsonl(run.pairs)]
        stats = {"questions_with_pair": len({p.row for p in pairs}), "pairs": len(pairs)}
    if not pairs:
        if main:
            run.update_summary(status="failed", error="no pairs")
        raise TrainError(
            f"none of the {len(problems.train)} questions gave a pair of a right and a wrong answer in "
            f"dpo.samples={cfg.dpo.samples} samples: the model is always right or always wrong (see "
            f"{run.data_report}). Raise dpo.samples or dpo.temperature, or use questions of a fitting difficulty."
        )

    # 5. The trainer and training.
    trainer, cbs = build_dpo_trainer(
        cfg,
        model,
        peft_config,
        fmt,
        pairs,
        run,
        device=device,
        precision=precision,
        checkpointing=checkpointing,
    )
    if main:
        log.info(
            "DPO from %s: %d pairs from %d of %d questions (%d answers sampled each)",
            start.label, len(pairs), stats["questions_with_pair"], len(problems.train), cfg.dpo.samples,
        )  # fmt: skip
    with failures.recorded(cfg, run, main=main), quiet_renames():
        trainer.train(resume_from_checkpoint=checkpoint)

    # 6. Save the policy adapter (never the frozen reference) with the run's own tokenizer; summary.json.
    signal_name = cbs["stop"].signal_name
    if signal_name is None:
        with failures.recorded(cfg, run, main=main):
            save_adapter(trainer, run, main=main, tokenizer=tok)
    if main:
        facts: dict[str, Any] = {
            "precision": precision.label,
            "device": device,
            "world_size": dist.num_processes,
        }
        facts |= {"train_examples": len(problems.train), "validation_examples": len(problems.validation)}
        facts |= {"pairs": len(pairs), "questions_with_pair": stats["questions_with_pair"]}
        runfolder.finish(run, trainer, started=started, signal_name=signal_name, facts=facts, command="dpo")
    dist.wait_for_everyone()
    return run


# ------------------------------------------------------------------------------------------ pairs


@dataclass(frozen=True)
class Judged:
    """One sampled answer with what the grader made of it."""

    generation: Generation
    right: bool
    format: float

    @property
    def usable(self) -> bool:
        return self.generation.stopped  # a cut answer has no end-of-turn token: never a model to follow


def judge(
    question: Question, gen: Generation, *, expect_think: bool, min_words: int = MIN_REASONING_WORDS
) -> Judged:
    """Right or wrong by the one grader, and the format reward GRPO would give it (the rewards' settings, such as
    ``grpo.min_reasoning_words``, are the grpo section's for both stages)."""
    return Judged(
        gen,
        correct_reward(gen, question) == 1.0,
        format_reward(gen, question, expect_think=expect_think, min_words=min_words),
    )


def build_pairs(
    question: Question, judged: Sequence[Judged], prompt: str, eot: str, *, limit: int
) -> list[PairRecord]:
    """Up to `limit` (right, wrong) pairs for one question: chosen answers are right and ended with the
    end-of-turn token (best format first); rejected ones are wrong, those that kept the format first, so a pair
    differs in being right rather than in shape. Each answer is used once."""
    right = sorted((j for j in judged if j.right and j.usable), key=lambda j: -j.format)
    wrong = sorted((j for j in judged if not j.right), key=lambda j: (-j.format, not j.usable))
    pairs = []
    for chosen, rejected in zip(right, wrong, strict=False):
        if len(pairs) >= limit:
            break
        pairs.append(
            PairRecord(
                question=question.text,
                prompt=prompt,
                chosen=chosen.generation.text + eot,
                rejected=rejected.generation.text + eot,  # DPOTrainer would append it to a cut answer anyway
                row=question.row,
                reference=question.reference,
                reference_letter=question.answer,
                chosen_tokens=chosen.generation.new_tokens,
                rejected_tokens=rejected.generation.new_tokens,
            )
        )
    return pairs


def sample_pairs(
    cfg: Config, model: Any, fmt: Formatter, questions: Sequence[Question], device: str
) -> tuple[list[PairRecord], dict[str, Any]]:
    """dpo.samples answers per question from the policy (seeded, batched), graded, paired; with the counts."""
    d = cfg.dpo
    if use_lora_kernel(cfg.train.lora_kernel, device):
        fuse_lora_linears(model)  # thinktune's LoRA projections also speed up sampling on a CPU
    prompts = [fmt.prompt(q.message, q.system) for q in questions]
    repeated = [p for p in prompts for _ in range(d.samples)]
    began = time.perf_counter()

    def progress(done: int, total: int) -> None:
        log.info("sampling answers for DPO pairs: %d/%d", done, total)

    gens = generate(
        model,
        fmt.tokenizer,
        repeated,
        eot_id=fmt.eot_id,
        prompt_opens_think=fmt.prompt_opens_think,
        max_new_tokens=d.max_completion_length,
        temperature=d.temperature,
        top_p=d.top_p,
        repetition_penalty=cfg.generation.repetition_penalty,
        repetition_penalty_scope=cfg.generation.repetition_penalty_scope,
        seed=cfg.train.seed,
        batch_size=max(cfg.eval.batch_size, d.samples),
        progress=progress,
    )
    expect_think = fmt.reasoning == "train"
    pairs: list[PairRecord] = []
    all_right = all_wrong = 0
    right_answers = 0
    for i, (q, prompt) in enumerate(zip(questions, prompts, strict=True)):
        judged = [
            judge(q, g, expect_think=expect_think, min_words=cfg.grpo.min_reasoning_words)
            for g in gens[i * d.samples : (i + 1) * d.samples]
        ]
        n_right = sum(j.right for j in judged)
        right_answers += n_right
        all_right += n_right == len(judged)
        all_wrong += n_right == 0
        pairs += build_pairs(q, judged, trl_prompt(fmt, prompt), fmt.eot, limit=d.pairs_per_question)
    with_pair = len({p.row for p in pairs})
    stats = {
        "questions": len(questions),
        "samples_per_question": d.samples,
        "answers_right": right_answers,
        "answers": len(gens),
        "questions_all_right": all_right,
        "questions_all_wrong": all_wrong,
        "questions_with_pair": with_pair,
        "pairs": len(pairs),
        "sampling_s": round(time.perf_counter() - began, 1),
    }
    log.info(
        "DPO pairs: %d of %d questions gave a pair (%d always right, %d always wrong); %d of %d answers right",
        with_pair, len(questions), all_right, all_wrong, right_answers, len(gens),
    )  # fmt: skip
    return pairs, stats


def trl_prompt(fmt: Formatter, prompt: str) -> str:
    """The prompt as DPOTrainer tokenizes it (with the tokenizer's own special tokens): without the BOS text the
    template wrote, for tokenizers that add BOS themselves, so it is not doubled."""
    tok = fmt.tokenizer
    if adds_bos(tok) and tok.bos_token and prompt.startswith(tok.bos_token):
        return prompt[len(tok.bos_token) :]
    return prompt


# ------------------------------------------------------------------------------------------ trainer


def dpo_tokenizer(tok: Any, eot: str) -> Any:
    """The tokenizer DPOTrainer gets: DPOTrainer appends ``eos_token`` to a completion that does not end with
    it, so where the template's end-of-turn token is not the eos, a copy with eos = end-of-turn is handed over
    (the run's own tokenizer is what is saved)."""
    if tok.eos_token == eot:
        return tok
    out = copy.deepcopy(tok)
    out.eos_token = eot
    return out


def dpo_config(cfg: Config, run: RunDir, *, device: str, precision: Precision, checkpointing: bool) -> Any:
    from trl import DPOConfig

    d = cfg.dpo
    return DPOConfig(
        **training_args(
            cfg,
            run,
            device=device,
            precision=precision,
            checkpointing=checkpointing,
            learning_rate=d.learning_rate,
        ),
        eval_strategy="no",
        # DPO
        beta=d.beta,
        loss_type=[d.loss_type],
        max_length=cfg.dpo.max_prompt_length + d.max_completion_length + 8,
        precompute_ref_log_probs=False,
        disable_dropout=True,
        dataset_num_proc=None,
    )


def build_dpo_trainer(
    cfg: Config,
    model: Any,
    peft_config: Any,
    fmt: Formatter,
    pairs: Sequence[PairRecord],
    run: RunDir,
    *,
    device: str,
    precision: Precision,
    checkpointing: bool = False,
) -> tuple[Any, dict[str, Any]]:
    from datasets import Dataset
    from transformers.trainer_callback import ProgressCallback
    from trl import DPOTrainer

    cbs: dict[str, Any] = {
        "metrics": MetricsWriter(str(run.metrics), extra=TRL_LOG_KEYS),
        "curve": LossCurve(
            run.metrics, run.loss_curve, title=f"{run.path.name}: DPO {cfg.model.name_or_path}"
        ),
        "stop": GracefulStop(),
        "progress": ProgressBar(),
        "finite": NonFiniteGuard(cfg, run, precision),
    }
    dataset = Dataset.from_dict(
        {"prompt": [p.prompt for p in pairs], "chosen": [p.chosen for p in pairs], "rejected": [p.rejected for p in pairs]}
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*gradient_checkpointing` is deprecated", category=FutureWarning
        )
        args = dpo_config(cfg, run, device=device, precision=precision, checkpointing=checkpointing)
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=dpo_tokenizer(fmt.tokenizer, fmt.eot),
            peft_config=peft_config,
            callbacks=list(cbs.values()),
        )
    trainer.remove_callback(ProgressCallback)
    fast_path(cfg, trainer.model, device)
    return trainer, cbs
