"""The new-run form and every command the page runs.

The form is generated from the configuration schema itself (:func:`thinktune.configfile.describe_fields`: every
key, its type, default and help), so the page cannot drift from `thinktune config`. A form is a base (a recipe by
name, or a run's config.yaml) plus the values the user changed; those become dotted overrides, go through the
same loader and validator as the CLI (so the errors are the CLI's), and the command shown before Start is the
argument list that runs (:func:`train_command`; never a shell line).
"""

from __future__ import annotations

import re
import sys
import typing
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from thinktune.config import Config, validate
from thinktune.configfile import (
    describe_fields,
    iter_fields,
    load_config,
    recipe_names,
    recipe_path,
    recipe_summary,
)
from thinktune.errors import ConfigError, UIError
from thinktune.rundir import RunDir
from thinktune.ui.paths import check_value, run_folder
from thinktune.utils import check_file_name, slug

#: fields the page sets itself: every run goes under --runs, with the name the page reserved
FIXED = ("train.output_dir",)
#: settings whose local paths must lie inside the allowed data folders
PATH_FIELDS = ("model.name_or_path", "model.tokenizer", "data.source", "model.chat_template")
#: fields the data doctor and the memory plan depend on (the page refreshes them when one changes)
DOCTOR_FIELDS = ("model.", "data.")
PLAN_FIELDS = (
    "model.",
    "data.max_length",
    "data.source",
    "lora.",
    "train.per_device_train_batch_size",
    "train.gradient_accumulation_steps",
    "train.gradient_checkpointing",
    "train.optim",
    "train.padding_free",
)


def thinktune_argv(*args: str) -> list[str]:
    """The command line of a thinktune command, run by this Python (so the page runs the thinktune it came with)."""
    return [sys.executable, "-m", "thinktune", *args]


def _choices(tp: Any) -> list[Any] | None:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return list(typing.get_args(tp))
    if tp is bool:
        return [True, False]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        inner = _choices(args[0])
        return inner
    return None


def _optional(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def render(value: Any) -> str:
    """A value as the text the form shows; the loader reads the text back to the same value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    return str(value)


def schema() -> list[dict[str, Any]]:
    """Every config field for the form: name, section, type, default (as text), help, choices, optional."""
    types = {name: tp for name, _, tp in iter_fields()}
    out = []
    for name, type_name, default, help_ in describe_fields():
        choices = _choices(types[name])
        out.append(
            {
                "name": name,
                "section": name.split(".")[0],
                "type": type_name,
                "default": render(default),
                "help": help_,
                "choices": [render(c) for c in choices] if choices else None,
                "optional": _optional(types[name]),
                "fixed": name in FIXED,
            }
        )
    return out


def recipes() -> list[dict[str, str]]:
    out = []
    for name in recipe_names():
        command, description = recipe_summary(recipe_path(name))
        out.append({"name": name, "command": command, "description": description})
    return out


# ------------------------------------------------------------------------------------------ base + values


def base_path(runs: Path, base: dict[str, Any]) -> Path:
    """{"recipe": NAME} -> the packaged recipe; {"run": NAME} -> that run's config.yaml (inside --runs)."""
    if base.get("recipe"):
        return recipe_path(str(base["recipe"]))
    if base.get("run"):
        return run_folder(runs, str(base["run"])) / "config.yaml"
    raise UIError("base: pick a recipe or a run to start from")


def base_values(path: Path) -> dict[str, str]:
    cfg = load_config(path)
    d = cfg.to_dict()
    return {name: render(d[name.split(".")[0]][name.split(".")[1]]) for name, *_ in describe_fields()}


def overrides_for(path: Path, values: dict[str, Any], roots: Sequence[Path]) -> list[str]:
    """The dotted overrides for the values that differ from the base (paths checked and made absolute)."""
    base = base_values(path)
    known = set(base)
    types = {name: tp for name, _, tp in iter_fields()}
    unknown = [name for name in values if name not in known]
    if unknown:
        load_config(None, [f"{unknown[0]}=x"])  # raises the CLI's message, with its suggestion
    out = []
    for name in base:  # in the schema's order, whatever order the page sent them in
        if name not in values:
            continue
        raw = values[name]
        if name in FIXED:
            continue
        text = render(raw) if not isinstance(raw, str) else raw
        if text == base[name]:
            continue
        if "\n" in text and name != "data.text_template" and name != "model.chat_template":
            raise ConfigError(f"{name}: a value on one line, please (got {len(text.splitlines())} lines)")
        if text == "" and _optional(types[name]):
            text = "null"  # an emptied optional field: unset
        if name in PATH_FIELDS and text != "null":
            text = check_value(text, roots, name) or text
        out.append(f"{name}={text}")
    return out


def resolve(
    runs: Path, base: dict[str, Any], values: dict[str, Any], roots: Sequence[Path]
) -> tuple[Path, list[str], Config]:
    """(base file, overrides, the validated config) or ConfigError/PathRefused with the CLI's message."""
    path = base_path(runs, base)
    overrides = overrides_for(path, values, roots)
    cfg = validate(load_config(path, overrides))
    return path, overrides, cfg


# ------------------------------------------------------------------------------------------ commands


def free_run_name(runs: Path, wanted: str) -> str:
    """`wanted`, or `wanted-2`, `-3`, ... as the CLI would pick (a run folder is never reused)."""
    check_file_name(wanted, "train.run_name")
    stem = slug(wanted)
    for i in range(1, 10_000):
        name = stem if i == 1 else f"{stem}-{i}"
        if not (runs / name).exists():
            return name
    raise UIError(f"no free run name for {wanted!r} under {runs}")  # pragma: no cover


def default_run_name(cfg: Config) -> str:
    model = cfg.model.name_or_path.rstrip("/").split(":")[-1].split("/")[-1]
    return (
        f"{slug(Path(model).stem, 32)}-{slug(Path(cfg.data.source).stem, 24)}-{datetime.now():%Y%m%d-%H%M%S}"
    )


def train_command(
    runs: Path, base: dict[str, Any], values: dict[str, Any], roots: Sequence[Path]
) -> dict[str, Any]:
    """The exact argument list Start runs, the run folder it will write, and the validated config."""
    path, overrides, cfg = resolve(runs, base, values, roots)
    wanted = cfg.train.run_name or default_run_name(cfg)
    name = free_run_name(runs, wanted)
    overrides = [o for o in overrides if not o.startswith("train.run_name=")]
    argv = thinktune_argv(
        "train", str(path), *overrides, f"train.output_dir={runs}", f"train.run_name={name}"
    )
    return {"argv": argv, "run": name, "config": cfg}


def inspect_command(
    runs: Path, base: dict[str, Any], values: dict[str, Any], roots: Sequence[Path]
) -> list[str]:
    """`thinktune inspect-data` on the form's config: data_report.json and the histogram into a new
    RUNS/inspect-* folder (never over an existing report)."""
    path, overrides, _ = resolve(runs, base, values, roots)
    return thinktune_argv(
        "inspect-data", str(path), *overrides, f"train.output_dir={runs}", "--no-color", "--show", "1"
    )


def resume_command(runs: Path, run: str) -> list[str]:
    """`thinktune train|grpo|dpo --resume RUN`: the command of the run's own stage."""
    folder = run_folder(runs, run)
    return thinktune_argv(RunDir(folder).read_summary().command, "--resume", str(folder))


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _limit(limit: Any) -> list[str]:
    if limit in (None, ""):
        return []
    try:
        n = int(limit)
    except (TypeError, ValueError):
        raise UIError(f"limit: {limit!r} is not a whole number of questions") from None
    if n < 1:
        raise UIError(f"limit: {n} must be at least 1 (or empty for all questions)")
    return ["--limit", str(n)]


def _benchmarks(items: Any, roots: Sequence[Path]) -> list[str]:
    if not items:
        return []
    if isinstance(items, str):
        items = [items]
    out = []
    for item in items:
        if item:
            out += [check_value(str(item), roots, "benchmark") or str(item)]
    return ["--benchmark", *out] if out else []


def eval_command(runs: Path, run: str, params: dict[str, Any], roots: Sequence[Path]) -> list[str]:
    folder = run_folder(runs, run)
    base = bool(params.get("base"))
    name = str(params.get("name") or ("base" if base else "tuned"))
    if not _NAME.match(name):
        raise UIError(f"name: {name!r}: use letters, digits, '.', '_' or '-' (results are eval_<name>.json)")
    # never over an existing result: the next free name
    stem, i = name, 1
    while (folder / f"eval_{name}.json").exists() or (folder / f"eval_{name}.jsonl").exists():
        i += 1
        name = f"{stem}-{i}"
    args = ["eval", str(folder), *(["--base"] if base else []), "--name", name]
    return thinktune_argv(*args, *_benchmarks(params.get("benchmark"), roots), *_limit(params.get("limit")))


def compare_command(runs: Path, run: str, params: dict[str, Any], roots: Sequence[Path]) -> list[str]:
    folder = run_folder(runs, run)
    if (folder / "compare.json").exists() or (folder / "compare.jsonl").exists():
        raise UIError(
            f"{folder / 'compare.json'} already exists and is never overwritten from the page; run "
            f"`thinktune compare {folder} --overwrite` yourself to replace it"
        )
    return thinktune_argv(
        "compare", str(folder), *_benchmarks(params.get("benchmark"), roots), *_limit(params.get("limit"))
    )


def export_command(runs: Path, run: str, params: dict[str, Any]) -> list[str]:
    folder = run_folder(runs, run)
    fmt = params.get("format")
    if fmt not in ("merged", "ollama", "gguf"):
        raise UIError(f"format: {fmt!r} is not one of merged, ollama, gguf")
    args = ["export", str(folder), "--format", fmt]
    if fmt == "gguf":
        gguf_type = params.get("gguf_type") or "f16"
        if gguf_type not in ("f16", "q8_0"):
            raise UIError(f"gguf_type: {gguf_type!r} is not one of f16, q8_0")
        args += ["--gguf-type", gguf_type]
        out = folder / "export" / f"gguf-{gguf_type}"
    else:
        out = folder / "export" / fmt
    if out.exists():
        raise UIError(
            f"{out} already exists and is never overwritten from the page; remove it yourself first"
        )
    return thinktune_argv(*args)


def report_command(runs: Path, run: str) -> list[str]:
    return thinktune_argv("report", str(run_folder(runs, run)))
