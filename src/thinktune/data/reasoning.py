"""All reasoning markup in one place: writing and reading ``<think>...</think>``.

- :func:`think_block` writes the block the Formatter puts before an answer;
- :func:`split_think` reads a *training row* strictly (a malformed block is the row's error, with the reason);
- :func:`split_reasoning` reads a *generation* leniently (every shape a reasoning model produces is accepted
  and described: opened by the prompt or by the model, closed or not);
- :class:`ReasoningSplitter` does what :func:`split_reasoning` does on streamed text, piece by piece, for chat.
  Streaming and splitting the whole text agree (tested on every prefix split).
"""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class MarkupError(ValueError):
    """A training row's think markup is malformed; the message says how (the row is reported as bad)."""


def think_block(reasoning: str, *, force: bool = False) -> str:
    """The think block before an answer (empty without reasoning, unless `force`: a block the prompt opened)."""
    if not reasoning and not force:
        return ""
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n"


def split_think(text: str, what: str) -> tuple[str, str]:
    """'<think>R</think>A' -> (R, A). A closing tag without an opening one counts everything before it as
    reasoning (R1 outputs whose <think> was in the prompt). An opened, never-closed block is an error."""
    opens, closes = text.count(THINK_OPEN), text.count(THINK_CLOSE)
    if opens > closes:
        raise MarkupError(f"'<think>' is opened but never closed in {what}")
    if closes == 0:
        return "", text.strip()
    if closes > 1:
        raise MarkupError(f"{what} has {closes} '</think>' tags; expected one reasoning block")
    before, after = text.split(THINK_CLOSE, 1)
    if THINK_OPEN in after:
        raise MarkupError(f"{what} has '<think>' after '</think>'; expected one reasoning block first")
    if opens:
        pre, reasoning = before.split(THINK_OPEN, 1)
        if pre.strip():
            raise MarkupError(f"{what} has text before '<think>'; the reasoning must come first")
    else:
        reasoning = before
    return reasoning.strip(), after.strip()


def split_reasoning(text: str, prompt_opens_think: bool = False) -> tuple[str, str, bool, bool]:
    """Split generated text into (reasoning, answer, think_closed, think_opened).

    The shapes a reasoning model produces:
    - the prompt opened ``<think>`` (R1 revisions, plain-text template): the text starts inside the block
      (a model that writes ``<think>`` again anyway is tolerated);
    - the model opens ``<think>`` itself (Qwen3, original R1 template), possibly after a short preamble;
    - the block is never closed (ran out of tokens or looped): everything is reasoning, the answer is empty;
    - ``</think>`` without any ``<think>`` (a template that opens it out of sight): text before it is reasoning;
    - no think block at all: everything is the answer.
    Text outside the block before ``<think>`` belongs to the answer (it is what the user reads).
    """
    body, preamble = text, ""
    opened = prompt_opens_think
    if opened:
        stripped = body.lstrip()
        if stripped.startswith(THINK_OPEN):
            body = stripped[len(THINK_OPEN) :]
    else:
        at, close = body.find(THINK_OPEN), body.find(THINK_CLOSE)
        if at >= 0 and (close < 0 or at < close):
            preamble, body, opened = body[:at], body[at + len(THINK_OPEN) :], True
        elif close >= 0:
            opened = True
    if not opened:
        return "", body.strip(), False, False
    if THINK_CLOSE not in body:
        return body.strip(), preamble.strip(), False, True
    reasoning, answer = body.split(THINK_CLOSE, 1)
    answer = (preamble.strip() + "\n\n" + answer.strip()).strip() if preamble.strip() else answer.strip()
    return reasoning.strip(), answer, True, True


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
