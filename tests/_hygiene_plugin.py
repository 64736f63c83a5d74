"""pytest plugin (registered in pyproject's addopts): every test leaves no child process and no temporary file
behind.

- Child processes: after each test, any process started by the test run (a child of pytest) that is still alive
  fails that test (it is killed first, so one leak does not cascade).
- Temporary files: after the session, no atomic-write temporaries (``.NAME.*.tmp``) and no half-saved adapters
  (``.adapter.partial``) may remain under pytest's base temporary folder, and nothing new may be left in the
  system temporary folder by this process's children under thinktune's names.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LEFTOVER_PATTERNS = (".*.tmp", ".adapter.partial*", "tmp-checkpoint-*")


def _children() -> list:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil ships with the dev extra's dependencies
        return []
    me = psutil.Process(os.getpid())
    out = []
    for child in me.children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


def _describe(proc) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}"
    except Exception:
        return f"pid {proc.pid}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    # multiprocessing's resource tracker and pool helpers are reaped by Python itself.
    leaked = [p for p in _children() if "resource_tracker" not in " ".join(_safe_cmdline(p))]
    if not leaked:
        return
    import time

    deadline = time.monotonic() + 5  # a process that is just exiting gets a moment
    while leaked and time.monotonic() < deadline:
        time.sleep(0.1)
        leaked = [p for p in leaked if p.is_running() and p.status() != "zombie"]
    if leaked:
        names = [_describe(p) for p in leaked]
        for p in leaked:
            try:
                p.kill()
            except Exception:
                pass
        pytest.fail(f"{item.nodeid} left child processes running: {names}", pytrace=False)


def _safe_cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:
        return []


def leftover_files(root: Path) -> list[Path]:
    return sorted({p for pattern in LEFTOVER_PATTERNS for p in root.rglob(pattern)})


def pytest_sessionfinish(session, exitstatus):
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    try:
        base = factory.getbasetemp()
    except Exception:
        return
    left = leftover_files(Path(base))
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = "temporary files left behind by the tests:\n  " + "\n  ".join(map(str, left[:20]))
        if reporter is not None:
            reporter.write_line(msg, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
