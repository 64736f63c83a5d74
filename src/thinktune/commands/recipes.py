"""`thinktune recipes`: the recipes shipped inside the package, listed, shown, or copied out for editing."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from thinktune.commands.common import add_verbose
from thinktune.errors import UsageError


def add_recipes(sub) -> Callable:
    p = sub.add_parser(
        "recipes",
        help="the recipes shipped with thinktune: list them, show one, or copy one out to edit",
        description="Recipes are config files that ship inside the package, so they run by name from any "
        "installed copy: `thinktune train NAME`, `thinktune config NAME`, `thinktune inspect-data NAME`. Without "
        "arguments: one line per recipe. `show NAME` prints one; `copy NAME [DEST]` writes it to DEST (a file or "
        "a folder; default ./NAME.yaml), never over an existing file.",
        epilog="examples:\n  thinktune recipes\n  thinktune recipes show medical-o1-r1-distill-qwen-1.5b\n"
        "  thinktune recipes copy demo-cpu my-demo.yaml && thinktune train my-demo.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    p.add_argument("action", nargs="?", choices=["list", "show", "copy"], default="list")
    p.add_argument("name", nargs="?", metavar="NAME", help="a recipe name (show, copy)")
    p.add_argument(
        "dest", nargs="?", metavar="DEST", help="copy: the file or folder to write (default ./NAME.yaml)"
    )
    return _run_recipes


def _run_recipes(args: argparse.Namespace) -> int:
    from thinktune.configfile import recipe_names, recipe_path, recipe_summary
    from thinktune.utils import atomic_write_text

    if args.action == "list":
        if args.name:
            raise UsageError("`thinktune recipes` lists them all; use `thinktune recipes show NAME` for one")
        names = recipe_names()
        width = max(map(len, names))
        for name in names:
            command, description = recipe_summary(recipe_path(name))
            print(f"{name:<{width}}  {description}\n{'':<{width}}  run: {command}")
        return 0
    if not args.name:
        raise UsageError(f"`thinktune recipes {args.action}` needs a recipe name, e.g. demo-cpu")
    source = recipe_path(args.name)
    text = source.read_text(encoding="utf-8")
    if args.action == "show":
        if args.dest:
            raise UsageError("`show` prints to the terminal; use `copy NAME DEST` to write a file")
        print(text, end="")
        return 0
    dest = Path(args.dest) if args.dest else Path(source.name)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists():
        raise UsageError(f"{dest} already exists; choose another DEST (nothing was overwritten)")
    atomic_write_text(dest, text)
    print(f"wrote {dest}: edit it, then run  thinktune train {dest}")
    return 0
