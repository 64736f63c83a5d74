"""The runs the page lists and shows, read from their folders (the run-folder contract of :mod:`thinktune.rundir`
and the records of :mod:`thinktune.evals.records`), plus whether a job of the page is alive on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from thinktune.errors import RunDirError
from thinktune.rundir import RunDir
from thinktune.ui.jobs import Job, Jobs


def run_names(runs: Path) -> list[str]:
    if not runs.is_dir():
        return []
    return sorted(
        p.name for p in runs.iterdir() if (p / "config.yaml").is_file() and not p.name.startswith(".")
    )


def _config_dict(run: RunDir) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(run.config_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _summary(run: RunDir) -> dict[str, Any]:
    try:
        return run.read_summary().to_dict() if run.summary.is_file() else {}
    except RunDirError:
        return {}


def _metrics(run: RunDir) -> list[dict[str, Any]]:
    try:
        return run.metrics_records()
    except (OSError, ValueError):
        return []


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def run_row(runs: Path, name: str, jobs: list[Job], manager: Jobs) -> dict[str, Any]:
    """One line of the runs table."""
    run = RunDir(runs / name)
    cfg = _config_dict(run)
    summary = _summary(run)
    metrics = _metrics(run)
    losses = [r["loss"] for r in metrics if r.get("loss") is not None]
    evals = [r["eval_loss"] for r in metrics if r.get("eval_loss") is not None]
    mine = [j for j in jobs if j.run == name]
    live = [j for j in mine if manager.alive(j)]
    steps = summary.get("steps")
    if steps is None and metrics:
        steps = max((r.get("step") or 0) for r in metrics)
    return {
        "name": name,
        "status": summary.get("status") or ("running" if live else "unknown"),
        "alive": bool(live) if mine else None,  # None: no job of this page on the run (started elsewhere)
        "job": manager.describe(live[-1]) if live else None,
        "model": (cfg.get("model") or {}).get("name_or_path"),
        "data": (cfg.get("data") or {}).get("source"),
        "steps": steps,
        "max_steps": summary.get("max_steps"),
        "first_loss": _first(summary.get("first_train_loss"), losses[0] if losses else None),
        "last_loss": _first(summary.get("final_train_loss"), losses[-1] if losses else None),
        "eval_loss": _first(summary.get("final_eval_loss"), evals[-1] if evals else None),
        "wall_time_s": summary.get("wall_time_s"),
        "modified": max((p.stat().st_mtime for p in run.path.iterdir()), default=run.path.stat().st_mtime),
        "has_adapter": run.has_adapter,
        "evals": sorted(p.stem[len("eval_") :] for p in run.path.glob("eval_*.json")),
        "compare": run.compare_summary.is_file(),
        "report": run.report.is_file(),
        "resumable": any(run.checkpoints.glob("checkpoint-*")) if run.checkpoints.is_dir() else False,
    }


def list_runs(runs: Path, manager: Jobs) -> list[dict[str, Any]]:
    jobs = manager.all()
    return [run_row(runs, name, jobs, manager) for name in run_names(runs)]


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, sec in d.items() if isinstance(sec, dict) for k, v in sec.items()}


def config_diff(runs: Path, names: list[str]) -> dict[str, Any]:
    """The settings that differ between runs (train.run_name and train.output_dir left out)."""
    flats = {n: _flat(_config_dict(RunDir(runs / n))) for n in names}
    keys = sorted(set().union(*flats.values())) if flats else []
    rows = []
    for key in keys:
        if key in ("train.run_name", "train.output_dir"):
            continue
        values = [flats[n].get(key) for n in names]
        texts = {json.dumps(v, sort_keys=True, default=str) for v in values}
        if len(texts) > 1:
            rows.append({"key": key, "values": values})
    return {"runs": names, "rows": rows}


def run_detail(runs: Path, name: str, manager: Jobs) -> dict[str, Any]:
    """Everything the run's views show: summary, config, data report, metrics, evaluations, the comparison."""
    from thinktune.report.files import load_run_files

    files = load_run_files(runs / name)
    run = RunDir(runs / name)
    jobs = [manager.describe(j) for j in manager.for_run(name)]
    return {
        "name": name,
        "row": run_row(runs, name, manager.all(), manager),
        "config": files["config"],
        "summary": files["summary"],
        "env": files["env"],
        "data_report": files["data_report"],
        "evals": {
            n: {"summary": e["summary"], "records": [r.to_dict() for r in e["records"]]}
            for n, e in files["evals"].items()
        },
        "compare": files["compare"],
        "pairs": [p.to_dict() for p in files["pairs"]],
        "jobs": jobs,
        "exports": run.finished_exports(),
    }
