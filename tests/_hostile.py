"""Shared helpers for the hostile-input tests: a hang watchdog, hostile text, and sanity checks on loader results."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator

from hypothesis import strategies as st

from thinktune.data.load import LoadResult
from thinktune.data.reasoning import THINK_CLOSE, THINK_OPEN


class Hang(Exception):
    """Raised in the main thread by :func:`watchdog` when the guarded code runs far past any sane time."""


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Turn a hang into a test failure (SIGALRM in the main thread). A generous bound, not a timing assertion:
    it only fires on something that would otherwise block CI forever (a catastrophic regex, a parser loop)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _fire(signum, frame):
        raise Hang(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


#: Fragments that break naive parsers and templates: think tags, special tokens, placeholders, Jinja, line and
#: paragraph separators JSON allows inside strings, control characters, BOM, lone surrogates, CSV syntax.
HOSTILE_PIECES = [
    THINK_OPEN,
    THINK_CLOSE,
    "<|im_end|>",
    "<|im_start|>assistant\n",
    "<|endoftext|>",
    "<｜end▁of▁sentence｜>",
    "<｜Assistant｜>",
    "{answer}",
    "{question}",
    "{reasoning}",
    "{system}",
    "{{ messages }}",
    "{% if true %}x{% endif %}",
    "{#",
    "\x00",
    "\r\n",
    "\r",
    "\n",
    "\u2028",
    "\u2029",
    "\x85",
    "\x0b",
    "\x0c",
    "\x1c",
    "\ufeff",
    "\ud800",
    "\udc80",
    '"',
    "'",
    "\\",
    ",",
    "The answer is (C).",
    "答案：B",
    "\\boxed{A}",
    "**D**",
    " " * 5,
    "é",
    "🙂",
]

hostile_text = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(HOSTILE_PIECES)), max_size=6).map(
    "".join
)

#: Text a well-formed row may hold: anything printable or not, except what the loader must refuse (lone
#: surrogates, think tags) and what is blank after stripping.
clean_text = (
    st.text(
        alphabet=st.characters(exclude_categories=("Cs",)),
        min_size=1,
        max_size=40,
    )
    .filter(lambda t: t.strip() and THINK_OPEN not in t and THINK_CLOSE not in t)
    .map(str.strip)
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=8,
)


def assert_sane(result: LoadResult, reserved: tuple[str, ...] = ()) -> None:
    """What every successful load guarantees, whatever the input was."""
    assert isinstance(result, LoadResult)
    assert result.examples, "a load without examples must raise DataError"
    assert result.rows_read == len(result.examples) + len(result.bad_rows) + len(result.duplicates)
    for ex in result.examples:
        for name in ("question", "reasoning", "answer"):
            value = getattr(ex, name)
            assert isinstance(value, str) and value == value.strip(), (name, value)
            value.encode("utf-8")  # no lone surrogates: every field is writable as UTF-8
            assert not any(token in value for token in reserved), (name, value)
        assert ex.question and ex.answer
        assert THINK_OPEN not in ex.reasoning and THINK_CLOSE not in ex.reasoning
        assert ex.system is None or (isinstance(ex.system, str) and ex.system.strip())
    for bad in result.bad_rows:
        assert bad.row >= 1 and isinstance(bad.reason, str) and bad.reason
    # data_report.json must always be writable
    json.dumps(result.summary(), ensure_ascii=False).encode("utf-8")
