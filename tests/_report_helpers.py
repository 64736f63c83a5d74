"""Drive Debian's headless Chromium over the Chrome DevTools Protocol through a pipe (no extra package, no port).

`--remote-debugging-pipe` makes Chromium read NUL-terminated JSON commands from fd 3 and write replies and
events to fd 4. `inspect_page` loads a file, collects console errors, exceptions, failed or non-local
requests, waits for every <img> to decode, reports what the page holds and saves a full-page screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _high_fd(fd: int) -> int:
    """Move an fd above 10 so dup2 onto 3 and 4 in the child cannot clobber the other one."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return new


class CDP:
    def __init__(self, executable: str, user_data_dir: str, log_path: Path) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        cmd_r, resp_w = _high_fd(cmd_r), _high_fd(resp_w)

        def child() -> None:
            os.dup2(cmd_r, 3)
            os.dup2(resp_w, 4)

        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=(3, 4),  # the child sees the pipes as fds 3 and 4 (dup2 in preexec_fn)
            preexec_fn=child,  # noqa: PLW1509 - single-threaded test helper
        )
        os.close(cmd_r)
        os.close(resp_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from Chromium")
            ready, _, _ = select.select([self._resp_r], [], [], left)
            if ready:
                chunk = os.read(self._resp_r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium exited (status {self.proc.poll()})")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(
        self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60
    ) -> dict:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while True:
            ev = self._read_message(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._resp_r)
        self._log.close()


PAGE_FACTS = """
(async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const box = e => e.getBoundingClientRect();
  return JSON.stringify({
    title: document.title,
    scripts: document.scripts.length,
    height: document.documentElement.scrollHeight,
    images: imgs.map(i => ({id: i.id, alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth,
      naturalHeight: i.naturalHeight, width: box(i).width, height: box(i).height,
      visible: getComputedStyle(i).display !== 'none' && getComputedStyle(i).visibility !== 'hidden',
      src: i.src.slice(0, 22)})),
    sections: Array.from(document.querySelectorAll('section[id]')).map(s => ({id: s.id,
      title: (s.querySelector('h2') || {}).textContent, missing: !!s.querySelector('.missing')})),
    details: document.querySelectorAll('details').length,
    closedDetails: Array.from(document.querySelectorAll('details')).filter(d => !d.open).length,
    text: document.body.innerText,
  });
})()
"""


def inspect_page(html_path: Path, screenshot: Path, width: int = 1200) -> dict[str, Any]:
    """Open the page in headless Chromium; return facts, console errors, requests; save a full-page PNG."""
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("chromium is not installed")
    with tempfile.TemporaryDirectory(prefix="thinktune-chromium-") as profile:
        cdp = CDP(exe, profile, Path(profile) / "chromium.log")
        try:
            target = cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            sid = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                cdp.send(f"{domain}.enable", session=sid)
            cdp.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                session=sid,
            )
            cdp.send("Page.navigate", {"url": html_path.resolve().as_uri()}, session=sid)
            cdp.wait_event("Page.loadEventFired")
            facts = json.loads(
                cdp.send(
                    "Runtime.evaluate",
                    {"expression": PAGE_FACTS, "awaitPromise": True, "returnByValue": True},
                    session=sid,
                )["result"]["value"]
            )
            shot = cdp.send(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {
                        "x": 0,
                        "y": 0,
                        "width": width,
                        "height": min(facts["height"], 16000),
                        "scale": 1,
                    },
                },
                session=sid,
            )
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            time.sleep(0.2)  # let late console events arrive
            cdp.send("Runtime.evaluate", {"expression": "1"}, session=sid)
        finally:
            cdp.close()
    errors = []
    requests = []
    for ev in cdp.events:
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(
                " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            )
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(params["entry"].get("text", ""))
        elif method == "Network.loadingFailed":
            errors.append(f"request failed: {params.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            requests.append(params["request"]["url"])
    return {"facts": facts, "errors": errors, "requests": requests}
