"""`thinktune grpo` and `thinktune dpo`: the reinforcement stage after SFT."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from thinktune.commands.common import EPILOG_OVERRIDES, add_settings, add_verbose, finished_run, split_target
from thinktune.errors import UsageError

log = logging.getLogger("thinktune")

TARGET_HELP = (
    "Give the SFT run folder to continue (its base model, adapter, formatter and template), then optionally a "
    "config file or recipe for the stage's settings, then section.key=value overrides. Without a run folder, a "
    "config (grpo.init_from / dpo.init_from names the starting run or adapter; null: a fresh LoRA)."
)


def stage_config(args: argparse.Namespace, stage: str):
    """The configuration of a `grpo`/`dpo` command: --resume's saved config, or RUN_DIR + CONFIG + overrides
    (defaults < CONFIG < the run's model, LoRA and prompt settings < overrides)."""
    from thinktune.config import validate
    from thinktune.configfile import apply_overrides, load_config
    from thinktune.rundir import RunDir
    from thinktune.train.rl import from_run

    if args.resume and not args.settings:
        return RunDir.open(args.resume).config()  # a config given too must match it (checked on reopening)
    run_dir, config, overrides = split_target(args.settings or [])
    if run_dir is None and config is None:
        raise UsageError(
            f"give the SFT run to continue, e.g. `thinktune {stage} runs/demo data.source=sample:mcq`, or a config "
            f"file or recipe (or --resume RUN_DIR); `thinktune recipes` lists the recipes"
        )
    cfg = load_config(config)
    if run_dir is not None:
        run = RunDir.open(run_dir)
        given = cfg.model.name_or_path
        cfg = from_run(run, cfg)
        if given and given != cfg.model.name_or_path:
            log.warning(
                "%s sets model.name_or_path=%s, but the run %s was trained on %s: the run's model is used",
                config, given, run_dir, cfg.model.name_or_path,
            )  # fmt: skip
        getattr(cfg, stage).init_from = str(run.path)
    apply_overrides(cfg, overrides)
    return validate(cfg)


# ------------------------------------------------------------------------------------------ grpo


def add_grpo(sub) -> Callable:
    p = sub.add_parser(
        "grpo",
        help="reinforcement after SFT: GRPO with verifiable medical rewards (right option, format, length)",
        description="GRPO (TRL's GRPOTrainer) on verifiable problems: multiple-choice rows (question, options, "
        "answer_idx) or open-ended rows with a reference answer. Continues an SFT run's LoRA (its base model, "
        "formatter and template) or trains a fresh one. Each prompt is rendered as `thinktune eval` renders it; "
        "each sampled completion is rewarded for the right option (the grader eval uses), the trained format "
        "(think block closed, an answer naming one option, end-of-turn) and a soft length limit, each logged "
        "apart. Warns when the rewards give no learning signal or completions are cut; stops on NaN. Writes a "
        "run folder of the same shape as `train` (plus completions.jsonl), so eval, compare, report, export and "
        "chat work on it. Ctrl-C saves a checkpoint; --resume continues from it. " + TARGET_HELP,
        epilog="examples:\n  thinktune grpo runs/demo data.source=sample:mcq train.max_steps=20\n"
        "  thinktune grpo runs/my-sft grpo-r1-distill-qwen-1.5b\n"
        "  thinktune grpo runs/my-sft grpo.num_generations=4 grpo.max_completion_length=768 eval.benchmarks=[medqa.jsonl]\n"
        "  thinktune grpo --resume runs/<name>\n" + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    add_settings(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this GRPO run from its latest checkpoint")
    return _run_grpo


def _run_grpo(args: argparse.Namespace) -> int:
    from thinktune.train.grpo import grpo

    cfg = stage_config(args, "grpo")
    return finished_run(grpo(cfg, resume=args.resume))


# ------------------------------------------------------------------------------------------ dpo


def add_dpo(sub) -> Callable:
    p = sub.add_parser(
        "dpo",
        help="the cheaper reinforcement: DPO on the model's own right and wrong sampled answers",
        description="Offline DPO (TRL's DPOTrainer): sample dpo.samples answers per training question with "
        "thinktune's batched generator (seeded), grade them with the grader `eval` uses, keep pairs of one right "
        "and one wrong answer (the run reports how many questions gave a pair) and train the SFT run's LoRA "
        "against its frozen starting copy. No generation during training, so it fits where GRPO does not. The "
        "same run folder and downstream commands as `train`. " + TARGET_HELP,
        epilog="examples:\n  thinktune dpo runs/demo data.source=sample:mcq\n"
        "  thinktune dpo runs/my-sft dpo-r1-distill-qwen-1.5b\n"
        "  thinktune dpo --resume runs/<name>\n" + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    add_settings(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this DPO run from its latest checkpoint")
    return _run_dpo


def _run_dpo(args: argparse.Namespace) -> int:
    from thinktune.train.dpo import dpo

    cfg = stage_config(args, "dpo")
    return finished_run(dpo(cfg, resume=args.resume))
