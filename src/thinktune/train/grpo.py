"""The GRPO recipe, top to bottom in :func:`grpo`: reinforcement with verifiable medical rewards.

    thinktune grpo runs/demo data.source=sample:mcq          # continue the SFT run's LoRA on the bundled MCQs
    thinktune grpo runs/my-sft grpo-r1-distill-qwen-1.5b     # a recipe's GRPO settings on an SFT run
    thinktune grpo --resume runs/<name>                      # continue from the latest checkpoint

config -> starting point (the SFT run's adapter and tokenizer, or a fresh LoRA) -> problems (load, overlap
refusal, held-out split, prompts through the one Formatter, too-long prompts dropped) -> memory plan -> model ->
TRL GRPOTrainer -> train -> save the policy adapter. TRL's ``GRPOTrainer`` does the loop; thinktune adds:

- prompts rendered exactly as `eval` renders them (the lettered options, the instruction to end with the
  letter), completions read as `eval` reads them, and the rewards of :mod:`thinktune.train.rewards` graded by
  the one grader, each logged apart;
- sampling with thinktune's batched generator (:func:`thinktune.infer.generate.generate_ids`, through TRL's
  ``rollout_func``): seeded per step, so a resumed run samples what the uninterrupted one would have, and on a
  CPU through thinktune's decoding kernels; vLLM (colocated) only on request on CUDA;
- guard-rails (:class:`~thinktune.train.callbacks.RewardGuard`): no reward spread for N steps, a high share of
  cut completions, NaN gradients (the SFT guard);
- the run folder of SFT (metrics.jsonl with the rewards, KL, entropy and completion lengths; completions.jsonl;
  loss_curve.png with reward and length panels; adapter/; checkpoints/; summary.json), so eval, compare, report,
  export, chat and check-template work on it unchanged. ``adapter/`` holds the policy alone: with ``beta > 0``
  and a starting adapter TRL keeps a frozen ``ref`` copy of it as the KL reference, which is never saved there.

The TRL names thinktune relies on (``rollout_func`` and its keys, the logged metric names) are in
:data:`TRL_LOG_KEYS` and :func:`build_grpo_trainer`; tests/test_grpo.py pins them.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from thinktune.config import Config
from thinktune.configfile import dump_yaml
from thinktune.errors import GenerationError, TrainError
from thinktune.formatting.formatter import Formatter
from thinktune.infer.generate import generate_ids, sample_groups, stop_token_ids
from thinktune.infer.vllm import pick_backend
from thinktune.models.attention import resolve_attention
from thinktune.models.precision import Precision, resolve_precision
from thinktune.plan.recommend import ensure_fits
from thinktune.rundir import RunDir
from thinktune.train import failures, rl, runfolder
from thinktune.train.callbacks import (
    CompletionsWriter,
    GenerationStats,
    GracefulStop,
    LossCurve,
    MetricsWriter,
    ProgressBar,
    RewardGuard,
    saved_supervised_tokens,
)
from thinktune.train.checkpoints import save_adapter
from thinktune.train.failures import NonFiniteGuard
from thinktune.train.preflight import preflight
from thinktune.train.rewards import RewardScorer, Verifier
from thinktune.train.trainer import fast_path, quiet_renames, training_args, use_gradient_checkpointing
from thinktune.utils import seed_everything

log = logging.getLogger(__name__)

#: TRL's GRPO log keys copied into metrics.jsonl, as {TRL key: metrics.jsonl key}; per reward also
#: ``rewards/<name>/mean`` and ``/std`` (see :func:`metric_keys`).
TRL_LOG_KEYS = {
    "reward": "reward",
    "reward_std": "reward_std",
    "frac_reward_zero_std": "zero_spread_share",
    "kl": "kl",
    "entropy": "entropy",
    "completions/mean_length": "completion_length",
    "completions/max_length": "completion_length_max",
    "completions/clipped_ratio": "clipped_share",
    "clip_ratio/region_mean": "clip_ratio",
    "step_time": "step_time_s",
    # logged by thinktune itself (the scorer through TRL's log_metric, the rollout's GenerationStats)
    "completions/think_closed": "think_closed_share",
    "completions/stopped": "stopped_share",
    "completions/option_named": "option_named_share",
    "generation_tokens_per_s": "generation_tokens_per_s",
    "generation_s": "generation_s",
}


def metric_keys(reward_names: list[str]) -> dict[str, str]:
    keys = dict(TRL_LOG_KEYS)
    for name in reward_names:
        keys[f"rewards/{name}/mean"] = f"reward_{name}"
        keys[f"rewards/{name}/std"] = f"reward_{name}_std"
    return keys


def grpo(cfg: Config, *, resume: str | Path | None = None) -> RunDir:
    """GRPO on `cfg.data`'s verifiable problems from `cfg.grpo.init_from` (an SFT run) or a fresh LoRA; returns
    the run folder. With `resume`, continue that run from its latest checkpoint (`cfg` is the run's own)."""
    import torch
    from accelerate import PartialState

    started = time.time()
    dist = PartialState(cpu=not torch.cuda.is_available())
    main = dist.is_main_process

    # 0. Refuse what cannot work before loading anything heavy: the starting point, the generation backend,
    # the settings the model's config.json contradicts, the memory plan against the detected GPU.
    run, checkpoint = None, None
    if resume is not None:
        run, checkpoint = runfolder.reopen(cfg, resume, main=main, command="grpo")
    start = rl.starting_point(cfg.grpo.init_from, "grpo.init_from")
    device = str(dist.device)
    backend = sampling_backend(cfg, device)
    check_batch(cfg, dist.num_processes)
    model_facts = preflight(cfg, stage="grpo")
    ensure_fits(cfg, stage="grpo")
    checkpointing = use_gradient_checkpointing(cfg, device, stage="grpo")
    attention = resolve_attention(cfg.model.attn_implementation, device, padding_free=False)
    precision = resolve_precision(cfg.model.dtype, device)
    warn_unused_settings(cfg)

    # 1. Tokenizer (the one saved with the SFT adapter) and the one formatter.
    tok = rl.stage_tokenizer(cfg, start)
    fmt = Formatter.from_config(tok, cfg.data)

    # 2. Problems: loaded, checked for overlap with eval.benchmarks, split, prompts measured (before any run folder
    # exists, so a refusal leaves nothing behind); a resumed run reads back its own.
    run, problems = rl.stage_problems(cfg, fmt, dist, stage="grpo", run=run, checkpoint=checkpoint)
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
        ) | {"generation_backend": backend}
        runfolder.mark_running(
            run, checkpoint=checkpoint, runtime=runtime, stage="grpo", init_from=start.origin
        )

    # 3. The policy: the SFT adapter, trainable, on the base as SFT loaded it (or a fresh LoRA).
    model, peft_config = rl.load_policy(
        cfg, start, device=device, precision=precision, attention=attention, checkpointing=checkpointing
    )

    # 4. The trainer, with the rewards, the rollout and thinktune's callbacks.
    verifier = Verifier(cfg.grpo.verifier) if cfg.grpo.verifier else None
    trainer, cbs = build_grpo_trainer(
        cfg, model, peft_config, fmt, problems.train, run,
        device=device, precision=precision, backend=backend, checkpoint=checkpoint,
        checkpointing=checkpointing, verifier=verifier,
    )  # fmt: skip
    if main:
        trainable, total = trainer.model.get_nb_trainable_parameters()
        g = cfg.grpo
        log.info(
            "precision %s on %s x%d; sampling with %s", precision.label, device, dist.num_processes, backend
        )
        log.info(
            "GRPO from %s: %d training questions (%d held out), %d completions each of at most %d tokens, "
            "rewards %s; %s of %s parameters trainable",
            start.label, len(problems.train), len(problems.validation), g.num_generations,
            g.max_completion_length, cbs["scorer"].weights, f"{trainable:,}", f"{total:,}",
        )  # fmt: skip

    # 5. Train.
    with failures.recorded(cfg, run, main=main), quiet_renames():
        trainer.train(resume_from_checkpoint=checkpoint)

    # 6. Save the policy adapter (never the frozen reference) with the tokenizer; then summary.json.
    signal_name = cbs["stop"].signal_name
    if signal_name is None:
        with failures.recorded(cfg, run, main=main):
            save_adapter(trainer, run, main=main)
    if main:
        facts: dict[str, Any] = {
            "precision": precision.label,
            "device": device,
            "world_size": dist.num_processes,
        }
        facts |= {"train_examples": len(problems.train), "validation_examples": len(problems.validation)}
        facts |= runfolder.reward_facts(run.metrics_records(), cbs["scorer"].names)
        dropped = (problems.report.get("prompts") or {}).get("dropped")
        if dropped is not None:
            facts["prompts_dropped"] = len(dropped)
        facts["warnings"] = list(cbs["guard"].warnings)
        runfolder.finish(run, trainer, started=started, signal_name=signal_name, facts=facts, command="grpo")
    dist.wait_for_everyone()
    return run


# ------------------------------------------------------------------------------------------ checks


def sampling_backend(cfg: Config, device: str) -> str:
    """hf (transformers, everywhere) unless generation.backend=vllm asks for vLLM colocated on the GPU."""
    if cfg.generation.backend != "vllm":
        return "hf"
    if not device.startswith("cuda"):
        raise GenerationError(
            f"generation.backend=vllm: GRPO samples with vLLM colocated on the training GPU, and this process runs "
            f"on {device}; set generation.backend=hf (transformers' generate, on any device)."
        )
    if cfg.model.load_in_4bit:
        raise GenerationError(
            "generation.backend=vllm cannot sample from a 4-bit (QLoRA) policy; set generation.backend=hf."
        )
    # refuses clearly when vLLM is not installed, or cannot decode as the config asks
    return pick_backend("vllm", prompt_free_penalty=cfg.generation.prompt_free_penalty)


def check_batch(cfg: Config, processes: int) -> None:
    """TRL counts completions, not prompts, in a batch: a step's completions must hold whole groups."""
    t, g = cfg.train, cfg.grpo
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * processes
    if per_step % g.num_generations:
        raise TrainError(
            f"GRPO batches hold completions: train.per_device_train_batch_size x train.gradient_accumulation_steps"
            f"{' x processes' if processes > 1 else ''} = {per_step} completions per step, which is not a multiple "
            f"of grpo.num_generations={g.num_generations} (each prompt's completions are scored as one group). "
            f"E.g. train.per_device_train_batch_size={g.num_generations} train.gradient_accumulation_steps=1."
        )


def warn_unused_settings(cfg: Config) -> None:
    from thinktune.config import TrainConfig

    defaults = TrainConfig()
    for key in ("learning_rate", "max_grad_norm"):
        if getattr(cfg.train, key) != getattr(defaults, key):
            log.warning(
                "train.%s=%s is the SFT stage's; GRPO uses grpo.%s=%s", key, getattr(cfg.train, key), key,
                getattr(cfg.grpo, key),
            )  # fmt: skip


# ------------------------------------------------------------------------------------------ trainer


def make_rollout(cfg: Config, fmt: Formatter, stats: GenerationStats) -> Any:
    """TRL's ``rollout_func``: sample each prompt's completions with thinktune's batched generator.

    TRL hands over the prompts of one generation batch (each repeated num_generations times) and trains on the
    returned token ids as they are: the prompt ids are the Formatter's (no special tokens added twice), each
    completion runs up to and including its end-of-turn token. The seed is a function of the step, so a resumed
    run samples exactly what the uninterrupted one would have; the global random state is left as it was."""
    import torch

    g, tok = cfg.grpo, fmt.tokenizer
    stops = stop_token_ids(tok, fmt.eot_id)
    cache: dict[str, list[int]] = {}

    def rollout(prompts: list[str], trainer: Any) -> dict[str, Any]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        encoded = []
        for p in prompts:
            if p not in cache:
                cache[p] = tok(p, add_special_tokens=False)["input_ids"]
            encoded.append(cache[p])
        seed = (
            cfg.train.seed
            + 1_000_003 * (trainer.state.global_step + 1)
            + 7_919 * trainer.accelerator.process_index
        )
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        sampling = {
            "stops": stops,
            "max_new_tokens": g.max_completion_length,
            "temperature": g.temperature,
            "top_p": g.top_p,
            "repetition_penalty": cfg.generation.repetition_penalty,
            "repetition_penalty_scope": cfg.generation.repetition_penalty_scope,
        }
        with torch.random.fork_rng(devices=devices):
            began = time.perf_counter()
            groups = prompt_groups(prompts)
            chunk = g.sampling_batch_size or len(encoded)
            if groups is not None and chunk >= len(encoded):
                # TRL repeats each prompt num_generations times in a row: one prefill and a shared KV cache per
                # prompt, finished completions leave the batch
                firsts = [encoded[start] for start in range(0, len(encoded), groups)]
                completions = sample_groups(model, tok, firsts, groups, seed=seed, **sampling)
            else:
                completions, _ = generate_ids(model, tok, encoded, seed=seed, batch_size=chunk, **sampling)
            stats.add(sum(len(c) for c in completions), time.perf_counter() - began)
        return {"prompt_ids": encoded, "completion_ids": completions, "logprobs": None}

    return rollout


def prompt_groups(prompts: list[str]) -> int | None:
    """The group size when `prompts` is runs of one prompt repeated the same number of times (TRL's sampler
    order), else None."""
    n = 1
    while n < len(prompts) and prompts[n] == prompts[0]:
        n += 1
    if len(prompts) % n:
        return None
    for start in range(0, len(prompts), n):
        if any(p != prompts[start] for p in prompts[start : start + n]):
            return None
    return n


def grpo_config(
    cfg: Config, run: RunDir, *, device: str, precision: Precision, backend: str, checkpointing: bool,
    reward_weights: list[float],
) -> Any:  # fmt: skip
    """TRL's GRPOConfig for this run. Every default TRL would pick differently from thinktune is set here
    (TRL turns gradient checkpointing and bf16 on by default)."""
    from trl import GRPOConfig

    g = cfg.grpo
    return GRPOConfig(
        **training_args(
            cfg,
            run,
            device=device,
            precision=precision,
            checkpointing=checkpointing,
            learning_rate=g.learning_rate,
            max_grad_norm=g.max_grad_norm,
        ),
        eval_strategy="no",
        shuffle_dataset=cfg.data.shuffle,
        # GRPO
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=0,
        repetition_penalty=cfg.generation.repetition_penalty,
        beta=g.beta,
        loss_type=g.loss_type,
        epsilon=g.epsilon,
        epsilon_high=g.epsilon_high,
        scale_rewards=g.scale_rewards,
        mask_truncated_completions=g.mask_truncated_completions,
        reward_weights=reward_weights,
        use_vllm=backend == "vllm",
        vllm_mode="colocate",
        log_completions=False,
    )


def build_grpo_trainer(
    cfg: Config,
    model: Any,
    peft_config: Any,
    fmt: Formatter,
    questions: list[Any],
    run: RunDir,
    *,
    device: str,
    precision: Precision,
    backend: str = "hf",
    checkpoint: str | None = None,
    checkpointing: bool = False,
    verifier: Verifier | None = None,
) -> tuple[Any, dict[str, Any]]:
    """GRPOTrainer over `questions` (their prompts rendered by `fmt`) with thinktune's rewards, rollout and
    callbacks (returned by name, with the scorer)."""
    import json

    from datasets import Dataset
    from transformers.trainer_callback import ProgressCallback
    from trl import GRPOTrainer

    g = cfg.grpo
    tok = fmt.tokenizer
    scorer = RewardScorer(
        tok,
        questions,
        {n: float(w) for n, w in g.rewards.items() if w},
        fmt.eot_id,
        fmt.prompt_opens_think,
        expect_think=fmt.reasoning == "train",
        max_completion_length=g.max_completion_length,
        length_buffer=g.length_buffer,
        min_reasoning_words=g.min_reasoning_words,
        verifier=verifier,
    )
    supervised = 0
    if checkpoint is not None:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
        supervised = saved_supervised_tokens(state)
    stats = GenerationStats()
    cbs: dict[str, Any] = {
        "generation": stats,  # before the writer: it adds the sampling speed to each log
        "metrics": MetricsWriter(
            str(run.metrics), supervised_tokens=supervised, extra=metric_keys(scorer.names)
        ),
        "completions": CompletionsWriter(run.completions, scorer, g.log_completions),
        "curve": LossCurve(
            run.metrics, run.loss_curve, title=f"{run.path.name}: GRPO {cfg.model.name_or_path}"
        ),
        "guard": RewardGuard(cfg),
        "stop": GracefulStop(),
        "progress": ProgressBar(),
        "finite": NonFiniteGuard(cfg, run, precision),
    }
    # Every stop token ends a completion in TRL's own accounting too (clipped share, masking after the end).
    model.generation_config.eos_token_id = stop_token_ids(tok, fmt.eot_id)
    dataset = Dataset.from_dict(
        {"prompt": [fmt.prompt(q.message, q.system) for q in questions], "qid": list(range(len(questions)))}
    )
    with warnings.catch_warnings():
        # transformers 5 renamed gradient_checkpointing, which TRL 1.x still sets; rollout_func is TRL's public,
        # experimental sampling hook (pinned by tests/test_grpo.py): neither is the user's concern.
        warnings.filterwarnings(
            "ignore", message=".*gradient_checkpointing` is deprecated", category=FutureWarning
        )
        warnings.filterwarnings("ignore", message=".*'rollout_func'.*experimental", category=UserWarning)
        args = grpo_config(
            cfg, run, device=device, precision=precision, backend=backend, checkpointing=checkpointing,
            reward_weights=[scorer.weights[n] for n in scorer.names],
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=scorer.functions(),
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            peft_config=peft_config,
            callbacks=list(cbs.values()),
            rollout_func=make_rollout(cfg, fmt, stats) if backend == "hf" else None,
        )
    trainer.remove_callback(ProgressCallback)
    # thinktune's CPU kernels: the one-pass head for the completions' log-probabilities (at the sampling
    # temperature, as TRL's head), the LoRA projections for training and sampling.
    fast_path(cfg, trainer.model, device, temperature=g.temperature)
    cbs["scorer"] = scorer
    return trainer, cbs
