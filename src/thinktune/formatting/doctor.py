"""The data doctor: what the loss will see, how long examples are, and what a max_length would cut.

Used by `thinktune inspect-data` (before spending GPU hours), `thinktune train` (which applies the same length
policy and saves the same report into the run folder), `thinktune plan` (the lengths a max_length must cover)
and the web UI. An answer is never cut silently: examples that
do not fit are dropped, or (``truncate_reasoning``) their chain of thought is shortened so the whole answer
and the end-of-turn token stay inside ``max_length``.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from thinktune.config import DataConfig
from thinktune.data.schemas import Example
from thinktune.errors import ExampleError
from thinktune.formatting.formatter import Encoded, Formatter
from thinktune.utils import quantiles, write_json

log = logging.getLogger(__name__)

# How right-truncation at max_length would damage an example, from least to most harmful.
FITS = "fits"
CUTS_EOT = "loses only the end-of-turn token"
CUTS_ANSWER = "cuts inside the answer"
CUTS_REASONING = "loses the whole answer (cut inside the reasoning)"
CUTS_PROMPT = "cuts the prompt (nothing left to train on)"


def classify_cut(enc: Encoded, max_length: int) -> str:
    total = len(enc.input_ids)
    if total <= max_length:
        return FITS
    if max_length == total - 1:
        return CUTS_EOT
    if max_length > enc.answer_start:
        return CUTS_ANSWER
    if max_length > enc.prompt_len:
        return CUTS_REASONING
    return CUTS_PROMPT


@dataclass
class PolicyResult:
    kept: list[Encoded]
    dropped: list[tuple[Encoded, str]] = field(default_factory=list)
    shortened: list[tuple[Encoded, int]] = field(
        default_factory=list
    )  # (new encoding, reasoning tokens removed)
    cut_counts: dict[str, int] = field(default_factory=dict)

    def summary(self, policy: str, max_length: int) -> dict[str, Any]:
        row = lambda e: e.example.meta.get("row")  # noqa: E731
        return {
            "max_length": max_length,
            "policy": policy,
            "truncation_would": self.cut_counts,
            "kept": len(self.kept),
            "dropped": [
                {"row": row(e), "tokens": len(e.input_ids), "reason": why} for e, why in self.dropped
            ],
            "shortened": [
                {"row": row(e), "tokens": len(e.input_ids), "reasoning_tokens_removed": n}
                for e, n in self.shortened
            ],
        }


def _shorten_reasoning(fmt: Formatter, enc: Encoded, max_length: int) -> tuple[Encoded, int] | None:
    """Cut the chain of thought (at a token boundary) until the example fits; None if even no reasoning won't fit."""
    ex = enc.example
    tok = fmt.tokenizer
    r_ids = tok(ex.reasoning, add_special_tokens=False)["input_ids"]
    excess = len(enc.input_ids) - max_length
    keep = len(r_ids) - excess
    while keep > 0:
        text = tok.decode(r_ids[:keep]).rstrip()
        new = fmt.encode(replace(ex, reasoning=text))
        if len(new.input_ids) <= max_length:
            return new, len(r_ids) - keep
        keep -= max(1, len(new.input_ids) - max_length)
    new = fmt.encode(replace(ex, reasoning=""))
    if len(new.input_ids) <= max_length:
        return new, len(r_ids)
    return None


def apply_length_policy(fmt: Formatter, encoded: list[Encoded], max_length: int, policy: str) -> PolicyResult:
    counts = Counter(classify_cut(e, max_length) for e in encoded)
    result = PolicyResult(
        kept=[],
        cut_counts={k: counts.get(k, 0) for k in (FITS, CUTS_EOT, CUTS_ANSWER, CUTS_REASONING, CUTS_PROMPT)},
    )
    for enc in encoded:
        how = classify_cut(enc, max_length)
        if how == FITS:
            result.kept.append(enc)
        elif policy == "truncate_reasoning" and fmt.reasoning == "train" and enc.example.reasoning:
            shortened = _shorten_reasoning(fmt, enc, max_length)
            if shortened is None:
                result.dropped.append((enc, f"longer than {max_length} tokens even without reasoning"))
            else:
                result.kept.append(shortened[0])
                result.shortened.append(shortened)
        else:
            result.dropped.append(
                (enc, f"{len(enc.input_ids)} tokens > max_length {max_length}: truncation {how}")
            )
    if result.dropped or result.shortened:
        log.warning(
            "max_length %d: %d examples dropped, %d with shortened reasoning (policy %s); listed in data_report.json",
            max_length,
            len(result.dropped),
            len(result.shortened),
            policy,
        )
    return result


def length_stats(encoded: list[Encoded]) -> dict[str, dict[str, float]]:
    spans = ("question", "reasoning", "answer", "total")
    lengths = [e.lengths for e in encoded]
    return {s: quantiles([float(x[s]) for x in lengths]) for s in spans}


_DIM, _TRAIN, _RESET = "\033[2m", "\033[1;32m", "\033[0m"


def show_example(fmt: Formatter, enc: Encoded, index: int, color: bool | None = None, out=None) -> None:
    """Print an example as the model sees it, with the supervised tokens marked."""
    out = out or sys.stdout
    if color is None:
        color = out.isatty()
    tok = fmt.tokenizer
    prompt = tok.decode(enc.input_ids[: enc.prompt_len])
    reasoning = tok.decode(enc.input_ids[enc.prompt_len : enc.answer_start])
    answer = tok.decode(enc.input_ids[enc.answer_start :])
    L = enc.lengths
    row = enc.example.meta.get("row")
    print(
        f"--- example {index}{f' (row {row})' if row is not None else ''}: {L['total']} tokens = "
        f"question {L['question']} + reasoning {L['reasoning']} + answer {L['answer']}",
        file=out,
    )
    if color:
        print(f"{_DIM}{prompt}{_RESET}{_TRAIN}{reasoning}{answer}{_RESET}", file=out)
        print(f"{_DIM}(dim: prompt, not trained){_RESET}  {_TRAIN}(green: trained){_RESET}", file=out)
    else:
        print(f"{prompt}[[TRAINED: {reasoning}{answer}]]", file=out)
        print("(text inside [[TRAINED: ...]] is supervised; the rest is prompt)", file=out)
    eot_ok = enc.labels()[-1] == fmt.eot_id
    print(f"end-of-turn {fmt.eot!r} trained: {'yes' if eot_ok else 'NO'}", file=out)


def build_report(
    fmt: Formatter,
    load_summary: dict[str, Any],
    encoded: list[Encoded],
    policy_result: PolicyResult,
    *,
    max_length: int,
    policy: str,
    notes: list[str],
    splits: dict[str, int] | None = None,
    tokenizer_name: str = "",
) -> dict[str, Any]:
    data = dict(load_summary)
    if fmt.refused:  # examples the template could not render as given: bad rows too
        data["bad_rows"] = list(data.get("bad_rows", [])) + fmt.refused
        data["examples"] = data.get("examples", 0) - len(fmt.refused)
    return {
        "data": data,
        "splits": splits or {},
        "tokenizer": tokenizer_name,
        "template": {**fmt.describe(), "notes": notes},
        "lengths": length_stats(encoded),
        "length_policy": policy_result.summary(policy, max_length),
    }


def write_report(out_dir: str | Path, report: dict[str, Any]) -> Path:
    """data_report.json in `out_dir` (the caller draws length_histogram.png beside it: plots are the report
    layer's)."""
    path = Path(out_dir) / "data_report.json"
    write_json(path, report)
    return path


def encode_all(fmt: Formatter, examples: list[Example]) -> list[Encoded]:
    """Encode every example; one the template cannot render faithfully (ExampleError) is skipped, logged and
    recorded in ``fmt.refused``, which :func:`build_report` lists with the bad rows."""
    out = []
    for e in examples:
        try:
            out.append(fmt.encode(e))
        except ExampleError as err:
            fmt.refused.append({"row": e.meta.get("row"), "reason": str(err)})
            log.warning("skipped row %s: %s", e.meta.get("row"), err)
    return out


def print_summary(report: dict[str, Any], out=None) -> None:
    out = out or sys.stdout
    d, lp = report["data"], report["length_policy"]
    print(
        f"\nsource: {d['source']}  schema: {d['schema']}  rows: {d['rows_read']}  examples: {d['examples']}  "
        f"bad rows skipped: {len(d['bad_rows'])}  duplicates removed: {d['duplicates_removed']}",
        file=out,
    )
    t = report["template"]
    print(
        f"template family: {t['family']}  end-of-turn: {t['end_of_turn']!r}  "
        f"prompt opens <think>: {t['prompt_opens_think']}",
        file=out,
    )
    for note in t.get("notes", []):
        print(f"  note: {note}", file=out)
    print("\ntoken lengths   " + "".join(f"{k:>8}" for k in ("min", "p50", "p90", "p99", "max")), file=out)
    for span, q in report["lengths"].items():
        print(
            f"  {span:<13} " + "".join(f"{q.get(k, 0):>8.0f}" for k in ("min", "p50", "p90", "p99", "max")),
            file=out,
        )
    print(f"\nat max_length {lp['max_length']} (right truncation would):", file=out)
    for how, n in lp["truncation_would"].items():
        print(f"  {n:>6}  {how}", file=out)
    print(
        f"length policy {lp['policy']!r}: kept {lp['kept']}, dropped {len(lp['dropped'])}, "
        f"reasoning shortened {len(lp['shortened'])} -- no answer is ever cut",
        file=out,
    )


@dataclass(frozen=True)
class Examination:
    """What the data doctor saw: the source as read, every example encoded, what the length policy did, the report."""

    loaded: Any
    encoded: list[Encoded]
    result: PolicyResult
    report: dict[str, Any]


def examine(fmt: Formatter, d: DataConfig, *, tokenizer_name: str) -> Examination:
    """Load `d`'s source as training does (control-token text is a bad row), split it, encode every example
    through `fmt`, apply the length policy and build the report: what `inspect-data` and the web page show."""
    from thinktune.data.load import load_configured, split_examples

    loaded = load_configured(d, reserved=fmt.reserved)
    train, val = split_examples(
        loaded.examples, val_size=d.val_size, seed=d.seed, shuffle=d.shuffle, max_examples=d.max_examples
    )
    notes = fmt.check(loaded.examples[:3])
    encoded = encode_all(fmt, train + val)
    result = apply_length_policy(fmt, encoded, d.max_length, d.length_policy)
    report = build_report(
        fmt,
        loaded.summary(),
        encoded,
        result,
        max_length=d.max_length,
        policy=d.length_policy,
        notes=notes,
        splits={"train": len(train), "validation": len(val)},
        tokenizer_name=tokenizer_name,
    )
    return Examination(loaded, encoded, result, report)
