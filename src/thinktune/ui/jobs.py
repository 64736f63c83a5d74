"""Jobs: `thinktune …` subprocesses the page starts, recorded in files so that no page and no server holds them.

Each job runs in its own session (``start_new_session``), writes stdout and stderr to a log file, and is described
by a small JSON file beside it: the command, the pid and the process start time (a pid alone could be reused by
another process after a reboot or a long time), the run folder, and the exit status when the server that started
it saw it end. Closing the page, reloading it, or killing the server changes nothing for the job; a new server
finds every job again from the files.

Where the files are:

- a job on an existing run folder (resume, eval, compare, export, report): ``RUN/ui-jobs/<id>.json`` and ``.log``;
- a new training run, whose folder the CLI creates (and names: ``train.run_name``, ``-2`` when taken): first
  ``RUNS/.thinktune-ui/jobs/<id>.json`` and ``.log``; as soon as its log names the run folder ("run folder: …"),
  the log is renamed into ``RUN/ui-jobs/`` (the process keeps writing to the same file) and the record follows.
  A job that failed before creating its folder stays there, with its log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from thinktune.errors import JobConflict, UIError
from thinktune.utils import write_json

STATE_DIR = ".thinktune-ui"
RUN_JOBS = "ui-jobs"
#: the line `thinktune train` logs once it has created the run folder (or prints at the end)
_RUN_FOLDER_LINE = re.compile(r"(?m)(?:^|: )run folder: (\S[^\r\n]*)$")
#: exit statuses of a job stopped by a signal that thinktune turns into a checkpoint (SIGTERM 143, SIGINT 130)
STOPPED_CODES = (130, 143, -signal.SIGTERM, -signal.SIGINT)


@dataclass
class Job:
    id: str
    kind: str  # train | resume | eval | compare | export | report
    argv: list[str]
    cwd: str
    gpu: bool
    pid: int | None = None
    create_time: float | None = None  # the process's start time, as the OS reports it (psutil)
    started_at: str = ""
    run: str | None = None  # the run folder's name under RUNS, once known
    expected_run: str | None = None  # a new training run: the name it was asked to take
    label: str = ""
    rc: int | None = None
    ended_at: str | None = None
    path: Path = field(default=Path(), compare=False)  # where this record lives (not written)

    @property
    def log(self) -> Path:
        return self.path.with_suffix(".log")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("path")
        return out

    @classmethod
    def from_file(cls, path: Path) -> Job | None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        names = {f.name for f in dataclasses.fields(cls)} - {"path"}
        try:
            return cls(**{k: v for k, v in raw.items() if k in names}, path=path)
        except TypeError:
            return None


def process_alive(pid: int | None, create_time: float | None) -> bool:
    """True when process `pid` exists, is not a zombie, and started at `create_time` (so it is ours)."""
    if not pid or create_time is None:
        return False
    try:
        import psutil

        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 0.05 and p.status() != psutil.STATUS_ZOMBIE
    except Exception:  # NoSuchProcess, AccessDenied, psutil missing
        return False


def _start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class Jobs:
    """Every job under a runs folder: start, find, stop. One instance per server; safe across threads."""

    def __init__(self, runs: Path, env: dict[str, str] | None = None) -> None:
        self.runs = runs.resolve()
        self.staging = self.runs / STATE_DIR / "jobs"
        self.env = env
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ reading

    def all(self) -> list[Job]:
        with self._lock:
            staged = [j for j in map(Job.from_file, sorted(self.staging.glob("*.json"))) if j]
            for job in staged:
                self._adopt(job)
            jobs = [j for j in map(Job.from_file, sorted(self.staging.glob("*.json"))) if j]
            jobs += [j for j in map(Job.from_file, sorted(self.runs.glob(f"*/{RUN_JOBS}/*.json"))) if j]
        return sorted(jobs, key=lambda j: j.started_at)

    def get(self, job_id: str) -> Job:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,80}", job_id or ""):
            raise UIError(f"job {job_id!r}: not a job id")
        for job in self.all():
            if job.id == job_id:
                return job
        raise UIError(f"job {job_id!r} does not exist under {self.runs}")

    def alive(self, job: Job) -> bool:
        return job.rc is None and process_alive(job.pid, job.create_time)

    def status(self, job: Job) -> str:
        if self.alive(job):
            return "running"
        if job.rc is None:
            return "ended"  # the server that started it was not there to see its exit status
        if job.rc == 0:
            return "finished"
        return "stopped" if job.rc in STOPPED_CODES else "failed"

    def describe(self, job: Job) -> dict[str, Any]:
        return {**job.to_dict(), "status": self.status(job), "alive": self.alive(job)}

    def running(self, *, gpu_only: bool = False) -> list[Job]:
        return [j for j in self.all() if self.alive(j) and (j.gpu or not gpu_only)]

    def for_run(self, run: str) -> list[Job]:
        return [j for j in self.all() if j.run == run]

    # ------------------------------------------------------------------ starting and stopping

    def start(
        self,
        kind: str,
        argv: list[str],
        *,
        cwd: Path,
        run: str | None = None,
        expected_run: str | None = None,
        gpu: bool = True,
        force: bool = False,
        label: str = "",
    ) -> Job:
        """Start `argv` (a list: no shell) as a detached job; a second GPU job is refused unless `force`."""
        with self._lock:
            if gpu and not force:
                busy = self.running(gpu_only=True)
                if busy:
                    b = busy[0]
                    raise JobConflict(
                        f"{b.label or b.kind} is running (job {b.id}, pid {b.pid}, since {b.started_at}); one GPU "
                        "job at a time. Wait for it, stop it, or tick 'run anyway' to start this one too."
                    )
            job_id = f"{datetime.now():%Y%m%d-%H%M%S}-{kind}-{secrets.token_hex(3)}"
            folder = self.runs / run / RUN_JOBS if run else self.staging
            folder.mkdir(parents=True, exist_ok=True)
            job = Job(
                id=job_id,
                kind=kind,
                argv=[str(a) for a in argv],
                cwd=str(cwd),
                gpu=gpu,
                started_at=_now(),
                run=run,
                expected_run=expected_run,
                label=label or f"{kind} {run or expected_run or ''}".strip(),
                path=folder / f"{job_id}.json",
            )
            env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
            with open(job.log, "ab") as log:
                header = shlex.join(job.argv).replace("\r", "\\r").replace("\n", "\\n")  # one line
                log.write(f"$ {header}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    job.argv,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own session: a signal to the server never reaches it
                    env=env,
                )
            job.pid, job.create_time = proc.pid, _start_time(proc.pid)
            write_json(job.path, job.to_dict())
            self._procs[job.id] = proc
        threading.Thread(target=self._reap, args=(job.id, proc), daemon=True).start()
        if job.path.parent == self.staging:
            threading.Thread(target=self._watch, args=(job.id, proc), daemon=True).start()
        return job

    def _watch(self, job_id: str, proc: subprocess.Popen) -> None:
        """Move a new run's log into its folder as soon as the log names it (a later server does it otherwise)."""
        while proc.poll() is None:
            with self._lock:
                staged = Job.from_file(self.staging / f"{job_id}.json")
                if staged is None:
                    return
                self._adopt(staged)
            time.sleep(0.5)

    def _reap(self, job_id: str, proc: subprocess.Popen) -> None:
        rc = proc.wait()
        with self._lock:
            self._procs.pop(job_id, None)
            for job in self.all():
                if job.id == job_id:
                    job.rc, job.ended_at = rc, _now()
                    write_json(job.path, job.to_dict())
                    self._adopt(job)

    def stop(self, job_id: str) -> Job:
        """SIGTERM to the job's process group (training saves a checkpoint and exits with 143)."""
        job = self.get(job_id)
        if not self.alive(job):
            raise UIError(f"job {job.id} ({job.label}) is not running; nothing was stopped")
        try:
            os.killpg(job.pid, signal.SIGTERM)  # start_new_session: the job leads its own process group
        except ProcessLookupError:
            pass
        return job

    def wait_all(self, timeout: float) -> None:
        """Wait for the jobs this server started (tests; the server itself never waits)."""
        deadline = time.monotonic() + timeout
        for proc in list(self._procs.values()):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))

    # ------------------------------------------------------------------ a new run's folder

    def _adopt(self, job: Job) -> None:
        """Move a staged training job's record and log into its run folder once the log names it."""
        if job.path.parent != self.staging:
            return
        if job.run is None:
            found = self._run_from_log(job.log, Path(job.cwd))
            if found is None:
                return
            job.run = found
            write_json(job.path, job.to_dict())
        target = self.runs / job.run / RUN_JOBS
        if not (self.runs / job.run).is_dir():
            return
        target.mkdir(exist_ok=True)
        new_path = target / job.path.name
        if job.log.exists():
            os.replace(job.log, new_path.with_suffix(".log"))  # the process keeps writing to the same file
        old = job.path
        job.path = new_path
        write_json(new_path, job.to_dict())
        old.unlink(missing_ok=True)

    def _run_from_log(self, log: Path, cwd: Path) -> str | None:
        try:
            with open(log, "rb") as f:
                head = f.read(1 << 18).decode("utf-8", "replace")
        except OSError:
            return None
        m = _RUN_FOLDER_LINE.search(head, head.find("\n") + 1)  # after the "$ command" line the server wrote
        if not m:
            return None
        path = Path(m.group(1).strip())
        path = path if path.is_absolute() else cwd / path
        try:
            path = path.resolve()
        except OSError:
            return None
        if path.parent != self.runs:
            return None
        return path.name
