"""Helpers for the web UI's process and browser tests: a `thinktune ui` server as a subprocess, and a page in headless
Chromium driven over the DevTools protocol (the pipe driver of _report_helpers: no extra package, no port)."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _report_helpers import CDP, chromium_path


class Server:
    """`python -m thinktune ui --runs RUNS --port 0 --data-dir DATA` in a subprocess; `url` from what it prints."""

    def __init__(self, runs: Path, data: Path, log: Path, *extra: str) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "thinktune",
                "ui",
                "--runs",
                str(runs),
                "--port",
                "0",
                "--data-dir",
                str(data),
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        self.url = None
        while time.monotonic() < deadline and self.url is None:
            m = re.search(r"open (http://\S+)", log.read_text(errors="replace"))
            if m:
                self.url = m.group(1).rstrip("/")
            elif self.proc.poll() is not None:
                break
            time.sleep(0.1)
        if self.url is None:
            self.stop()
            raise RuntimeError(f"thinktune ui did not start:\n{log.read_text(errors='replace')}")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> Any:
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to clean anything up."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_pid_gone(pid: int, timeout: float) -> None:
    import psutil

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(gone, timeout, f"process {pid} to end", interval=0.5)


class Page:
    """One tab of headless Chromium: navigate, evaluate, wait for a condition, click, screenshot."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium is not installed")
        self._profile = tempfile.TemporaryDirectory(prefix="thinktune-ui-chromium-")
        self.cdp = CDP(exe, self._profile.name, Path(self._profile.name) / "chromium.log")
        target = self.cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.sid = self.cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.cdp.send(f"{domain}.enable", session=self.sid)
        self.width, self.height = width, height
        self.cdp.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=self.sid,
        )

    def goto(self, url: str) -> None:
        self.cdp.events = [e for e in self.cdp.events if e.get("method") != "Page.loadEventFired"]
        self.cdp.send("Page.navigate", {"url": url}, session=self.sid)
        self.cdp.wait_event("Page.loadEventFired")

    def show(self, hash_: str) -> None:
        """Go to a view of the page already loaded (a same-document navigation fires no load event)."""
        self.js(f"location.hash = {json.dumps(hash_)}")

    def reload(self) -> None:
        self.cdp.events = [e for e in self.cdp.events if e.get("method") != "Page.loadEventFired"]
        self.cdp.send("Page.reload", {}, session=self.sid)
        self.cdp.wait_event("Page.loadEventFired")

    def js(self, expression: str, timeout: float = 60) -> Any:
        reply = self.cdp.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=self.sid,
            timeout=timeout,
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression[:80]}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait(self, expression: str, timeout: float = 60, what: str | None = None) -> Any:
        probe = f"(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()"
        try:
            return wait_for(lambda: self.js(probe), timeout, what or expression)
        except AssertionError as e:
            seen = self.js(
                "['#flash', '#doctor', '#plan', '#new-errors', '#live-stats', '#live-feed', '#live-log-tail', "
                "'#results-log', '#chat-state', '#export-log'].map(s => { const e = document.querySelector(s); "
                "return e && e.textContent.trim() ? s + ': ' + e.textContent.trim().slice(-1500) : ''; })"
                ".filter(Boolean).join('\\n')"
            )
            raise AssertionError(
                f"{e}\n--- the page shows:\n{seen}\n--- problems: {self.problems()}"
            ) from None

    def click(self, selector: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).click()")

    def screenshot(self, path: Path, full: bool = True) -> Path:
        height = self.js("document.documentElement.scrollHeight") if full else self.height
        shot = self.cdp.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": full,
                "clip": {"x": 0, "y": 0, "width": self.width, "height": min(int(height), 6000), "scale": 1},
            },
            session=self.sid,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def problems(self) -> list[str]:
        """Console errors, exceptions, failed requests and any request to another host, so far."""
        out = []
        for ev in self.cdp.events:
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(json.dumps(params["exceptionDetails"])[:400])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(
                    " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                )
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                out.append(params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if not url.startswith(("http://127.0.0.1", "data:", "about:")):
                    out.append(f"request to another host: {url}")
        return out

    def close(self) -> None:
        self.cdp.close()
        self._profile.cleanup()
