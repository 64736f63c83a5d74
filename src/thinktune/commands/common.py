"""What every command shares: the config-file-plus-overrides positional, its loading, the usage error."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

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


def add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "settings",
        nargs="*",
        metavar="CONFIG.yaml | section.key=value",
        help="optional config file, then dotted overrides",
    )
