"""Where a path typed into the page may point: inside the runs folder, or (data files, models, benchmarks) inside
the folders the server was started with. ``..``, absolute paths elsewhere and symlinks that lead out are refused
with :class:`~thinktune.errors.PathRefused`, naming the path and the allowed folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from thinktune.errors import PathRefused

#: data.source values that are not local paths (the bundled sample, ModelScope ids)
NON_PATH_SOURCES = ("sample", "sample:en", "sample:zh")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_inside(text: str, roots: Sequence[Path], what: str, *, must_exist: bool = True) -> Path:
    """`text` as a path inside one of `roots` (relative paths are taken from the first root), fully resolved
    (symlinks followed), or PathRefused."""
    if not text or "\x00" in text:
        raise PathRefused(f"{what}: an empty path or one with a NUL byte is not a path")
    roots = [Path(r).resolve() for r in roots]
    raw = Path(os.path.expanduser(text))
    if ".." in raw.parts:
        raise PathRefused(f"{what}: {text!r} contains '..'; give a path inside {_names(roots)}")
    candidate = raw if raw.is_absolute() else roots[0] / raw
    resolved = candidate.resolve()
    if not any(_inside(resolved, r) for r in roots):
        lexical = _lexically_inside(candidate, roots)
        how = "is a symlink that leads" if lexical else "is"
        raise PathRefused(f"{what}: {text!r} {how} outside the allowed folders {_names(roots)}")
    if must_exist and not resolved.exists():
        raise PathRefused(f"{what}: {text!r} does not exist (looked for {resolved})")
    return resolved


def _lexically_inside(path: Path, roots: Sequence[Path]) -> bool:
    p = Path(os.path.abspath(path))
    return any(_inside(p, r) for r in roots)


def _names(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def run_folder(runs: Path, name: str) -> Path:
    """The run folder `name` (a folder name, or a path relative to the runs folder) inside `runs`."""
    path = resolve_inside(name, [runs], "run", must_exist=True)
    if path == runs.resolve() or not (path / "config.yaml").is_file():
        raise PathRefused(f"run: {name!r} is not a run folder under {runs} (no config.yaml)")
    return path


def looks_local(text: str, base: Path | None = None) -> bool:
    """Whether a model or data value names a local file or folder rather than a hub id or a built-in name:
    it exists here, is absolute, starts with ./ or ~, or has a file suffix."""
    if text in NON_PATH_SOURCES or text.startswith(("pkg:", "ms:", "hf:")):
        return False
    p = Path(os.path.expanduser(text))
    if p.is_absolute() or text.startswith(("./", "~", "../")) or ".." in p.parts:
        return True
    if p.suffix.lower() in (
        ".json",
        ".jsonl",
        ".parquet",
        ".csv",
        ".gguf",
        ".yaml",
        ".yml",
        ".jinja",
        ".txt",
    ):
        return True
    return p.exists() or (base is not None and (base / p).exists())


def check_value(text: str | None, roots: Sequence[Path], what: str) -> str | None:
    """A model/data/benchmark value: local paths must be inside `roots` and are returned absolute; hub ids, `pkg:`
    assets and `sample` pass unchanged."""
    if not text:
        return text
    if not looks_local(text, Path(roots[0])):
        return text
    return str(resolve_inside(text, roots, what, must_exist=True))
