"""The web UI's server: one static page written for thinktune and a JSON API over run folders and jobs.

The page is a reader of run folders and a launcher of the CLI, nothing more: every action is a `thinktune …`
subprocess (:mod:`thinktune.ui.jobs`), every view is read from files. Safety, on every request:

- off loopback an access token is required (``Authorization: Bearer``, the cookie the page gets, or ``?token=``
  once); a request without it is refused (401, a wrong one 403);
- the Host header must name this server (a web page elsewhere cannot reach a loopback server through DNS
  rebinding), and a state-changing request must be JSON from this origin (no cross-site form posts);
- a Content-Security-Policy lets the page load nothing from any other host: no CDN, no web fonts, no analytics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from thinktune.errors import ConfigError, JobConflict, PathRefused, ThinktuneError, UIError
from thinktune.ui import forms, live
from thinktune.ui import runs as runs_view
from thinktune.ui.jobs import STATE_DIR, Jobs
from thinktune.ui.paths import run_folder

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "messages.en.json": "application/json; charset=utf-8",
    "messages.zh.json": "application/json; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
COOKIE = "thinktune_ui_token"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_FIELD = re.compile(r"\b((?:model|data|lora|train|eval|generation)\.[a-z_0-9]+)")
POLL_SECONDS = 0.5
MAX_CHATS = 2
KEEPALIVE_SECONDS = 15.0


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


class Settings:
    def __init__(
        self,
        runs: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 7860,
        token: str | None = None,
        data_dirs: Sequence[Path] = (),
    ) -> None:
        self.runs = Path(runs).resolve()
        self.host = host
        self.port = port
        if not is_loopback(host) and not token:
            token = secrets.token_urlsafe(24)
        self.token = token
        self.data_dirs = [Path(d).resolve() for d in (data_dirs or [Path.cwd()])]

    @property
    def roots(self) -> list[Path]:
        """Folders a typed model, data or benchmark path may be in: the data folders, then the runs folder."""
        return [*self.data_dirs, self.runs]


# ------------------------------------------------------------------------------------------ the security layer


class Guard:
    """ASGI middleware: token, Host and origin checks, and the security headers on every response."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def _allowed_host(self, host_header: str) -> bool:
        name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        if not is_loopback(self.settings.host):
            return True  # bound to a network address: the token is the gate
        return is_loopback(name)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope["method"]
        problem = None
        if not self._allowed_host(headers.get("host", "")):
            problem = (
                421,
                "this server answers to its loopback address only (the Host header names another)",
            )
        token = self.settings.token
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if problem is None and token:
            given = None
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if given is None:
                for part in headers.get("cookie", "").split(";"):
                    k, _, v = part.strip().partition("=")
                    if k == COOKIE:
                        given = v
            from_query = (query.get("token") or [None])[0]
            if given is None and from_query is not None:
                given = from_query
            if given is None:
                problem = (
                    401,
                    "an access token is required: open the URL the server printed (with ?token=...)",
                )
            elif not secrets.compare_digest(given.encode(), token.encode()):
                problem = (403, "wrong access token")
            elif from_query is not None and method == "GET" and scope["path"] == "/":
                # the token from the printed URL becomes a cookie; the address bar loses it
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                await self._send(response, scope, receive, send)
                return
        if problem is None and method not in ("GET", "HEAD"):
            ctype = headers.get("content-type", "").split(";")[0].strip()
            origin = headers.get("origin")
            if ctype != "application/json":
                problem = (
                    415,
                    "requests that change something must be JSON (Content-Type: application/json)",
                )
            elif origin and origin.split("://", 1)[-1] != headers.get("host", ""):
                problem = (403, f"cross-origin request from {origin} refused")
        if problem is not None:
            await self._send(
                JSONResponse({"error": problem[1]}, status_code=problem[0]), scope, receive, send
            )
            return
        await self.app(scope, receive, self._with_headers(send, scope["path"]))

    async def _send(self, response: Response, scope: dict, receive: Any, send: Any) -> None:
        await response(scope, receive, self._with_headers(send, scope["path"]))

    def _with_headers(self, send: Any, path: str) -> Any:
        csp = REPORT_CSP if path.endswith("/report.html") else CSP

        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", csp.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                if not path.endswith("/report.html"):
                    extra.append((b"x-frame-options", b"DENY"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return wrapped


# ------------------------------------------------------------------------------------------ errors and bodies


def error_response(e: Exception) -> JSONResponse:
    status = 403 if isinstance(e, PathRefused) else 409 if isinstance(e, JobConflict) else 400
    body: dict[str, Any] = {"error": str(e)}
    if isinstance(e, ConfigError):
        body["fields"] = sorted(set(_FIELD.findall(str(e))))
    return JSONResponse(body, status_code=status)


async def body_of(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise UIError("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise UIError("the request body must be a JSON object")
    return data


def api(handler: Any) -> Any:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ThinktuneError as e:
            return error_response(e)

    return wrapped


async def _analysis(fn: Any, *args: Any) -> Any:
    """The data doctor or the memory plan on what the user typed: any failure (a model that does not load, a file
    that is not data) is the answer, shown beside the form, not a server error."""
    try:
        return await _sync(fn, *args)
    except ThinktuneError:
        raise
    except Exception as e:  # noqa: BLE001 - reported to the page with its type
        raise UIError(f"{type(e).__name__}: {e}") from None


def _sync(fn: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return run_in_threadpool(fn, *args)


# ------------------------------------------------------------------------------------------ chat workers


class ChatWorker:
    """A `python -m thinktune.ui.chatworker RUN` process: the page's chat holds it while it is open."""

    def __init__(self, run_dir: Path, log: Path) -> None:
        self.log = open(log, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "thinktune.ui.chatworker", str(run_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self.lines: queue.Queue[dict | None] = queue.Queue()
        self.ready: dict[str, Any] | None = None
        self.error: str | None = None
        self.busy = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("ready"):
                self.ready = msg
            elif "error" in msg and self.ready is None:
                self.error = msg["error"]
            self.lines.put(msg)
        self.lines.put(None)

    def state(self) -> dict[str, Any]:
        alive = self.proc.poll() is None
        return {"ready": self.ready, "error": self.error, "alive": alive}

    def ask(self, message: dict[str, Any]) -> Any:
        """Stream the worker's lines for one question (ends with {"end": true} or when the worker stops)."""
        with self.busy:
            while self.ready is None and self.error is None and self.proc.poll() is None:
                msg = self.lines.get()
                if msg is None:
                    break
            if self.ready is None:
                yield json.dumps({"error": self.error or "the chat worker stopped; see its log"}) + "\n"
                return
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(message, ensure_ascii=False) + "\n")
            self.proc.stdin.flush()
            while True:
                msg = self.lines.get()
                if msg is None:
                    yield json.dumps({"error": "the chat worker stopped; see its log"}) + "\n"
                    return
                yield json.dumps(msg, ensure_ascii=False) + "\n"
                if msg.get("end"):
                    return

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------------------------------ the app


def create_app(settings: Settings) -> Starlette:
    runs = settings.runs
    runs.mkdir(parents=True, exist_ok=True)
    jobs = Jobs(runs)
    chats: dict[str, ChatWorker] = {}

    def cwd() -> Path:
        return settings.data_dirs[0]

    async def index(request: Request) -> Response:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name])

    @api
    async def info(request: Request) -> Response:
        from thinktune import __version__

        return JSONResponse(
            {
                "version": __version__,
                "runs": str(runs),
                "data_dirs": [str(d) for d in settings.data_dirs],
                "token_required": bool(settings.token),
                "python": sys.executable,
            }
        )

    @api
    async def list_runs(request: Request) -> Response:
        rows = await _sync(runs_view.list_runs, runs, jobs)
        return JSONResponse(
            {"runs": rows, "gpu_jobs": [jobs.describe(j) for j in jobs.running(gpu_only=True)]}
        )

    @api
    async def run_detail(request: Request) -> Response:
        name = run_folder(runs, request.path_params["name"]).name
        return JSONResponse(await _sync(runs_view.run_detail, runs, name, jobs))

    @api
    async def overlay(request: Request) -> Response:
        names = [n for n in request.query_params.get("runs", "").split(",") if n]
        if not 2 <= len(names) <= 5:
            raise UIError("runs: select between 2 and 5 runs to overlay (comma-separated names)")
        names = [run_folder(runs, n).name for n in names]
        from thinktune.rundir import RunDir

        curves = {}
        for n in names:
            recs = RunDir(runs / n).metrics_records()
            curves[n] = {
                "train": [[r["step"], r["loss"]] for r in recs if r.get("loss") is not None],
                "eval": [[r["step"], r["eval_loss"]] for r in recs if r.get("eval_loss") is not None],
            }
        return JSONResponse({"curves": curves, "diff": runs_view.config_diff(runs, names)})

    @api
    async def schema(request: Request) -> Response:
        return JSONResponse(
            {"fields": forms.schema(), "recipes": forms.recipes(), "fixed": {"train.output_dir": str(runs)}}
        )

    @api
    async def base(request: Request) -> Response:
        data = await body_of(request)
        path = forms.base_path(runs, data.get("base") or {})
        return JSONResponse({"values": forms.base_values(path), "path": str(path)})

    def _train_plan(data: dict[str, Any]) -> dict[str, Any]:
        return forms.train_command(runs, data.get("base") or {}, data.get("values") or {}, settings.roots)

    @api
    async def validate(request: Request) -> Response:
        data = await body_of(request)
        plan = await _sync(_train_plan, data)
        return JSONResponse(
            {"ok": True, "argv": plan["argv"], "command": _shell_text(plan["argv"]), "run": plan["run"]}
        )

    @api
    async def doctor(request: Request) -> Response:
        from thinktune.ui.analysis import data_doctor

        data = await body_of(request)
        _, _, cfg = forms.resolve(runs, data.get("base") or {}, data.get("values") or {}, settings.roots)
        try:
            example = int(data.get("example") or 0)
        except (TypeError, ValueError):
            raise UIError(f"example: {data.get('example')!r} is not a whole number") from None
        return JSONResponse(await _analysis(data_doctor, cfg, example))

    @api
    async def plan(request: Request) -> Response:
        from thinktune.ui.analysis import memory_plan

        data = await body_of(request)
        _, _, cfg = forms.resolve(runs, data.get("base") or {}, data.get("values") or {}, settings.roots)
        try:
            vram = int(data.get("vram") or 8 * 10**9)
        except (TypeError, ValueError):
            raise UIError(f"vram: {data.get('vram')!r} is not a number of bytes") from None
        return JSONResponse(json.loads(json.dumps(await _analysis(memory_plan, cfg, vram), default=str)))

    @api
    async def gpus(request: Request) -> Response:
        from thinktune.ui.analysis import gpu_choices

        return JSONResponse({"gpus": await _sync(gpu_choices)})

    def _action(kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """(argv, run, gpu, label) of an action; raises with the CLI's message when it cannot run."""
        run = data.get("run")
        if kind == "train":
            p = _train_plan(data)
            return {
                "argv": p["argv"],
                "run": None,
                "expected_run": p["run"],
                "gpu": True,
                "label": f"train {p['run']}",
            }
        if kind == "inspect-data":
            argv = forms.inspect_command(
                runs, data.get("base") or {}, data.get("values") or {}, settings.roots
            )
            return {"argv": argv, "run": None, "expected_run": None, "gpu": False, "label": "inspect-data"}
        if not run:
            raise UIError(f"{kind}: which run? (give its name)")
        name = run_folder(runs, str(run)).name
        params = data.get("params") or {}
        if kind == "resume":
            argv = forms.resume_command(runs, name)
        elif kind == "eval":
            argv = forms.eval_command(runs, name, params, settings.roots)
        elif kind == "compare":
            argv = forms.compare_command(runs, name, params, settings.roots)
        elif kind == "export":
            argv = forms.export_command(runs, name, params)
        elif kind == "report":
            argv = forms.report_command(runs, name)
        else:
            raise UIError(f"unknown action {kind!r}")
        return {
            "argv": argv,
            "run": name,
            "expected_run": None,
            "gpu": kind != "report",
            "label": f"{kind} {name}",
        }

    @api
    async def action(request: Request) -> Response:
        kind = request.path_params["kind"]
        data = await body_of(request)
        a = await _sync(_action, kind, data)
        if data.get("dry_run"):
            return JSONResponse(
                {"argv": a["argv"], "command": _shell_text(a["argv"]), "run": a["run"] or a["expected_run"]}
            )
        job = jobs.start(
            kind,
            a["argv"],
            cwd=cwd(),
            run=a["run"],
            expected_run=a["expected_run"],
            gpu=a["gpu"],
            force=bool(data.get("force")),
            label=a["label"],
        )
        return JSONResponse({"job": jobs.describe(job), "command": _shell_text(job.argv)})

    @api
    async def list_jobs(request: Request) -> Response:
        return JSONResponse({"jobs": [jobs.describe(j) for j in await _sync(jobs.all)]})

    @api
    async def job_detail(request: Request) -> Response:
        return JSONResponse(jobs.describe(jobs.get(request.path_params["id"])))

    @api
    async def stop(request: Request) -> Response:
        await body_of(request)
        return JSONResponse({"job": jobs.describe(jobs.stop(request.path_params["id"]))})

    def _feed_target(request: Request) -> tuple[str | None, str | None]:
        run = request.query_params.get("run") or None
        job = request.query_params.get("job") or None
        if run:
            run = run_folder(runs, run).name
        if job:
            jobs.get(job)
        if not run and not job:
            raise UIError("give ?run=NAME or ?job=ID")
        return run, job

    @api
    async def tail(request: Request) -> Response:
        run, job = _feed_target(request)
        cursor = live.Cursor.decode(request.query_params.get("pos"))
        events, cursor, ended = await _sync(live.step, runs, jobs, run, job, cursor)
        return JSONResponse(
            {
                "events": events,
                "pos": cursor.encode(),
                "ended": ended,
                "status": live.status(runs, jobs, run, job),
            }
        )

    @api
    async def stream(request: Request) -> Response:
        run, job = _feed_target(request)
        cursor = live.Cursor.decode(request.headers.get("last-event-id") or request.query_params.get("pos"))

        async def events() -> Any:
            nonlocal cursor
            yield "retry: 2000\n\n"
            last_status = None
            quiet = 0.0
            while True:
                batch, cursor, ended = await _sync(live.step, runs, jobs, run, job, cursor)
                for e in batch:
                    yield f"id: {e['id']}\nevent: {e['event']}\ndata: {json.dumps(e['data'], ensure_ascii=False)}\n\n"
                st = await _sync(live.status, runs, jobs, run, job)
                if st != last_status:
                    yield f"id: {cursor.encode()}\nevent: status\ndata: {json.dumps(st, ensure_ascii=False)}\n\n"
                    last_status = st
                if ended:
                    yield f"id: {cursor.encode()}\nevent: end\ndata: {json.dumps(st, ensure_ascii=False)}\n\n"
                    return
                if batch:
                    quiet = 0.0
                else:
                    quiet += POLL_SECONDS
                    if quiet >= KEEPALIVE_SECONDS:
                        quiet = 0.0
                        yield ": keepalive\n\n"
                if await request.is_disconnected():
                    return
                await asyncio.sleep(POLL_SECONDS)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
        )

    @api
    async def report_file(request: Request) -> Response:
        folder = run_folder(runs, request.path_params["name"])
        path = folder / "report.html"
        if not path.is_file():
            raise UIError(
                f"{path} does not exist yet: write it with the Report button (thinktune report {folder})"
            )
        return FileResponse(path, media_type="text/html; charset=utf-8")

    # ------------------------------------------------------------------ chat

    @api
    async def chat_open(request: Request) -> Response:
        data = await body_of(request)
        folder = run_folder(runs, str(data.get("run") or ""))
        from thinktune.rundir import RunDir

        RunDir(folder).require_adapter()
        if not data.get("force"):
            busy = jobs.running(gpu_only=True)
            if busy:
                raise JobConflict(
                    f"{busy[0].label} is running (job {busy[0].id}); chat loads the model too. Wait for it, stop "
                    "it, or tick 'run anyway'."
                )
        while len(chats) >= MAX_CHATS:  # each holds a model: the oldest goes
            oldest = next(iter(chats))
            await _sync(chats.pop(oldest).close)
        chat_id = secrets.token_hex(6)
        log_dir = runs / STATE_DIR / "chat"
        log_dir.mkdir(parents=True, exist_ok=True)
        chats[chat_id] = ChatWorker(folder, log_dir / f"{folder.name}-{chat_id}.log")
        return JSONResponse({"chat": chat_id})

    def _chat(request: Request) -> ChatWorker:
        worker = chats.get(request.path_params["id"])
        if worker is None:
            raise UIError("this chat is closed; open it again")
        return worker

    @api
    async def chat_state(request: Request) -> Response:
        return JSONResponse(_chat(request).state())

    @api
    async def chat_ask(request: Request) -> Response:
        worker = _chat(request)
        data = await body_of(request)
        question = str(data.get("question") or "").strip()
        if not question:
            raise UIError("question: type a question first")
        sides = [s for s in (data.get("sides") or ["tuned"]) if s in ("tuned", "base")] or ["tuned"]
        thinking = data.get("thinking") if data.get("thinking") in (True, False) else None
        message = {
            "question": question,
            "sides": sides,
            "thinking": thinking,
            "system": data.get("system") or None,
        }
        return StreamingResponse(worker.ask(message), media_type="application/x-ndjson")

    @api
    async def chat_reset(request: Request) -> Response:
        worker = _chat(request)
        await body_of(request)
        return StreamingResponse(worker.ask({"reset": True}), media_type="application/x-ndjson")

    @api
    async def chat_close(request: Request) -> Response:
        await body_of(request)
        worker = chats.pop(request.path_params["id"], None)
        if worker is not None:
            await _sync(worker.close)
        return JSONResponse({"closed": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        for worker in list(chats.values()):
            worker.close()
        chats.clear()

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/api/info", info),
        Route("/api/runs", list_runs),
        Route("/api/runs/{name}", run_detail),
        Route("/api/runs/{name}/report.html", report_file),
        Route("/api/overlay", overlay),
        Route("/api/schema", schema),
        Route("/api/form/base", base, methods=["POST"]),
        Route("/api/form/validate", validate, methods=["POST"]),
        Route("/api/form/doctor", doctor, methods=["POST"]),
        Route("/api/form/plan", plan, methods=["POST"]),
        Route("/api/gpus", gpus),
        Route("/api/actions/{kind}", action, methods=["POST"]),
        Route("/api/jobs", list_jobs),
        Route("/api/jobs/{id}", job_detail),
        Route("/api/jobs/{id}/stop", stop, methods=["POST"]),
        Route("/api/tail", tail),
        Route("/api/stream", stream),
        Route("/api/chat", chat_open, methods=["POST"]),
        Route("/api/chat/{id}", chat_state),
        Route("/api/chat/{id}/ask", chat_ask, methods=["POST"]),
        Route("/api/chat/{id}/reset", chat_reset, methods=["POST"]),
        Route("/api/chat/{id}/close", chat_close, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.jobs = jobs
    app.state.settings = settings
    app.state.chats = chats
    app.add_middleware(Guard, settings=settings)
    return app


def _shell_text(argv: list[str]) -> str:
    import shlex

    return shlex.join(argv)
