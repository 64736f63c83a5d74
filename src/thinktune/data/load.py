"""Load a source into checked, deduplicated `Example`s, and split them into train and validation.

    from thinktune.data.load import load_configured, split_examples
    loaded = load_configured(cfg.data)              # every bad row reported with its file and row number
    train, val = split_examples(loaded.examples, val_size=0.1, seed=42)

Rows come from :mod:`thinktune.data.sources` and are mapped by :mod:`thinktune.data.schemas`. Bad rows are
skipped and listed (or stop the load with ``on_bad_row: error``); duplicates are dropped and counted. Nothing
is dropped silently.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from thinktune.data.reasoning import MarkupError
from thinktune.data.schemas import Example, detect_schema, row_to_example
from thinktune.data.sources import UNDECODABLE, RowError, read_rows, undecodable
from thinktune.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class BadRow:
    source: str
    row: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}, row {self.row}: {self.reason}"


@dataclass
class LoadResult:
    examples: list[Example]
    schema: str
    source: str
    rows_read: int
    bad_rows: list[BadRow] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (row, row it duplicates)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "schema": self.schema,
            "rows_read": self.rows_read,
            "examples": len(self.examples),
            "bad_rows": [{"row": b.row, "reason": b.reason} for b in self.bad_rows],
            "duplicates_removed": len(self.duplicates),
            "duplicate_rows": [{"row": r, "duplicate_of_row": o} for r, o in self.duplicates],
            "without_reasoning": sum(1 for e in self.examples if not e.reasoning),
        }


def load_examples(
    source: str,
    *,
    config_name: str | None = None,
    split: str = "train",
    schema: str = "auto",
    columns: Mapping[str, str] | None = None,
    on_bad_row: str = "skip",
    system_prompt: str | None = None,
    keep: Sequence[str] = (),
    reserved: Sequence[str] = (),
) -> LoadResult:
    """Read, validate and deduplicate a source. `keep` names extra columns copied into `Example.meta`;
    `reserved` lists control-token texts (``Formatter.reserved``) that make a row bad wherever they occur."""
    name, rows = read_rows(source, config_name, split)
    columns = dict(columns or {})
    if columns and schema == "auto":
        schema = "columns"
    examples: list[Example] = []
    bad: list[BadRow] = []
    dups: list[tuple[int, int]] = []
    seen: dict[tuple, int] = {}
    rows_read = 0
    for rowno, row in rows:
        rows_read += 1
        if isinstance(row, RowError):
            bad.append(BadRow(name, rowno, str(row)))
            continue
        if schema == "auto":
            schema = detect_schema(list(row.keys()), name)
            log.info("%s: detected schema %r", name, schema)
            if schema == "thinktune":
                schema = "columns"
                columns = {k: k for k in ("question", "reasoning", "answer", "system") if k in row}
        try:
            if undecodable(row):
                raise RowError(UNDECODABLE)
            ex = row_to_example(row, schema, columns, reserved)
        except (RowError, MarkupError) as e:
            bad.append(BadRow(name, rowno, str(e)))
            continue
        system = ex.system if ex.system is not None else system_prompt
        meta = {"row": rowno, **{k: row[k] for k in keep if k in row}}
        ex = Example(ex.question, ex.reasoning, ex.answer, system, meta)
        key = (ex.system, ex.question, ex.reasoning, ex.answer)
        if key in seen:
            dups.append((rowno, seen[key]))
            continue
        seen[key] = rowno
        examples.append(ex)
    if schema == "auto":
        schema = "unknown"
    result = LoadResult(examples, schema, name, rows_read, bad, dups)
    for b in bad[:20]:
        log.warning("skipped %s", b)
    if len(bad) > 20:
        log.warning("... and %d more bad rows (all listed in data_report.json)", len(bad) - 20)
    if dups:
        log.info(
            "%s: removed %d duplicate examples (first: row %d repeats row %d)", name, len(dups), *dups[0]
        )
    if bad and on_bad_row == "error":
        listed = "\n  ".join(str(b) for b in bad[:20]) + (
            f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        )
        raise DataError(
            f"{len(bad)} bad rows in {name} (data.on_bad_row=error):\n  {listed}\n"
            "Fix them, or set data.on_bad_row=skip to drop them (they are listed in data_report.json)."
        )
    if not examples:
        detail = f" ({len(bad)} bad rows; first: {bad[0]})" if bad else ""
        raise DataError(f"{name}: no usable examples{detail}.")
    return result


def load_configured(d: Any, source: str | None = None, **overrides: Any) -> LoadResult:
    """:func:`load_examples` with the settings of a config's data section (`thinktune.config.DataConfig`):
    its source (or `source`), split, schema, columns, bad-row policy and system prompt; `overrides` win."""
    options: dict[str, Any] = {
        "config_name": d.config_name,
        "split": d.split,
        "schema": d.schema,
        "columns": d.columns,
        "on_bad_row": d.on_bad_row,
        "system_prompt": d.system_prompt,
    }
    return load_examples(source or d.source, **{**options, **overrides})


def split_examples(
    examples: Sequence[Example],
    *,
    val_size: float,
    seed: int,
    shuffle: bool = True,
    max_examples: int | None = None,
) -> tuple[list[Example], list[Example]]:
    """Seeded shuffle -> max_examples -> train/validation split. Same inputs, same split, on any machine."""
    items = list(examples)
    if shuffle:
        random.Random(seed).shuffle(items)
    if max_examples is not None:
        items = items[:max_examples]
    n = len(items)
    if isinstance(val_size, float) and not val_size.is_integer():
        n_val = round(n * val_size)
        n_val = max(1, n_val) if n >= 2 else 0
    else:
        n_val = int(val_size)
    if n_val >= n and n_val > 0:
        raise DataError(f"data.val_size={val_size!r} leaves no training examples out of {n}; lower it.")
    return items[n_val:], items[:n_val]
