"""Multiple-choice benchmarks: load questions, build prompts, extract the chosen letter, grade with intervals.

Input: JSONL with ``question``, ``options`` (letter -> text, or a list read as A, B, C...) and ``answer_idx``
(the correct letter, or a 0-based index) -- the format of MedAgentsBench (MedQA, MedMCQA, PubMedQA, MMLU
medical, MMLU-Pro health). The question, the lettered options and an instruction to end with the letter are
rendered through the Formatter like any other prompt.

Extraction reads the answer (the text after the think block), strongest evidence first: a boxed letter, an
explicit phrase ("the answer is (C)", "答案：C", "答案是 C", "故选C", "C is correct"), a bold letter, "Option C",
an answer that starts with or is only the letter, and finally the text of exactly one option. Only when the
answer yields nothing (often: the think block never closed) are the explicit forms looked for in the
reasoning, and that is recorded. Anything else is unparseable and counted as such (and as wrong).
"""

from __future__ import annotations

import codecs
import functools
import json
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinktune.errors import ThinktuneError
from thinktune.tasks.language import detect_language


class MCQError(ThinktuneError, ValueError):
    """A benchmark file cannot be used; the message names the file, the rows and the expected format."""


_SURROGATE = re.compile("[\ud800-\udfff]")

FORMAT_HINT = (
    'each line must be a JSON object like {"question": "...", "options": {"A": "...", "B": "..."}, '
    '"answer_idx": "B"} (the MedAgentsBench format)'
)


@dataclass(frozen=True)
class MCQItem:
    question: str
    options: dict[str, str]  # letter -> option text, in file order
    answer: str | None  # the reference letter (None when the file has no answer)
    row: int  # 1-based line number in the file
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class MCQSet:
    name: str
    path: str
    items: list[MCQItem]
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
    items: list[MCQItem] = []
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
            items.append(MCQItem(question.strip(), opts, answer, lineno, meta))
    if problems:
        shown = "\n  ".join(problems[:10]) + (
            f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise MCQError(f"{p}: {len(problems)} bad rows:\n  {shown}\n{FORMAT_HINT}")
    if not items:
        raise MCQError(f"{p} has no questions; {FORMAT_HINT}")
    name = p.stem if p.stem not in ("test", "test_hard", "validation", "dev") else f"{p.parent.name}/{p.stem}"
    return MCQSet(name, str(p), items, rows, dict(counts))


# ------------------------------------------------------------------------------------------ prompts


def question_text(item: MCQItem, language: str | None = None) -> str:
    """The user message: the question, the lettered options, and how to state the choice (in its language)."""
    language = language or detect_language(item.question)
    letters = list(item.options)
    choices = "\n".join(f"{k}. {v}" for k, v in item.options.items())
    span = f"{letters[0]}-{letters[-1]}"
    if language == "zh":
        instruction = f"请在回答的最后一行写出正确选项的字母（{span}），格式为“答案：X”。"
    else:
        instruction = (
            f'End your answer with the letter of the correct option ({span}) in the form "The answer is X".'
        )
    return f"{item.question}\n\n{choices}\n\n{instruction}"


# ------------------------------------------------------------------------------------------ extraction


@dataclass(frozen=True)
class Extraction:
    letter: str | None
    how: str  # boxed, phrase, bold, option, leading, text, reasoning:boxed, reasoning:phrase, unparseable

    @property
    def parsed(self) -> bool:
        return self.letter is not None


# Words that may follow a letter that doubles as an English word ("A", "I") in "the answer is A because ...".
_CONNECTORS = frozenset(
    "is as because since which and or with for due given this it would should was that so from".split()
)


def _normalize(text: str) -> str:
    # NFKC turns full-width letters and punctuation (Ｃ，：（）) into ASCII; LaTeX text wrappers are unwrapped.
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"\\(?:text|textbf|mathrm|mathbf|textrm)\s*\{([^{}]*)\}", r"\1", text)
    return text.replace("【", "(").replace("】", ")").replace("「", "").replace("」", "")


def _letter_class(letters: Sequence[str]) -> str:
    return "[" + "".join(sorted(letters)) + "]"


@functools.lru_cache(maxsize=64)
def _patterns(letters: tuple[str, ...]) -> dict[str, list[re.Pattern[str]]]:
    L = _letter_class(letters)
    pre = r"(?<![A-Za-z])"
    post = r"(?![A-Za-z])"
    open_ = r"[\s(\[*_\"']*"
    return {
        "boxed": [re.compile(rf"\\boxed\s*\{{\s*\(?\s*({L}){post}")],
        "phrase": [
            # the answer is (C) / final answer: C / the correct option would be **C** / answer = C
            re.compile(
                rf"(?i:\b(?:(?:final|correct|right|best)\s+)?answer\b|\b(?:correct|right|best)\s+(?:choice|option)\b)"
                rf"(?i:\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be))?\s*[:=]?"
                rf"\s*(?i:option\s+|choice\s+)?{open_}{pre}({L}){post}"
            ),
            # (C) is correct / option C is the best choice / C is the right answer (at a line start)
            re.compile(
                rf"(?:(?i:option|choice)\s*\(?|\(|^|\*\*)({L})\)?\**\s+(?i:is\s+(?:the\s+)?(?:correct|right|best)\b)",
                re.M,
            ),
            # 答案：C / 答案是 C / 答案为(C) / 正确答案是C / 正确选项为C / 最佳答案 C
            re.compile(
                rf"(?:答案|正确选项|正确的选项|最佳选项|最佳答案)\s*(?:应该|应|可能)?\s*(?:是|为|選|选)?\s*:?"
                rf"\s*(?:选项)?{open_}{pre}({L}){post}"
            ),
            # 故选C / 应选 B / 选择 D / 选C项
            re.compile(rf"(?:选择|选)\s*{open_}{pre}({L}){post}"),
            # C是正确的 / 选项C正确 / C为最佳答案 (not "维生素A是..." : the letter must not follow a word)
            re.compile(
                rf"(?:选项|(?<![A-Za-z\u3400-\u9fff]))\(?({L})\)?\s*(?:项)?\s*(?:是|为)?\s*(?:正确|最佳|最合适)"
            ),
        ],
        "bold": [re.compile(rf"\*\*\s*\(?({L})(?:\)|\.|:|\*\*)")],
        "option": [
            re.compile(rf"(?i:\b(?:option|choice)\s*)\(?({L}){post}"),
            re.compile(rf"选项\s*\(?({L}){post}"),
        ],
        "leading": [
            re.compile(rf"^\s*[(\[]?({L})[)\].:、](?:\s|$)"),
            re.compile(rf"^\W*({L})\W*$"),
        ],
    }


_STRONG = ("boxed", "phrase")
_LAST_WINS = ("boxed", "phrase")  # conclusions come last; weaker cues must be unambiguous


def _acceptable(text: str, m: re.Match[str], options: Mapping[str, str]) -> bool:
    """Reject "A"/"I" read as an English word ("The answer: A patient with ..."), unless the option follows."""
    letter = m.group(1)
    if letter not in ("A", "I"):
        return True
    rest = text[m.end(1) :]
    word = re.match(r"\s+([a-z]+)", rest)
    if not word or word.group(1) in _CONNECTORS:
        return True
    option = _normalize(options.get(letter, "")).lower()
    return bool(option) and rest.strip().lower().startswith(option[: max(4, len(option) // 2)])


def _stage(text: str, stage: str, options: Mapping[str, str]) -> str | None:
    found: list[tuple[int, str]] = []
    for pattern in _patterns(tuple(options))[stage]:
        for m in pattern.finditer(text):
            if _acceptable(text, m, options):
                found.append((m.start(1), m.group(1)))
    if not found:
        return None
    if stage in _LAST_WINS:
        return max(found)[1]
    distinct = {letter for _, letter in found}
    return distinct.pop() if len(distinct) == 1 else None


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def _by_option_text(text: str, options: Mapping[str, str]) -> str | None:
    """The letter of the one option whose text the answer contains (a longer option beats its own prefix)."""
    answer = _squash(text)
    if not answer:
        return None
    hits = []
    for letter, option in options.items():
        opt = _squash(_normalize(option))
        if not opt:
            continue
        if len(opt.split()) == 1 and len(opt) <= 5:
            # "yes" / "no" / "maybe" occur in any sentence; count them only as the answer's first word.
            if answer.split()[0] == opt:
                hits.append((letter, opt))
        elif re.search(rf"(?<!\w){re.escape(opt)}(?!\w)", answer):
            hits.append((letter, opt))
    hits = [(k, o) for k, o in hits if not any(o != o2 and o in o2 for _, o2 in hits)]
    letters = {k for k, _ in hits}
    return letters.pop() if len(letters) == 1 else None


def _lists_options(text: str, options: Mapping[str, str]) -> bool:
    """True when the answer recites two or more options ("A. yes B. no"): a leading letter then means nothing."""
    listed = 0
    for letter, option in options.items():
        head = re.escape(_normalize(option).strip()[:12])
        if head and re.search(rf"(?<![A-Za-z])\(?{letter}[.):]\s*{head}", text, re.IGNORECASE):
            listed += 1
    return listed >= 2


def extract_choice(answer: str, options: Mapping[str, str], reasoning: str = "") -> Extraction:
    """The option letter the model chose, and how it was found (see the module docstring)."""
    text = _normalize(answer or "")
    if text.strip():
        for stage in ("boxed", "phrase", "bold", "option", "leading"):
            if stage == "leading" and _lists_options(text, options):
                break
            letter = _stage(text, stage, options)
            if letter:
                return Extraction(letter, stage)
        letter = _by_option_text(text, options)
        if letter:
            return Extraction(letter, "text")
    thought = _normalize(reasoning or "")
    if thought.strip():
        for stage in _STRONG:
            letter = _stage(thought, stage, options)
            if letter:
                return Extraction(letter, f"reasoning:{stage}")
    return Extraction(None, "unparseable")


# ------------------------------------------------------------------------------------------ grading

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials (sensible at 0, n and small n)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 and k = n the bound is exactly 0 / 1; say so instead of 0.9999999999999999.
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (lo, hi)


def grade(mcq: MCQSet, extractions: Sequence[Extraction]) -> dict[str, Any]:
    """Accuracy with its interval next to the constant-letter and random baselines, over the scored questions."""
    scored = [(it, ex) for it, ex in zip(mcq.items, extractions, strict=True) if it.answer is not None]
    n = len(scored)
    correct = sum(ex.letter == it.answer for it, ex in scored)
    unparseable = sum(not ex.parsed for _, ex in scored)
    lo, hi = wilson_interval(correct, n)
    constant = mcq.constant_letter
    const_correct = sum(it.answer == constant for it, _ in scored)
    random_acc = sum(1 / len(it.options) for it, _ in scored) / n if n else None
    how = Counter(ex.how for _, ex in scored)
    return {
        "name": mcq.name,
        "path": mcq.path,
        "questions": n,
        "rows_in_file": mcq.rows_in_file,
        "correct": correct,
        "accuracy": correct / n if n else None,
        "ci95": [lo, hi],
        "unparseable": unparseable,
        "accuracy_of_parsed": correct / (n - unparseable) if n - unparseable else None,
        "extracted_by": dict(sorted(how.items())),
        "baselines": {
            "constant_letter": constant,
            "constant_letter_accuracy": const_correct / n if n else None,
            "random": random_acc,
        },
    }
