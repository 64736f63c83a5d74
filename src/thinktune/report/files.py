"""What the report reads: every file of a run folder it shows, each through its record type where it has one.
Absent or unreadable files come back as None or empty, so a page can be built for a run at any stage."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from thinktune.evals.records import ComparePair, EvalRecord
from thinktune.rundir import RunSummary
from thinktune.utils import read_jsonl

log = logging.getLogger(__name__)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        log.warning("report: could not read %s (%s)", path, e)
        return None


def _read_records(path: Path) -> list[dict[str, Any]]:
    try:
        return list(read_jsonl(path)) if path.is_file() else []
    except (OSError, json.JSONDecodeError) as e:
        log.warning("report: could not read %s (%s)", path, e)
        return []


def load_run_files(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report shows, read from the run folder (absent files are None / empty)."""
    d = Path(run_dir)
    config = None
    if (d / "config.yaml").is_file():
        try:
            config = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            log.warning("report: could not read config.yaml (%s)", e)
    evals = {}
    for p in sorted(d.glob("eval_*.json")):
        data = _read_json(p)
        if isinstance(data, dict):
            name = p.stem[len("eval_") :]
            records = [EvalRecord.from_dict(r) for r in _read_records(p.with_suffix(".jsonl"))]
            evals[name] = {"summary": data, "records": records}
    # base first, tuned second, anything else after, so before/after read left to right
    rank = {"base": 0, "tuned": 1}
    evals = dict(sorted(evals.items(), key=lambda kv: (rank.get(kv[0], 2), kv[0])))
    return {
        "dir": d,
        "config": config if isinstance(config, dict) else None,
        "summary": RunSummary.from_dict(_read_json(d / "summary.json") or {}).to_dict()
        if (d / "summary.json").is_file()
        else None,
        "env": _read_json(d / "env.json") if (d / "env.json").is_file() else None,
        "data_report": _read_json(d / "data_report.json") if (d / "data_report.json").is_file() else None,
        "length_histogram": (d / "length_histogram.png").read_bytes()
        if (d / "length_histogram.png").is_file()
        else None,
        "metrics": _read_records(d / "metrics.jsonl"),
        "loss_curve": (d / "loss_curve.png").read_bytes() if (d / "loss_curve.png").is_file() else None,
        "evals": evals,
        "compare": _read_json(d / "compare.json") if (d / "compare.json").is_file() else None,
        "pairs": [ComparePair.from_dict(r) for r in _read_records(d / "compare.jsonl")],
    }
