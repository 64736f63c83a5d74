"""Verifiable problems for the reinforcement stage: rows with a checkable answer, from any data source.

Two row layouts, told apart row by row:

- multiple choice: ``question``, ``options`` (letter -> text, or a list read as A, B, C...) and ``answer_idx`` (the
  right letter, or a 0-based index): the MedAgentsBench layout that ``thinktune eval --benchmark`` reads;
- open-ended: ``Open-ended Verifiable Question`` and ``Ground-True Answer`` (FreedomIntelligence/medical-o1-
  verifiable-problem), or ``question`` and a short ``answer`` with optional ``aliases`` (the bundled
  ``sample:open``).

Each becomes a :class:`~thinktune.evals.mcq.Question`, so the prompt is the one `eval` renders (the lettered
options and the instruction to end with the letter) and the answer is graded by the one grader
(:func:`thinktune.evals.grading.grade`). Rows come from :func:`thinktune.data.sources.read_rows` (files, hub ids,
``ms:``, the bundled sample); bad rows are listed with their row numbers, duplicates dropped and counted.

In a run folder the problems are stored as examples (``data/train.jsonl``, ``data/validation.jsonl``) whose
question is the rendered user message and whose ``meta`` keeps the options, the letter and the aliases;
:func:`to_example` and :meth:`Question.from_example` convert both ways, so a resumed run, `eval` and `compare`
read back exactly the prompts that were trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from thinktune.data.load import BadRow
from thinktune.data.schemas import Example
from thinktune.data.sources import RowError, read_rows, undecodable
from thinktune.errors import DataError
from thinktune.evals.mcq import Question, _answer_letter, _options

log = logging.getLogger(__name__)

OPEN_QUESTION, OPEN_ANSWER = "Open-ended Verifiable Question", "Ground-True Answer"

FORMAT_HINT = (
    "expected multiple-choice rows (question, options, answer_idx) or open-ended rows (`Open-ended Verifiable "
    "Question` and `Ground-True Answer`, or question, answer and optional aliases)"
)


@dataclass
class ProblemSet:
    questions: list[Question]
    source: str
    rows_read: int
    bad_rows: list[BadRow] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "schema": "verifiable problems",
            "rows_read": self.rows_read,
            "examples": len(self.questions),
            "multiple_choice": sum(q.options is not None for q in self.questions),
            "open_ended": sum(q.open_ended for q in self.questions),
            "bad_rows": [{"row": b.row, "reason": b.reason} for b in self.bad_rows],
            "duplicates_removed": len(self.duplicates),
            "duplicate_rows": [{"row": r, "duplicate_of_row": o} for r, o in self.duplicates],
        }


def _text(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"{key!r} is missing or empty")
    return value.strip()


def row_to_question(row: Mapping[str, Any], rowno: int, system: str | None = None) -> Question:
    """One row as a Question, or RowError with the reason."""
    if not isinstance(row, Mapping):
        raise RowError("expected a JSON object")
    if undecodable(row):
        raise RowError("undecodable bytes (not UTF-8) or a lone surrogate escape; re-save the file as UTF-8")
    own_system = row.get("system") if isinstance(row.get("system"), str) and row["system"].strip() else None
    system = own_system.strip() if own_system else system
    if OPEN_QUESTION in row or OPEN_ANSWER in row:
        text, answer = _text(row, OPEN_QUESTION), _text(row, OPEN_ANSWER)
        return Question(text, row=rowno, reference=answer, system=system, verifiable=True)
    if "options" in row:
        text = _text(row, "question")
        options = _options(row.get("options"))
        if options is None:
            raise RowError("`options` must map at least two letters (A, B, ...) to texts")
        letter = _answer_letter(row.get("answer_idx"), options)
        if letter is None:
            raise RowError(f"answer_idx {row.get('answer_idx')!r} is not one of the options {list(options)}")
        return Question(text, options, letter, rowno, reference=options[letter], system=system)
    if "question" in row and "answer" in row:
        text, answer = _text(row, "question"), _text(row, "answer")
        aliases = row.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise RowError("`aliases` must be a list of texts")
        return Question(
            text, row=rowno, reference=answer, system=system, aliases=tuple(a.strip() for a in aliases if a.strip()),
            verifiable=True,
        )  # fmt: skip
    raise RowError(f"has columns {sorted(map(str, row))}; {FORMAT_HINT}")


def load_problems(
    source: str,
    *,
    config_name: str | None = None,
    split: str = "train",
    on_bad_row: str = "skip",
    system_prompt: str | None = None,
    reserved: Sequence[str] = (),
) -> ProblemSet:
    """Read every verifiable problem of a source. `reserved` (``Formatter.reserved``) makes a row holding a
    control-token text bad, as in training."""
    name, rows = read_rows(source, config_name, split)
    questions: list[Question] = []
    bad: list[BadRow] = []
    dups: list[tuple[int, int]] = []
    seen: dict[tuple, int] = {}
    rows_read = 0
    for rowno, row in rows:
        rows_read += 1
        try:
            if isinstance(row, RowError):
                raise row
            q = row_to_question(row, rowno, system_prompt)
            texts = [q.text, q.reference or "", q.system or "", *(q.options or {}).values(), *q.aliases]
            for token in reserved:
                if any(token in t for t in texts):
                    raise RowError(
                        f"contains {token!r}, which the tokenizer reads as a control token, not as text"
                    )
        except RowError as e:
            bad.append(BadRow(name, rowno, str(e)))
            continue
        key = (q.system, q.text, tuple((q.options or {}).items()), q.answer, q.reference)
        if key in seen:
            dups.append((rowno, seen[key]))
            continue
        seen[key] = rowno
        questions.append(replace(q, set="train", index=len(questions), meta={"row": rowno}))
    for b in bad[:20]:
        log.warning("skipped %s", b)
    if bad and on_bad_row == "error":
        listed = "\n  ".join(str(b) for b in bad[:20])
        raise DataError(
            f"{len(bad)} bad rows in {name} (data.on_bad_row=error):\n  {listed}\n"
            "Fix them, or set data.on_bad_row=skip to drop them (they are listed in data_report.json)."
        )
    if not questions:
        first = f" (first bad row: {bad[0]})" if bad else ""
        raise DataError(f"{name}: no verifiable problems{first}; {FORMAT_HINT}.")
    return ProblemSet(questions, name, rows_read, bad, dups)


def to_example(q: Question) -> Example:
    """A problem as a run folder stores it: the rendered user message as the question, the reference answer,
    and the options, letter and aliases in meta (:meth:`Question.from_example` reads it back)."""
    meta: dict[str, Any] = {"row": q.row, "question_text": q.text}
    if q.options:
        meta |= {"options": dict(q.options), "answer_idx": q.answer}
    else:
        meta |= {"verifiable": True, "aliases": list(q.aliases)}
    return Example(q.message, "", q.reference or q.answer or "", q.system, meta)


def from_examples(examples: Sequence[Example], set_name: str) -> list[Question]:
    return [Question.from_example(ex, i, set_name) for i, ex in enumerate(examples)]
