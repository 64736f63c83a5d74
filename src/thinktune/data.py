"""Data sources -> canonical `Example(question, reasoning, answer, system)`.

Sources: local .json (array or one object per line), .jsonl, .parquet, .csv; a Hugging Face dataset id
(optionally with a config name and a sliced split such as ``train[:1500]``) or a local dataset folder;
``ms:<id>`` for ModelScope; ``sample`` for the data bundled with thinktune (``sample:en``, ``sample:zh``: one
language of it).

Schemas: ``medical-o1`` (Question / Complex_CoT / Response), ``alpaca`` (instruction / input / output),
``messages`` (OpenAI role/content or ShareGPT from/value, with ``reasoning_content`` or inline
``<think>...</think>``), and ``columns`` (an explicit mapping). ``auto`` picks one from the column names.

Every problem is reported with the file and row number. Bad rows are skipped and listed (or stop the load
with ``on_bad_row: error``); duplicates are dropped and counted. Nothing is dropped silently.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinktune.errors import ThinktuneError

log = logging.getLogger(__name__)

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SAMPLE_PATH = Path(__file__).parent / "sample_data" / "medical_o1_sample.json"
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


class DataError(ThinktuneError, ValueError):
    """The data cannot be used as given; the message names the file, the rows and the fix."""


@dataclass(frozen=True)
class Example:
    """One single-turn reasoning example. `meta` carries provenance (source row) and extras (MCQ options)."""

    question: str
    reasoning: str
    answer: str
    system: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


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


# --------------------------------------------------------------------------------------------- reading


class _RowError(Exception):
    pass


def _decode(raw: bytes, source: str) -> str:
    """Decode a file, keeping undecodable bytes as surrogates so the rows holding them can be reported."""
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8) :].decode("utf-8", errors="surrogateescape")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            raise DataError(f"{source}: starts with a UTF-16 mark but is not valid UTF-16 ({e}).") from None
    return raw.decode("utf-8", errors="surrogateescape")


#: Undecodable bytes (kept by surrogateescape) and lone surrogate escapes such as "\\ud800" in JSON: neither is
#: text that can be tokenized or written back as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNDECODABLE = (
    "undecodable bytes (not UTF-8) or a lone surrogate escape such as \\ud800; re-save the file as UTF-8"
)


def _undecodable(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_SURROGATE.search(value))
    if isinstance(value, Mapping):
        return any(_undecodable(k) or _undecodable(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_undecodable(v) for v in value)
    return False


RowItem = tuple[int, "dict[str, Any] | _RowError"]


def _json_lines(text: str) -> Iterator[RowItem]:
    # Split at "\n" only: str.splitlines() also splits at U+2028, U+0085, \x0b and others, which JSON strings
    # may hold raw; a trailing "\r" (CRLF files) is JSON whitespace.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except RecursionError:
            yield lineno, _RowError("JSON nested deeper than Python can parse")
            continue
        except json.JSONDecodeError as e:
            if _SURROGATE.search(line):
                yield lineno, _RowError(_UNDECODABLE)
            else:
                yield lineno, _RowError(f"malformed JSON ({e.msg} at column {e.colno})")
            continue
        yield (
            lineno,
            obj if isinstance(obj, dict) else _RowError(f"expected a JSON object, got {type(obj).__name__}"),
        )


def _read_json(path: Path, text: str) -> Iterator[RowItem]:
    stripped = text.lstrip()
    if not stripped:
        return
    if stripped[0] == "[":
        try:
            data = json.loads(text)
        except RecursionError:
            raise DataError(
                f"{path}: JSON nested deeper than Python can parse; store one flat object per row (.jsonl)."
            ) from None
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}). "
                "A JSON array must parse as a whole; fix that spot, or store one object per line (.jsonl)."
            ) from None
        for i, obj in enumerate(data, start=1):
            yield (
                i,
                obj
                if isinstance(obj, dict)
                else _RowError(f"expected a JSON object, got {type(obj).__name__}"),
            )
        return
    if stripped[0] == "{":
        # A .json file that holds one object per line (common for exported datasets).
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            yield from _json_lines(text)
            return
        if isinstance(obj, dict) and all(isinstance(v, list) for v in obj.values()) and obj:
            # {"train": [...]} or column-oriented {"Question": [...], ...}: refuse rather than guess.
            raise DataError(
                f"{path}: holds one object of lists (keys {sorted(obj)[:5]}); thinktune reads a JSON array of rows "
                "or one object per line."
            )
        yield 1, obj
        return
    raise DataError(
        f"{path}: expected a JSON array or JSON objects one per line; the file starts with {stripped[:20]!r}"
    )


def _read_csv(path: Path, text: str) -> Iterator[RowItem]:
    return iter(_csv_rows(path, text))


def _csv_rows(path: Path, text: str) -> list[RowItem]:
    # Read eagerly so the raised field-size limit (the default 128 KiB is shorter than some chains of thought)
    # is restored before anything else in the process parses CSV.
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))
    out: list[RowItem] = []
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            if reader.fieldnames is None:
                return out
            for i, row in enumerate(reader, start=1):
                if None in row:
                    cells = len(row[None]) + len(reader.fieldnames)
                    out.append((i, _RowError(f"has {cells} cells, the header has {len(reader.fieldnames)}")))
                    continue
                out.append((i, {k: v for k, v in row.items()}))
        except csv.Error as e:
            raise DataError(
                f"{path}: not readable as CSV near line {reader.line_num} ({e}); re-export it with standard quoting."
            ) from None
    finally:
        csv.field_size_limit(limit)
    return out


def _read_parquet(path: Path) -> Iterator[RowItem]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read as Parquet ({e}).") from None
    yield from enumerate(table.to_pylist(), start=1)


def _read_hf(source: str, config_name: str | None, split: str) -> Iterator[RowItem]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency
        raise DataError(
            "reading a Hugging Face dataset needs the `datasets` package: pip install datasets"
        ) from None
    try:
        ds = datasets.load_dataset(source, name=config_name, split=split)
    except Exception as e:
        raise DataError(
            f"could not load dataset {source!r} (config {config_name!r}, split {split!r}): {type(e).__name__}: {e}\n"
            "If you are offline, download it once with network access, or export it to a .jsonl/.parquet file "
            "and set data.source to that file."
        ) from None
    for i, row in enumerate(ds, start=1):
        yield i, dict(row)


def _read_modelscope(source: str, config_name: str | None, split: str) -> Iterator[RowItem]:
    try:
        from modelscope.msdatasets import MsDataset
    except ImportError:
        raise DataError(
            f"data.source {'ms:' + source!r} needs ModelScope: pip install 'thinktune[modelscope]'"
        ) from None
    try:
        ds = MsDataset.load(source, subset_name=config_name, split=split)
    except Exception as e:
        raise DataError(f"could not load ModelScope dataset {source!r}: {type(e).__name__}: {e}") from None
    for i, row in enumerate(ds, start=1):
        yield i, dict(row)


SAMPLE_LANGUAGES = ("en", "zh")
_CJK = re.compile("[\u3400-\u9fff]")


def _read_sample(source: str) -> tuple[str, Iterator[RowItem]]:
    """The bundled data: ``sample`` (all 166 rows), ``sample:en`` (the 144 English rows) or ``sample:zh`` (the 22
    Chinese ones, told apart by their CJK characters); row numbers stay those of the file."""
    path = SAMPLE_PATH
    rows = _read_json(path, _decode(path.read_bytes(), str(path)))
    language = source.partition(":")[2]
    if not language:
        return str(path.name), rows
    if language not in SAMPLE_LANGUAGES:
        raise DataError(
            f"data.source {source!r}: the bundled sample has languages {', '.join(SAMPLE_LANGUAGES)}; "
            "use sample, sample:en or sample:zh."
        )

    def chinese(row: Any) -> bool:
        return isinstance(row, dict) and any(_CJK.search(str(v)) for v in row.values())

    return f"{path.name} ({language})", (
        (i, row) for i, row in rows if not isinstance(row, dict) or chinese(row) == (language == "zh")
    )


def read_rows(
    source: str, config_name: str | None = None, split: str = "train"
) -> tuple[str, Iterator[RowItem]]:
    """Return (display name, iterator of (row number, row or error)) for any supported source."""
    if source == "sample" or source.startswith("sample:"):
        return _read_sample(source)
    if source.startswith(("ms:", "modelscope:")):
        ident = source.split(":", 1)[1]
        return f"modelscope:{ident}", _read_modelscope(ident, config_name, split)
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path), _read_hf(str(path), config_name, split)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix not in LOCAL_SUFFIXES:
            raise DataError(f"{path}: unsupported file type {suffix!r}; use {', '.join(LOCAL_SUFFIXES)}.")
        if suffix == ".parquet":
            return str(path), _read_parquet(path)
        text = _decode(path.read_bytes(), str(path))
        if suffix == ".csv":
            return str(path), _read_csv(path, text)
        if suffix == ".jsonl":
            return str(path), _json_lines(text)
        return str(path), _read_json(path, text)
    if path.suffix.lower() in LOCAL_SUFFIXES or source.startswith((".", "/", "~")):
        raise DataError(f"data file {source!r} does not exist.")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        return source, _read_hf(source, config_name, split)
    raise DataError(
        f"data.source {source!r} is neither an existing file nor a dataset id like org/name; "
        "use a .json/.jsonl/.parquet/.csv file, a Hugging Face id, ms:<id>, or `sample`."
    )


# --------------------------------------------------------------------------------------------- schemas

SCHEMA_KEYS: dict[str, tuple[str, ...]] = {
    "medical-o1": ("Question", "Complex_CoT", "Response"),
    "alpaca": ("instruction", "output"),
    "messages": ("messages|conversations",),
}


def detect_schema(columns: Sequence[str], source: str = "data") -> str:
    cols = set(columns)
    found = []
    if {"Question", "Complex_CoT", "Response"} <= cols:
        found.append("medical-o1")
    if {"instruction", "output"} <= cols:
        found.append("alpaca")
    if "messages" in cols or "conversations" in cols:
        found.append("messages")
    if {"question", "reasoning", "answer"} <= cols:
        found.append("thinktune")  # a run folder's data/train.jsonl and data/validation.jsonl
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(
            f"{source}: cannot tell the schema from the columns {sorted(cols)}. Expected medical-o1 "
            "(Question, Complex_CoT, Response), alpaca (instruction, input, output) or messages "
            "(messages/conversations). Otherwise map yours: data.schema=columns "
            "data.columns={question: ..., reasoning: ..., answer: ...}"
        )
    raise DataError(
        f"{source}: the columns {sorted(cols)} fit several schemas ({', '.join(found)}); choose one with "
        f"data.schema={found[0]} (or data.schema=columns with data.columns=...)."
    )


def split_think(text: str, what: str) -> tuple[str, str]:
    """'<think>R</think>A' -> (R, A). A closing tag without an opening one counts everything before it as
    reasoning (R1 outputs whose <think> was in the prompt). An opened, never-closed block is an error."""
    opens, closes = text.count(THINK_OPEN), text.count(THINK_CLOSE)
    if opens > closes:
        raise _RowError(f"'<think>' is opened but never closed in {what}")
    if closes == 0:
        return "", text.strip()
    if closes > 1:
        raise _RowError(f"{what} has {closes} '</think>' tags; expected one reasoning block")
    before, after = text.split(THINK_CLOSE, 1)
    if THINK_OPEN in after:
        raise _RowError(f"{what} has '<think>' after '</think>'; expected one reasoning block first")
    if opens:
        pre, reasoning = before.split(THINK_OPEN, 1)
        if pre.strip():
            raise _RowError(f"{what} has text before '<think>'; the reasoning must come first")
    else:
        reasoning = before
    return reasoning.strip(), after.strip()


def _text(row: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    if key not in row or row[key] is None:
        if required:
            raise _RowError(f"missing {key!r}")
        return None
    value = row[key]
    if not isinstance(value, str):
        raise _RowError(f"{key!r} is {type(value).__name__}, expected text")
    return value


_ROLE_ALIASES = {
    "human": "user",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
    "user": "user",
    "assistant": "assistant",
}


def _from_messages(row: Mapping[str, Any]) -> tuple[str | None, str, str, str]:
    key = "messages" if "messages" in row else "conversations"
    turns = row.get(key)
    if not isinstance(turns, list):
        raise _RowError(f"{key!r} is {type(turns).__name__}, expected a list of turns")
    system, user, assistant = None, [], []
    for i, t in enumerate(turns):
        if not isinstance(t, Mapping):
            raise _RowError(f"{key}[{i}] is {type(t).__name__}, expected an object with role/content")
        role = t.get("role", t.get("from"))
        content = t.get("content", t.get("value"))
        if not isinstance(role, str) or role.lower() not in _ROLE_ALIASES:
            raise _RowError(f"{key}[{i}] has role {role!r}; expected system/user/assistant (or human/gpt)")
        if not isinstance(content, str):
            raise _RowError(f"{key}[{i}] content is {type(content).__name__}, expected text")
        role = _ROLE_ALIASES[role.lower()]
        if role == "system":
            system = content
        elif role == "user":
            user.append(content)
        else:
            assistant.append((content, t.get("reasoning_content", t.get("reasoning"))))
    if len(user) != 1 or len(assistant) != 1:
        raise _RowError(
            f"has {len(user)} user and {len(assistant)} assistant turns; thinktune trains single-turn examples "
            "(one user turn, one assistant turn): split multi-turn conversations into separate rows"
        )
    content, reasoning = assistant[0]
    if reasoning is not None and not isinstance(reasoning, str):
        raise _RowError(f"reasoning_content is {type(reasoning).__name__}, expected text")
    inline_reasoning, answer = split_think(content, "the assistant turn")
    # An explicit reasoning_content wins; otherwise the reasoning is whatever the content's think block held.
    return system, user[0], (reasoning or "").strip() or inline_reasoning, answer


def row_to_example(
    row: Mapping[str, Any], schema: str, columns: Mapping[str, str], reserved: Sequence[str] = ()
) -> Example:
    """Map one row onto an Example or raise _RowError with the reason. `reserved` lists texts the tokenizer
    reads as control tokens (``Formatter.reserved``): a field holding one is refused, never tokenized as it."""
    if schema == "medical-o1":
        q, r, a = _text(row, "Question"), _text(row, "Complex_CoT"), _text(row, "Response")
        system = None
        if THINK_CLOSE in a or THINK_OPEN in a:
            inline, a = split_think(a, "'Response'")
            r = r or inline
    elif schema == "alpaca":
        instruction, inp = _text(row, "instruction"), _text(row, "input", required=False)
        q = f"{instruction}\n\n{inp}" if inp and inp.strip() else instruction
        r, a = split_think(_text(row, "output"), "'output'")
        system = _text(row, "system", required=False)
    elif schema == "messages":
        system, q, r, a = _from_messages(row)
    elif schema == "columns":
        q = _text(row, columns["question"])
        a = _text(row, columns["answer"])
        system = _text(row, columns["system"], required=False) if "system" in columns else None
        if "reasoning" in columns:
            r = _text(row, columns["reasoning"])
            if THINK_CLOSE in a or THINK_OPEN in a:
                _, a = split_think(a, repr(columns["answer"]))
        else:
            r, a = split_think(a, repr(columns["answer"]))
    else:
        raise DataError(f"unknown schema {schema!r}")
    q, r, a = q.strip(), (r or "").strip(), a.strip()
    if not q:
        raise _RowError("empty question")
    if not a:
        raise _RowError("empty answer")
    if THINK_OPEN in r or THINK_CLOSE in r:
        raise _RowError("the reasoning contains a nested '<think>' or '</think>' tag")
    for name, value in (("question", q), ("reasoning", r), ("answer", a), ("system", system)):
        for token in reserved:
            if value and token in value:
                raise _RowError(
                    f"the {name} contains {token!r}, which the tokenizer reads as a control token, not as text"
                )
    return Example(question=q, reasoning=r, answer=a, system=(system.strip() or None) if system else None)


# --------------------------------------------------------------------------------------------- loading


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
        if isinstance(row, _RowError):
            bad.append(BadRow(name, rowno, str(row)))
            continue
        if schema == "auto":
            schema = detect_schema(list(row.keys()), name)
            log.info("%s: detected schema %r", name, schema)
            if schema == "thinktune":
                schema = "columns"
                columns = {k: k for k in ("question", "reasoning", "answer", "system") if k in row}
        try:
            if _undecodable(row):
                raise _RowError(_UNDECODABLE)
            ex = row_to_example(row, schema, columns, reserved)
        except _RowError as e:
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
