"""Where rows come from: local files, the Hugging Face hub, ModelScope, and the bundled sample.

Sources: local .json (an array, or one object per line), .jsonl, .parquet, .csv; a Hugging Face dataset id
(optionally with a config name and a sliced split such as ``train[:1500]``) or a local dataset folder;
``ms:<id>`` for ModelScope; ``sample`` for the data bundled with thinktune (``sample:en``, ``sample:zh``: one
language of it; ``sample:mcq``, ``sample:open``: the verifiable problems of the reinforcement stage). Every reader yields ``(row number, row)`` pairs; a row that cannot be read at all is a
:class:`RowError` in that place, so it is reported with its number instead of failing the file.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from thinktune.errors import DataError

SAMPLE_PATH = Path(__file__).parent / "sample" / "medical_o1_sample.json"
#: The bundled verifiable problems of the reinforcement stage: ``sample:mcq`` (160 multiple-choice questions) and
#: ``sample:open`` (40 open-ended questions with a short reference answer and its aliases).
SAMPLE_PROBLEMS = {
    "mcq": Path(__file__).parent / "sample" / "medical_mcq.jsonl",
    "open": Path(__file__).parent / "sample" / "medical_open.jsonl",
}


LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


class RowError(Exception):
    """One row cannot be used; the message is the reason reported next to its row number."""


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


UNDECODABLE = (
    "undecodable bytes (not UTF-8) or a lone surrogate escape such as \\ud800; re-save the file as UTF-8"
)


def undecodable(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_SURROGATE.search(value))
    if isinstance(value, Mapping):
        return any(undecodable(k) or undecodable(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(undecodable(v) for v in value)
    return False


RowItem = tuple[int, "dict[str, Any] | RowError"]


def _json_lines(text: str) -> Iterator[RowItem]:
    # Split at "\n" only: str.splitlines() also splits at U+2028, U+0085, \x0b and others, which JSON strings
    # may hold raw; a trailing "\r" (CRLF files) is JSON whitespace.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except RecursionError:
            yield lineno, RowError("JSON nested deeper than Python can parse")
            continue
        except json.JSONDecodeError as e:
            if _SURROGATE.search(line):
                yield lineno, RowError(UNDECODABLE)
            else:
                yield lineno, RowError(f"malformed JSON ({e.msg} at column {e.colno})")
            continue
        yield (
            lineno,
            obj if isinstance(obj, dict) else RowError(f"expected a JSON object, got {type(obj).__name__}"),
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
                else RowError(f"expected a JSON object, got {type(obj).__name__}"),
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
                    out.append((i, RowError(f"has {cells} cells, the header has {len(reader.fieldnames)}")))
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
    """The bundled data: ``sample`` (all 103 rows), ``sample:en`` (the 83 English rows) or ``sample:zh`` (the 20
    Chinese ones, told apart by their CJK characters); row numbers stay those of the file."""
    path = SAMPLE_PATH
    language = source.partition(":")[2]
    if language in SAMPLE_PROBLEMS:
        problems = SAMPLE_PROBLEMS[language]
        return problems.name, _json_lines(_decode(problems.read_bytes(), str(problems)))
    rows = _read_json(path, _decode(path.read_bytes(), str(path)))
    if not language:
        return str(path.name), rows
    if language not in SAMPLE_LANGUAGES:
        raise DataError(
            f"data.source {source!r}: the bundled sample has languages {', '.join(SAMPLE_LANGUAGES)} and the "
            "verifiable problems mcq and open; use sample, sample:en, sample:zh, sample:mcq or sample:open."
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
