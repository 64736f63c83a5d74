"""The live view's feed: a run's metrics.jsonl and the log of its latest job, read on from a position, as events.

One position covers both files: ``<metrics position>|<job id>|<log position>`` (each a
:class:`~thinktune.ui.tail.Position`). Every event carries the position after it as its SSE id, so a browser that
reconnects (EventSource sends the last id as ``Last-Event-ID``) or a poller that passes it back gets exactly
the lines after the ones it has: nothing lost, nothing twice. A fresh reader gets every metric and the log's last
lines. The same :func:`step` serves the event stream and the polling fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinktune.rundir import RunDir
from thinktune.ui.jobs import Job, Jobs
from thinktune.ui.tail import Position, last_lines, parse_records, read_from

LOG_TAIL_LINES = 200


@dataclass(frozen=True)
class Cursor:
    metrics: Position = Position()
    job: str = ""
    log: Position = Position()
    fresh: bool = True  # no position given: start the log at its tail

    def encode(self) -> str:
        return f"{self.metrics.encode()}|{self.job}|{self.log.encode()}"

    @classmethod
    def decode(cls, text: str | None) -> Cursor:
        if not text or text.count("|") != 2:
            return cls()
        m, job, log = text.split("|")
        return cls(Position.decode(m), job, Position.decode(log), fresh=False)


def _target(jobs: Jobs, run: str | None, job_id: str | None) -> tuple[str | None, Job | None]:
    """(run name, the job whose log is shown): the run's latest job, or the job asked for (and its run)."""
    if job_id:
        job = jobs.get(job_id)
        if run is None or job.run == run:
            return job.run, job
    mine = jobs.for_run(run) if run else []
    return run, (mine[-1] if mine else None)


def step(
    runs: Path, jobs: Jobs, run: str | None, job_id: str | None, cursor: Cursor
) -> tuple[list[dict], Cursor, bool]:
    """(events, cursor after them, whether the feed has ended: nothing alive and nothing left to read)."""
    run, job = _target(jobs, run, job_id)
    events: list[dict[str, Any]] = []
    mpos, lpos, jid = cursor.metrics, cursor.log, cursor.job
    drained = True
    if run is not None:
        chunk = read_from(RunDir(runs / run).metrics, mpos)
        records = parse_records(chunk.lines)
        mpos = chunk.position
        if records or chunk.reset:
            events.append({"event": "metrics", "data": {"reset": chunk.reset, "records": records}})
        drained &= not chunk.lines
    if job is not None:
        if job.id != jid or cursor.fresh:
            lines, lpos = last_lines(job.log, LOG_TAIL_LINES)
            events.append({"event": "log", "data": {"reset": True, "job": job.id, "lines": lines}})
            jid = job.id
            drained = False
        else:
            chunk = read_from(job.log, lpos)
            lpos = chunk.position
            if chunk.lines or chunk.reset:
                events.append(
                    {"event": "log", "data": {"reset": chunk.reset, "job": job.id, "lines": chunk.lines}}
                )
            drained &= not chunk.lines
    if job is not None:
        alive = jobs.alive(job)
    else:  # a run started outside the page: going on while its summary says so
        alive = run is not None and _summary_status(runs, run) == "running"
    new = Cursor(mpos, jid, lpos, fresh=False)
    for e in events:
        e["id"] = new.encode()
    return events, new, drained and not alive


def _summary_status(runs: Path, run: str) -> str | None:
    try:
        return RunDir(runs / run).read_summary().status
    except Exception:
        return None


def status(runs: Path, jobs: Jobs, run: str | None, job_id: str | None) -> dict[str, Any]:
    run, job = _target(jobs, run, job_id)
    summary: dict[str, Any] = {}
    resumable = False
    if run is not None:
        checkpoints = RunDir(runs / run).checkpoints
        resumable = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
        try:
            summary = RunDir(runs / run).read_summary().to_dict()
        except Exception:
            summary = {}
    return {
        "run": run,
        "job": jobs.describe(job) if job else None,
        "resumable": resumable,
        "summary": {
            k: summary.get(k)
            for k in (
                "status",
                "steps",
                "max_steps",
                "epochs",
                "wall_time_s",
                "final_eval_loss",
                "error",
                "resume_hint",
                "checkpoint",
            )
        },
    }
