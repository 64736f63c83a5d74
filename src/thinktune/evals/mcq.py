"""Questions: load multiple-choice benchmarks, turn held-out examples into questions, build the user message.

Input: JSONL with ``question``, ``options`` (letter -> text, or a list read as A, B, C...) and ``answer_idx``
(the correct letter, or a 0-based index) -- the format of MedAgentsBench (MedQA, MedMCQA, PubMedQA, MMLU
medical, MMLU-Pro health). The question, the lettered options and an instruction to end with the letter are
rendered through the Formatter like any other prompt. Grading them is :mod:`thinktune.evals.grading`'s.
"""

from __future__ import annotations

import codecs
import json
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from thinktune.data.schemas import Example
from thinktune.errors import MCQError
from thinktune.evals.language import detect_language

_SURROGATE = re.compile("[\ud800-\udfff]")

FORMAT_HINT = (
    'each line must be a JSON object like {"question": "...", "options": {"A": "...", "B": "..."}, '
    '"answer_idx": "B"} (the MedAgentsBench format)'
)


@dataclass(frozen=True)
class Question:
    """One question a model answers: a benchmark row, or a held-out example (with options when it has them)."""

    text: str
    options: dict[str, str] | None = None  # letter -> option text, in file order
    answer: str | None = None  # the reference letter (None when there is none)
    row: int | None = None  # 1-based line number in the file it came from
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    set: str = "validation"  # "validation" or the benchmark's name
    index: int = 0
    reference: str | None = None  # the reference answer's text
    system: str | None = None
    list_options: bool = True  # the user message lists the options (held-out examples already hold them)
    aliases: tuple[str, ...] = ()  # other names of an open-ended question's reference answer
    verifiable: bool = False  # an open-ended question whose reference is a short answer to match

    @property
    def gradable(self) -> bool:
        return bool(self.options) and self.answer in (self.options or {})

    @property
    def open_ended(self) -> bool:
        """No options, and a short reference answer the grader matches (a verifiable problem)."""
        return not self.options and self.verifiable and bool((self.reference or "").strip())

    @property
    def message(self) -> str:
        """The user message the Formatter renders into the prompt."""
        return question_text(self) if self.options and self.list_options else self.text

    @classmethod
    def from_example(cls, ex: Example, index: int, set_name: str = "validation") -> Question:
        """A held-out example; its `meta` options and answer_idx (kept from MCQ columns) make it gradable."""
        options, letter = ex.meta.get("options"), ex.meta.get("answer_idx")
        mcq = isinstance(options, dict) and letter in options
        aliases = ex.meta.get("aliases")
        return cls(
            ex.question,
            dict(options) if mcq else None,
            letter if mcq else None,
            ex.meta.get("row"),
            set=set_name,
            index=index,
            reference=ex.answer,
            system=ex.system,
            list_options=False,
            aliases=tuple(a for a in aliases if isinstance(a, str)) if isinstance(aliases, list) else (),
            verifiable=bool(ex.meta.get("verifiable")) and not mcq,
        )


@dataclass
class MCQSet:
    name: str
    path: str
    items: list[Question]
    rows_in_file: int
    letter_counts: dict[str, int]  # reference letters over the whole file (for the constant-letter baseline)

    @property
    def constant_letter(self) -> str | None:
        if not self.letter_counts:
            return None
        # Ties go to the earliest letter, so the baseline does not depend on dict order.
        return min(self.letter_counts, key=lambda k: (-self.letter_counts[k], k))


def _options(raw: Any) -> dict[str, str] | None:
    if isinstance(raw, Mapping):
        opts = {str(k).strip(): str(v).strip() for k, v in raw.items()}
    elif isinstance(raw, list):
        opts = {string.ascii_uppercase[i]: str(v).strip() for i, v in enumerate(raw[:26])}
    else:
        return None
    if len(opts) < 2 or not all(len(k) == 1 and k.isalpha() and k.isupper() for k in opts):
        return None
    return opts


def _answer_letter(raw: Any, options: dict[str, str]) -> str | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        letters = list(options)
        return letters[raw] if 0 <= raw < len(letters) else None
    if isinstance(raw, str) and raw.strip() in options:
        return raw.strip()
    return None


def load_mcq(path: str | Path, limit: int | None = None) -> MCQSet:
    """Read a benchmark file; bad rows are collected and reported together (file and line number)."""
    p = Path(path)
    if not p.is_file():
        raise MCQError(f"benchmark file {str(p)!r} does not exist; {FORMAT_HINT}")
    items: list[Question] = []
    problems: list[str] = []
    counts: Counter[str] = Counter()
    rows = 0
    raw = p.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    # Undecodable bytes become lone surrogates, so the line holding them is reported instead of the whole file
    # failing; lines are split at "\n" only (JSON strings may hold U+2028 and other line separators).
    for lineno, line in enumerate(raw.decode("utf-8", errors="surrogateescape").split("\n"), start=1):
        if not line.strip():
            continue
        rows += 1
        if _SURROGATE.search(line):
            problems.append(f"line {lineno}: not valid UTF-8 text (or a lone surrogate escape)")
            continue
        try:
            row = json.loads(line)
        except RecursionError:
            problems.append(f"line {lineno}: nested too deeply")
            continue
        except json.JSONDecodeError as e:
            problems.append(f"line {lineno}: not valid JSON ({e.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {lineno}: expected a JSON object")
            continue
        question = row.get("question")
        opts = _options(row.get("options"))
        if not isinstance(question, str) or not question.strip():
            problems.append(f"line {lineno}: `question` is missing or empty")
            continue
        if _SURROGATE.search(question) or any(_SURROGATE.search(t) for t in (opts or {}).values()):
            problems.append(f"line {lineno}: holds a lone surrogate escape such as \\ud800 (not valid text)")
            continue
        if opts is None:
            problems.append(f"line {lineno}: `options` must map at least two letters (A, B, ...) to texts")
            continue
        answer = None
        if "answer_idx" in row and row["answer_idx"] is not None:
            answer = _answer_letter(row["answer_idx"], opts)
            if answer is None:
                problems.append(
                    f"line {lineno}: answer_idx {row['answer_idx']!r} is not one of the options {list(opts)}"
                )
                continue
            counts[answer] += 1
        meta = {k: v for k, v in row.items() if k not in ("question", "options", "answer_idx")}
        if limit is None or len(items) < limit:
            items.append(Question(question.strip(), opts, answer, lineno, meta))
    if problems:
        shown = "\n  ".join(problems[:10]) + (
            f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise MCQError(f"{p}: {len(problems)} bad rows:\n  {shown}\n{FORMAT_HINT}")
    if not items:
        raise MCQError(f"{p} has no questions; {FORMAT_HINT}")
    name = p.stem if p.stem not in ("test", "test_hard", "validation", "dev") else f"{p.parent.name}/{p.stem}"
    items = [
        replace(it, set=name, index=i, reference=it.options.get(it.answer or ""))
        for i, it in enumerate(items)
    ]
    return MCQSet(name, str(p), items, rows, dict(counts))


# ------------------------------------------------------------------------------------------ prompts


def question_text(item: Question, language: str | None = None) -> str:
    """The user message: the question, the lettered options, and how to state the choice (in its language)."""
    language = language or detect_language(item.text)
    letters = list(item.options)
    choices = "\n".join(f"{k}. {v}" for k, v in item.options.items())
    span = f"{letters[0]}-{letters[-1]}"
    if language == "zh":
        instruction = f"请在回答的最后一行写出正确选项的字母（{span}），格式为“答案：X”。"
    else:
        instruction = (
            f'End your answer with the letter of the correct option ({span}) in the form "The answer is X".'
        )
    return f"{item.text}\n\n{choices}\n\n{instruction}"


# ------------------------------------------------------------------------------------------ grading


def load_questions(benchmarks: Sequence[str], limit: int | None) -> list[MCQSet]:
    """Read every benchmark before any model is loaded, so a bad file fails in a second, not after an hour."""
    sets = [load_mcq(p, limit) for p in benchmarks]
    names = [s.name for s in sets]
    for s in sets:
        if names.count(s.name) > 1:  # two files with the same short name: keep results apart by full path
            s.name = s.path
            s.items = [replace(it, set=s.path) for it in s.items]
    return sets
