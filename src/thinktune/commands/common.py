"""What every command shares: the config-or-recipe positional with dotted overrides, a run folder positional,
`-v` after the subcommand, and loading the configuration from all of them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from thinktune.errors import UsageError

EPILOG_OVERRIDES = (
    "Any setting can be overridden after the config file or recipe as section.key=value, e.g. "
    "data.max_length=2048 train.learning_rate=1e-4. `thinktune config` lists every key."
)


def add_verbose(p: argparse.ArgumentParser) -> None:
    """`-v` after the subcommand as well as before it (SUPPRESS: absent here, the top-level value stands)."""
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")


def split_positional(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """[CONFIG.yaml | RECIPE] [section.key=value ...] -> (config path or recipe name, overrides)."""
    config, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config is None:
            config = item  # a file, or a recipe name: configfile.resolve_config says which, or what is wrong
        else:
            raise UsageError(
                f"unexpected argument {item!r}: give one config file or recipe, then section.key=value overrides"
            )
    return config, overrides


def split_target(items: Sequence[str]) -> tuple[str | None, str | None, list[str]]:
    """[RUN_DIR] [CONFIG.yaml | RECIPE] [section.key=value ...] -> (run folder, config, overrides)."""
    run, config, overrides = None, None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif run is None and Path(item).is_dir():
            run = item
        elif config is None and not Path(item).is_dir():
            config = item
        else:
            raise UsageError(
                f"unexpected argument {item!r}: give a run folder or a config file (or recipe), then "
                "section.key=value overrides"
            )
    return run, config, overrides


def load_cli_config(args: argparse.Namespace, flag_overrides: dict[str, object], **need: bool):
    """Defaults < YAML (or recipe) < dotted overrides < explicit flags; then validate everything at once."""
    from thinktune.config import validate
    from thinktune.configfile import load_config

    path, overrides = split_positional(getattr(args, "settings", []) or [])
    overrides += [f"{k}={v}" for k, v in flag_overrides.items() if v is not None]
    return validate(load_config(path, overrides), **need)


def add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "settings",
        nargs="*",
        metavar="CONFIG.yaml | RECIPE | section.key=value",
        help="a config file or a recipe name (`thinktune recipes`), then dotted overrides",
    )


def finished_run(run) -> int:
    """What `train`, `grpo` and `dpo` print when the run ends, and their exit code: how to resume an interrupted
    run (130 for Ctrl-C, 143 for SIGTERM), else where everything is and what to run next."""
    from thinktune.utils import is_main_process

    if not is_main_process():
        return 0
    summary = run.read_summary()
    if summary.status == "interrupted":
        print(
            f"interrupted ({summary.signal}) at step {summary.steps}; checkpoint: "
            f"{summary.checkpoint}\nresume with: {summary.resume_hint}",
            file=sys.stderr,
        )
        return 143 if summary.signal == "SIGTERM" else 130
    print(f"run folder: {run.path}")
    print(f"adapter:    {run.adapter}")
    print(f"loss curve: {run.loss_curve}")
    print(
        f"next:       thinktune eval {run.path}   |   thinktune compare {run.path}   |   thinktune report {run.path}"
    )
    return 0
