"""Row layouts -> the canonical `Example(question, reasoning, answer, system)`.

Schemas: ``medical-o1`` (Question / Complex_CoT / Response), ``alpaca`` (instruction / input / output),
``messages`` (OpenAI role/content or ShareGPT from/value, with ``reasoning_content`` or inline
``<think>...</think>``), ``columns`` (an explicit mapping), and thinktune's own ``question`` / ``reasoning`` /
``answer`` rows (a run folder's data/*.jsonl). ``auto`` picks one from the column names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from thinktune.data.reasoning import THINK_CLOSE, THINK_OPEN, split_think
from thinktune.data.sources import RowError
from thinktune.errors import DataError


@dataclass(frozen=True)
class Example:
    """One single-turn reasoning example. `meta` carries provenance (source row) and extras (MCQ options)."""

    question: str
    reasoning: str
    answer: str
    system: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


def detect_schema(columns: Sequence[str], source: str = "data") -> str:
    cols = set(columns)
    found = []
    if {"Question", "Complex_CoT", "Response"} <= cols:
        found.append("medical-o1")
    if {"instruction", "output"} <= cols:
        found.append("alpaca")
    if "messages" in cols or "conversations" in cols:
        found.append("messages")
    if {"question", "reasoning", "answer"} <= cols:
        found.append("thinktune")  # a run folder's data/train.jsonl and data/validation.jsonl
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(
            f"{source}: cannot tell the schema from the columns {sorted(cols)}. Expected medical-o1 "
            "(Question, Complex_CoT, Response), alpaca (instruction, input, output) or messages "
            "(messages/conversations). Otherwise map yours: data.schema=columns "
            "data.columns={question: ..., reasoning: ..., answer: ...}"
        )
    raise DataError(
        f"{source}: the columns {sorted(cols)} fit several schemas ({', '.join(found)}); choose one with "
        f"data.schema={found[0]} (or data.schema=columns with data.columns=...)."
    )


def _text(row: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    if key not in row or row[key] is None:
        if required:
            raise RowError(f"missing {key!r}")
        return None
    value = row[key]
    if not isinstance(value, str):
        raise RowError(f"{key!r} is {type(value).__name__}, expected text")
    return value


_ROLE_ALIASES = {
    "human": "user",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
    "user": "user",
    "assistant": "assistant",
}


def _from_messages(row: Mapping[str, Any]) -> tuple[str | None, str, str, str]:
    key = "messages" if "messages" in row else "conversations"
    turns = row.get(key)
    if not isinstance(turns, list):
        raise RowError(f"{key!r} is {type(turns).__name__}, expected a list of turns")
    system, user, assistant = None, [], []
    for i, t in enumerate(turns):
        if not isinstance(t, Mapping):
            raise RowError(f"{key}[{i}] is {type(t).__name__}, expected an object with role/content")
        role = t.get("role", t.get("from"))
        content = t.get("content", t.get("value"))
        if not isinstance(role, str) or role.lower() not in _ROLE_ALIASES:
            raise RowError(f"{key}[{i}] has role {role!r}; expected system/user/assistant (or human/gpt)")
        if not isinstance(content, str):
            raise RowError(f"{key}[{i}] content is {type(content).__name__}, expected text")
        role = _ROLE_ALIASES[role.lower()]
        if role == "system":
            system = content
        elif role == "user":
            user.append(content)
        else:
            assistant.append((content, t.get("reasoning_content", t.get("reasoning"))))
    if len(user) != 1 or len(assistant) != 1:
        raise RowError(
            f"has {len(user)} user and {len(assistant)} assistant turns; thinktune trains single-turn examples "
            "(one user turn, one assistant turn): split multi-turn conversations into separate rows"
        )
    content, reasoning = assistant[0]
    if reasoning is not None and not isinstance(reasoning, str):
        raise RowError(f"reasoning_content is {type(reasoning).__name__}, expected text")
    inline_reasoning, answer = split_think(content, "the assistant turn")
    # An explicit reasoning_content wins; otherwise the reasoning is whatever the content's think block held.
    return system, user[0], (reasoning or "").strip() or inline_reasoning, answer


def row_to_example(
    row: Mapping[str, Any], schema: str, columns: Mapping[str, str], reserved: Sequence[str] = ()
) -> Example:
    """Map one row onto an Example or raise RowError with the reason. `reserved` lists texts the tokenizer
    reads as control tokens (``Formatter.reserved``): a field holding one is refused, never tokenized as it."""
    if schema == "medical-o1":
        q, r, a = _text(row, "Question"), _text(row, "Complex_CoT"), _text(row, "Response")
        system = None
        if THINK_CLOSE in a or THINK_OPEN in a:
            inline, a = split_think(a, "'Response'")
            r = r or inline
    elif schema == "alpaca":
        instruction, inp = _text(row, "instruction"), _text(row, "input", required=False)
        q = f"{instruction}\n\n{inp}" if inp and inp.strip() else instruction
        r, a = split_think(_text(row, "output"), "'output'")
        system = _text(row, "system", required=False)
    elif schema == "messages":
        system, q, r, a = _from_messages(row)
    elif schema == "columns":
        q = _text(row, columns["question"])
        a = _text(row, columns["answer"])
        system = _text(row, columns["system"], required=False) if "system" in columns else None
        if "reasoning" in columns:
            r = _text(row, columns["reasoning"])
            if THINK_CLOSE in a or THINK_OPEN in a:
                _, a = split_think(a, repr(columns["answer"]))
        else:
            r, a = split_think(a, repr(columns["answer"]))
    else:
        raise DataError(f"unknown schema {schema!r}")
    q, r, a = q.strip(), (r or "").strip(), a.strip()
    if not q:
        raise RowError("empty question")
    if not a:
        raise RowError("empty answer")
    if THINK_OPEN in r or THINK_CLOSE in r:
        raise RowError("the reasoning contains a nested '<think>' or '</think>' tag")
    for name, value in (("question", q), ("reasoning", r), ("answer", a), ("system", system)):
        for token in reserved:
            if value and token in value:
                raise RowError(
                    f"the {name} contains {token!r}, which the tokenizer reads as a control token, not as text"
                )
    return Example(question=q, reasoning=r, answer=a, system=(system.strip() or None) if system else None)
