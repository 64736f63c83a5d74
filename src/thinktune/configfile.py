"""Config files and dotted overrides -> a :class:`~thinktune.config.Config`, and the reference generated from it.

A config (or a recipe, by name) is YAML with the sections of :mod:`thinktune.config`; any field can be
overridden on the command line, later wins (defaults < file < overrides):

    thinktune train medical-o1-r1-distill-qwen-1.5b train.learning_rate=1e-4 data.max_length=2048

An unknown section or key is an error that suggests the nearest valid one; a value is converted to the field's
type or refused with the key named. :func:`~thinktune.config.validate` checks the cross-field rules afterwards.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from thinktune.config import Config
from thinktune.errors import ConfigError

_SECTION_TYPES = typing.get_type_hints(Config)


def iter_fields() -> typing.Iterator[tuple[str, dataclasses.Field, Any]]:
    """Yield (dotted name, field, type) for every config field, in declaration order."""
    for section, cls in _SECTION_TYPES.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield f"{section}.{f.name}", f, hints[f.name]


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def describe_fields() -> list[tuple[str, str, Any, str]]:
    """(dotted name, type, default, help) for every field: the one source for `thinktune config` and docs."""
    return [(name, _type_name(tp), _default_of(f), f.metadata["help"]) for name, f, tp in iter_fields()]


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _yaml_value(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: could not read {text!r}: {e}") from None


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        if isinstance(value, str) and str in args and not ("," in value or value.strip().startswith("[")):
            return value  # text stays text ("all-linear", "none"); only list-looking text becomes a list
        errors = []
        # Try the more specific types first so "8" becomes an int, not a str.
        for a in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(
            f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}.{_suggest(str(value), map(str, args))}"
        )
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return value  # keep ints as ints: val_size 100 means a count, 0.1 a fraction
        if isinstance(value, str):
            try:
                v = float(value)
            except ValueError:
                pass
            else:
                return int(v) if v.is_integer() and "." not in value and "e" not in value.lower() else v
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected text, got {value!r}")
    if origin is list:
        (item,) = args
        if isinstance(value, str) and value.strip().startswith("["):
            value = _yaml_value(value, where)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if "," in value else [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = _yaml_value(value, where) if value.strip() else {}
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where}: expected a mapping such as {{question: Q, answer: A}}, got {value!r}"
            )
        k_tp, v_tp = args
        return {_coerce(k, k_tp, where): _coerce(v, v_tp, f"{where}.{k}") for k, v in value.items()}
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover - programming error


def _set(cfg: Config, dotted: str, value: Any, origin: str) -> None:
    parts = dotted.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"{origin}: {dotted!r} is not a `section.key` setting (sections: {', '.join(_SECTION_TYPES)})."
        )
    section, key = parts
    if section not in _SECTION_TYPES:
        raise ConfigError(f"{origin}: unknown section {section!r}.{_suggest(section, _SECTION_TYPES)}")
    hints = typing.get_type_hints(_SECTION_TYPES[section])
    if key not in hints:
        all_keys = [n for n, _, _ in iter_fields()]
        suggestion = _suggest(key, hints) or _suggest(dotted, all_keys)
        raise ConfigError(
            f"{origin}: unknown key {dotted!r}.{suggestion} See `thinktune config` for every key."
        )
    setattr(getattr(cfg, section), key, _coerce(value, hints[key], dotted))


def parse_override(text: str) -> tuple[str, str]:
    """`data.max_length=2048` -> ("data.max_length", "2048"); the text is converted by the field's type."""
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} must look like section.key=value, e.g. train.learning_rate=1e-4"
        )
    key, raw = text.split("=", 1)
    return key.strip(), raw


# ------------------------------------------------------------------------------------------ recipes

#: The recipes shipped inside the package, runnable by name from an installed wheel.
RECIPES = Path(__file__).parent / "configs"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The packaged recipe called `name` (e.g. ``demo-cpu``), or a ConfigError naming the nearest ones."""
    path = RECIPES / f"{name.removesuffix('.yaml')}.yaml"
    if path.is_file():
        return path
    raise ConfigError(
        f"{name!r} is neither a config file nor a recipe.{_suggest(name, recipe_names())} Recipes: "
        f"{', '.join(recipe_names())} (`thinktune recipes` describes them)."
    )


def recipe_summary(path: Path) -> tuple[str, str]:
    """(the command the recipe is run with, its one-line description): the first two comment lines."""
    lines = [
        line[1:].strip() for line in path.read_text(encoding="utf-8").splitlines()[:2] if line.startswith("#")
    ]
    return (lines[0] if lines else ""), (lines[1] if len(lines) > 1 else "")


def resolve_config(path_or_name: str | Path) -> Path:
    """A config file path as given, or the packaged recipe of that name."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise ConfigError(
            f"config file {str(path)!r} does not exist. Recipes can be named instead: {', '.join(recipe_names())} "
            "(`thinktune recipes copy NAME` writes one out to edit)."
        )
    return recipe_path(str(path_or_name))


# ------------------------------------------------------------------------------------------ loading


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults < YAML file (a path, or a recipe name) < dotted overrides. Raises ConfigError; call
    :func:`~thinktune.config.validate` afterwards."""
    cfg = Config()
    if path is not None:
        path = resolve_config(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected sections such as `model:` and `data:` at the top level.")
        for section, values in raw.items():
            if section not in _SECTION_TYPES:
                raise ConfigError(
                    f"{path}: unknown section {section!r}.{_suggest(str(section), _SECTION_TYPES)}"
                )
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping of key: value.")
            for key, value in values.items():
                _set(cfg, f"{section}.{key}", value, str(path))
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: Config, overrides: typing.Sequence[str]) -> Config:
    """Dotted overrides (``train.learning_rate=1e-4``) applied to `cfg` in place, later wins; returns `cfg`."""
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value, "command line")
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def from_dict(raw: dict[str, Any]) -> Config:
    """Rebuild a Config from `to_dict()` output (e.g. a run folder's config.yaml)."""
    cfg = Config()
    for section, values in raw.items():
        for key, value in (values or {}).items():
            _set(cfg, f"{section}.{key}", value, "config.yaml")
    return cfg


def fields_markdown() -> str:
    """The configuration reference as Markdown (docs/config.md is generated from this)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `src/thinktune/config.py` by `thinktune config --markdown`.",
        "",
    ]
    current = None
    for name, tp, default, help_ in describe_fields():
        section = name.split(".")[0]
        if section != current:
            lines += [
                "",
                f"## `{section}`",
                "",
                "| key | type | default | what it does |",
                "|---|---|---|---|",
            ]
            current = section
        lines.append(f"| `{name}` | `{tp}` | `{default!r}` | {help_} |")
    return "\n".join(lines) + "\n"
