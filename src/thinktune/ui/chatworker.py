"""The page's chat: a worker process that holds a run's model (base + adapter, opened as `thinktune chat` opens
it) and answers questions, streaming.

    python -m thinktune.ui.chatworker RUN_DIR

Reads one JSON object per line on stdin, writes one per line on stdout:

    <- {"ready": true, "family": ..., "can_toggle_thinking": ..., "model": ...}     (once the model is loaded)
    -> {"question": "...", "sides": ["tuned", "base"], "thinking": null | true | false, "system": null | "..."}
    <- {"side": "tuned", "kind": "reasoning" | "answer", "text": "..."}          (streamed pieces)
    <- {"side": "tuned", "done": {...the reply...}}                               (one per side)
    <- {"end": true}
    -> {"reset": true}                                                            (forget the conversation)
    <- {"error": "..."}                                                           (a ThinktuneError, by message)

Base and tuned share the loaded weights (the base answers with the adapter switched off) and keep their own
histories. The worker ends when stdin closes (the server went away).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    from thinktune.errors import ThinktuneError
    from thinktune.infer.chat import ChatSession, load_session
    from thinktune.utils import setup_logging

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        _emit({"error": "usage: python -m thinktune.ui.chatworker RUN_DIR"})
        return 2
    setup_logging(False)  # logs go to stderr, which the server keeps apart from this protocol
    try:
        tuned = load_session(args[0], None, None)
    except ThinktuneError as e:
        _emit({"error": str(e)})
        return 2
    base = ChatSession(dataclasses.replace(tuned.session, adapter_dir=None, _generator=None))
    sessions = {"tuned": tuned, "base": base}
    d = tuned.formatter.describe()
    _emit(
        {
            "ready": True,
            "family": d.get("family"),
            "can_toggle_thinking": tuned.can_toggle_thinking,
            "model": tuned.session.model_name,
            "adapter": str(tuned.session.adapter_dir),
        }
    )
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            _emit({"error": "not a JSON line"})
            continue
        if msg.get("reset"):
            for s in sessions.values():
                s.history.clear()
            _emit({"end": True})
            continue
        question = str(msg.get("question") or "").strip()
        if not question:
            _emit({"error": "empty question"})
            continue
        thinking = msg.get("thinking")
        for name in [s for s in (msg.get("sides") or ["tuned"]) if s in sessions]:
            s = sessions[name]
            s.thinking = thinking if thinking in (True, False) and s.can_toggle_thinking else None
            s.system = msg.get("system") or None
            try:
                reply = s.reply(
                    question, lambda kind, text, n=name: _emit({"side": n, "kind": kind, "text": text})
                )
            except ThinktuneError as e:
                _emit({"side": name, "error": str(e)})
                continue
            _emit({"side": name, "done": {k: v for k, v in reply.to_dict().items() if k != "prompt"}})
        _emit({"end": True})
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
