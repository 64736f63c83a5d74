"""What the reinforcement stages (:mod:`thinktune.train.grpo`, :mod:`thinktune.train.dpo`) share: where they start,
the verifiable problems they train on, and the policy model.

- :func:`starting_point`: the SFT run folder (or adapter folder) in ``grpo.init_from`` / ``dpo.init_from``: its
  adapter is continued (the same LoRA, trainable), and its tokenizer, saved beside the adapter with the exact chat
  template of training, renders every prompt; or nothing, for a fresh LoRA on the base model.
- :func:`prepare_problems`: verifiable problems from the configured source (:mod:`thinktune.evals.problems`),
  refused when a question overlaps an evaluation set named in ``eval.benchmarks`` (64 consecutive normalized
  characters, :mod:`thinktune.data.overlap`), split into train and held-out questions (seeded, like SFT data),
  rendered through the one Formatter exactly as `eval` renders them, with prompts over the length limit dropped
  and listed; the data report and ``data/*.jsonl`` are written from it.
- :func:`load_policy`: the base model as SFT loaded it (precision, attention, 4-bit for QLoRA) with the starting
  adapter made trainable, or the base plus the LoraConfig for a fresh adapter.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from thinktune.config import Config
from thinktune.data.load import split_examples
from thinktune.data.overlap import OVERLAP_CHARS, OverlapIndex
from thinktune.errors import DataError, TrainError
from thinktune.evals.mcq import Question, load_questions
from thinktune.evals.problems import ProblemSet, from_examples, load_problems, to_example
from thinktune.formatting.formatter import Formatter
from thinktune.models.loading import load_adapter, load_model, load_tokenizer
from thinktune.models.qlora import prepare_kbit_model, quantization_config
from thinktune.rundir import RunDir, save_examples
from thinktune.train import runfolder
from thinktune.train.trainer import lora_config, num_blocks
from thinktune.utils import quantiles, write_json

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ where to start


@dataclass(frozen=True)
class Start:
    """The adapter a stage continues (None: a fresh LoRA) and the SFT run it came from, when it is a run."""

    adapter: Path | None = None
    run: RunDir | None = None

    @property
    def origin(self) -> str | None:
        """What summary.json records as ``init_from``: the SFT run folder, else the adapter folder."""
        where = self.run.path if self.run is not None else self.adapter
        return str(where) if where else None

    @property
    def label(self) -> str:
        if self.run is not None:
            return f"the SFT run {self.run.path}"
        return f"the adapter {self.adapter}" if self.adapter else "a fresh LoRA"


def starting_point(init_from: str | None, setting: str) -> Start:
    """`init_from` as a :class:`Start`: a run folder (its finished adapter), an adapter folder, or nothing."""
    if not init_from:
        return Start()
    path = Path(init_from)
    if (path / "config.yaml").is_file():
        run = RunDir.open(path)
        return Start(run.require_adapter(), run)
    if (path / "adapter_config.json").is_file():
        return Start(path, None)
    raise TrainError(
        f"{setting}={init_from!r} is neither a run folder (config.yaml) nor a PEFT adapter folder "
        "(adapter_config.json); give the SFT run to continue (e.g. runs/demo), or null for a fresh LoRA."
    )


def stage_tokenizer(cfg: Config, start: Start) -> Any:
    """The tokenizer saved beside the starting adapter (with the chat template it was trained with), else the
    configured one."""
    model = cfg.model
    if start.adapter is not None and (start.adapter / "tokenizer_config.json").is_file():
        model = replace(model, tokenizer=str(start.adapter), chat_template=None)
    return load_tokenizer(model)


def from_run(run: RunDir, cfg: Config) -> Config:
    """`cfg` continuing an SFT run: the run's model, LoRA shape and prompt settings (reasoning, system prompt,
    text template), so the policy is the run's adapter, prompted exactly as in its training."""
    saved = run.config()
    # lora.top_layers is how much of the adapter this stage trains (the rest stays as SFT left it), not its shape
    lora = replace(saved.lora, top_layers=cfg.lora.top_layers)
    out = replace(cfg, model=saved.model, lora=lora)
    out.data = replace(
        cfg.data,
        reasoning=saved.data.reasoning,
        system_prompt=saved.data.system_prompt,
        text_template=saved.data.text_template,
    )
    return out


# ------------------------------------------------------------------------------------------ problems


@dataclass
class Problems:
    train: list[Question]
    validation: list[Question]
    report: dict[str, Any] = field(default_factory=dict)


def refuse_overlap(problems: ProblemSet, benchmarks: list[str]) -> dict[str, Any] | None:
    """DataError listing the rows whose question shares :data:`OVERLAP_CHARS` consecutive normalized characters
    with a question of an evaluation set; else what was checked (None without eval.benchmarks)."""
    if not benchmarks:
        return None
    sets = load_questions(benchmarks, None)
    index = OverlapIndex(it.text for s in sets for it in s.items)
    rows = [q.row for q in problems.questions if index.overlaps(q.text)]
    if rows:
        shown = ", ".join(str(r) for r in rows[:30]) + (
            f" and {len(rows) - 30} more" if len(rows) > 30 else ""
        )
        raise DataError(
            f"{len(rows)} rows of {problems.source} share {OVERLAP_CHARS} consecutive characters (after "
            f"normalization) with a question of eval.benchmarks ({', '.join(s.name for s in sets)}): rows {shown}. "
            "A reward trained on the test set proves nothing: remove those rows from the training data, or "
            "evaluate on other benchmarks."
        )
    return {
        "benchmarks": [s.path for s in sets],
        "questions": sum(len(s.items) for s in sets),
        "overlapping": 0,
    }


def prompt_length(fmt: Formatter, q: Question) -> int:
    return len(fmt.tokenizer(fmt.prompt(q.message, q.system), add_special_tokens=False)["input_ids"])


def prepare_problems(cfg: Config, fmt: Formatter, *, max_prompt_length: int, stage: str) -> Problems:
    """Load, check (overlap), split and measure the verifiable problems; prompts over `max_prompt_length` are
    dropped and listed. Nothing is written here (the run folder may not exist yet)."""
    d = cfg.data
    loaded = load_problems(
        d.source,
        config_name=d.config_name,
        split=d.split,
        on_bad_row=d.on_bad_row,
        system_prompt=d.system_prompt,
        reserved=fmt.reserved,
    )
    overlap = refuse_overlap(loaded, list(cfg.eval.benchmarks))
    train_q, val_q = split_examples(
        loaded.questions, val_size=d.val_size, seed=d.seed, shuffle=d.shuffle, max_examples=d.max_examples
    )
    kept: dict[str, list[Question]] = {"train": [], "validation": []}
    dropped, lengths = [], []
    for split, questions in (("train", train_q), ("validation", val_q)):
        for q in questions:
            n = prompt_length(fmt, q)
            lengths.append(n)
            if n > max_prompt_length:
                dropped.append({"split": split, "row": q.row, "prompt_tokens": n})
            else:
                kept[split].append(q)
    if dropped:
        rows = ", ".join(str(x["row"]) for x in dropped[:20])
        log.warning(
            "%s.max_prompt_length=%d: %d prompts dropped (rows %s%s); listed in data_report.json",
            stage, max_prompt_length, len(dropped), rows, " ..." if len(dropped) > 20 else "",
        )  # fmt: skip
    if not kept["train"]:
        raise DataError(
            f"no training questions left: all {len(train_q)} prompts are longer than {stage}.max_prompt_length="
            f"{max_prompt_length} tokens; raise it (see data_report.json)."
        )
    report = {
        "stage": stage,
        "load": loaded.summary(),
        "template": fmt.describe(),
        "splits": {k: len(v) for k, v in kept.items()},
        "held_out": {"val_size": d.val_size, "seed": d.seed, "shuffle": d.shuffle},
        "lengths": {"prompt": quantiles([float(x) for x in lengths])} if lengths else {},
        "prompts": {"max_prompt_length": max_prompt_length, "dropped": dropped},
        "overlap": overlap,
    }
    return Problems(kept["train"], kept["validation"], report)


def stage_problems(
    cfg: Config, fmt: Formatter, dist: Any, *, stage: str, run: RunDir | None, checkpoint: str | None
) -> tuple[RunDir, Problems]:
    """A fresh run: the problems prepared (refusals before the run folder exists), then the run folder with them
    written in; a resumed one (`run`, `checkpoint`): its own questions read back. Either way the questions are
    exactly those a resumed run would read."""
    if checkpoint is not None and run is not None:
        return run, saved_problems(run)
    limit = getattr(cfg, stage).max_prompt_length
    problems = prepare_problems(cfg, fmt, max_prompt_length=limit, stage=stage)
    run = runfolder.new_run(cfg, dist, stage=stage)
    if dist.is_main_process:
        write_problems(run, problems)
    return run, as_trained(problems)


def write_problems(run: RunDir, problems: Problems) -> None:
    """data_report.json and the exact questions (data/train.jsonl, data/validation.jsonl) of the stage."""
    write_json(run.data_report, problems.report)
    save_examples(run.train_data, [to_example(q) for q in problems.train])
    if problems.validation:
        save_examples(run.validation_data, [to_example(q) for q in problems.validation])


def saved_problems(run: RunDir) -> Problems:
    """The questions of an interrupted run, read back from its folder (not from a source that may have changed)."""
    validation = run.examples("validation") if run.validation_data.is_file() else []
    return Problems(from_examples(run.examples("train"), "train"), from_examples(validation, "validation"))


def as_trained(problems: Problems) -> Problems:
    """The questions exactly as a resumed run reads them back (through the run folder's example records)."""
    return Problems(
        from_examples([to_example(q) for q in problems.train], "train"),
        from_examples([to_example(q) for q in problems.validation], "validation"),
        problems.report,
    )


# ------------------------------------------------------------------------------------------ the policy


def load_policy(
    cfg: Config, start: Start, *, device: str, precision: Any, attention: str, checkpointing: bool
) -> tuple[Any, Any]:
    """(model, LoraConfig or None): the starting adapter made trainable on the base, or the base and the
    LoraConfig for a fresh adapter (the trainer wraps it)."""
    quantization = quantization_config(cfg.model)  # None unless model.load_in_4bit
    model = load_model(
        cfg.model, device=device, precision=precision, attention=attention, quantization=quantization
    )
    if cfg.model.load_in_4bit:
        model = prepare_kbit_model(model, gradient_checkpointing=checkpointing)
    if start.adapter is not None:
        model = load_adapter(model, start.adapter, trainable=True, allow_pickle=cfg.model.allow_pickle)
        if cfg.lora.top_layers is not None:
            frozen = freeze_below(model, cfg.lora.top_layers)
            log.info(
                "lora.top_layers=%d: the adapter's last %d blocks train; %d adapter tensors below stay as SFT left them",
                cfg.lora.top_layers, cfg.lora.top_layers, frozen,
            )  # fmt: skip
        return model, None
    return model, lora_config(cfg, model)


_BLOCK = re.compile(r"\.layers\.(\d+)\.")


def freeze_below(model: Any, top: int) -> int:
    """Freeze a continued adapter's LoRA weights outside the last `top` blocks (the backward then stops at the
    lowest trainable block: faster steps); returns how many tensors were frozen."""
    blocks = num_blocks(model.get_base_model() if hasattr(model, "get_base_model") else model)
    if blocks is None or top >= blocks:
        return 0
    frozen = 0
    for name, p in model.named_parameters():
        m = _BLOCK.search(name)
        if p.requires_grad and m and int(m.group(1)) < blocks - top:
            p.requires_grad_(False)
            frozen += 1
    return frozen
