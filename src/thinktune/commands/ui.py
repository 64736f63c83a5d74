"""`thinktune ui`: the local web page (needs the `ui` extra: pip install 'thinktune[ui]')."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from thinktune.commands.common import add_verbose
from thinktune.errors import UsageError


def add_ui(sub) -> Callable:
    p = sub.add_parser(
        "ui",
        help="a local web page for the whole loop: runs, live loss chart, new run with data doctor and memory "
        "plan, evaluate and compare, chat, export",
        description="Start a local web server and print a URL that opens. The page reads the run folders under "
        "--runs and runs every action as a `thinktune ...` subprocess in its own session, logging to a file in "
        "the run folder: closing the page or stopping this server never stops a job, and a new server finds "
        "the jobs again. Loopback only by default; any other --host requires an access token (printed; random "
        "unless --token). The page loads nothing from any other host.",
        epilog="examples:\n  thinktune ui\n  thinktune ui --runs runs --port 7860 --open\n"
        "  thinktune ui --host 0.0.0.0 --token MY-SECRET      # reachable from other machines, token required\n"
        "  ssh -L 7860:127.0.0.1:7860 gpu-box                 # or: keep loopback and tunnel to it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    p.add_argument("--runs", default="runs", help="folder of run folders (default: runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--token", help="access token (required off loopback; default there: a random one)")
    p.add_argument(
        "--data-dir",
        action="append",
        metavar="DIR",
        help="a folder data files, models and benchmarks typed into the page may be in (repeatable; default: "
        "the current folder). Relative paths on the page are taken from the first.",
    )
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    return _run_ui


def _run_ui(args: argparse.Namespace) -> int:
    import socket
    from pathlib import Path

    try:
        import uvicorn

        from thinktune.ui.server import Settings, create_app, is_loopback
    except ImportError as e:
        raise UsageError(
            f"thinktune ui needs the ui extra ({e.name} is not installed): pip install 'thinktune[ui]'"
        ) from None

    if args.token is not None and len(args.token) < 8:
        raise UsageError("--token: use at least 8 characters")
    data_dirs = [Path(d) for d in (args.data_dir or [])]
    for d in data_dirs:
        if not d.is_dir():
            raise UsageError(f"--data-dir {d}: not a folder")
    settings = Settings(
        Path(args.runs), host=args.host, port=args.port, token=args.token, data_dirs=data_dirs
    )
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        sock.close()
        raise UsageError(
            f"cannot listen on {args.host}:{args.port} ({e.strerror}); is another thinktune ui running? "
            "Choose another --port (0 picks a free one)."
        ) from None
    port = sock.getsockname()[1]
    settings.port = port
    app = create_app(settings)
    shown = args.host if is_loopback(args.host) else "127.0.0.1"
    shown = f"[{shown}]" if ":" in shown else shown
    suffix = f"/?token={settings.token}" if settings.token else "/"
    url = f"http://{shown}:{port}{suffix}"
    print(f"thinktune ui: runs in {settings.runs}; data folders: {', '.join(map(str, settings.data_dirs))}")
    print(f"open {url}", flush=True)
    if not is_loopback(args.host):
        print(
            f"listening on {args.host}:{port}: from another machine open http://{socket.gethostname()}:{port}"
            f"{suffix} (every request without the token is refused)",
            flush=True,
        )
    print("closing the page or stopping this server (Ctrl-C) never stops a running job", flush=True)
    if args.open:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=2, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0
