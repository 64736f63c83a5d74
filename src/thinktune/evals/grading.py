"""The one grader: read the option a model chose, say whether it is right, and score sets with intervals.

Eval, compare and the reinforcement stage's reward all grade through :func:`grade` on the same
:class:`~thinktune.evals.mcq.Question` records, so a "correct" means the same thing everywhere.

Extraction reads the answer (the text after the think block), strongest evidence first: a boxed letter, an
explicit phrase ("the answer is (C)", "答案：C", "答案是 C", "故选C", "C is correct"), a bold letter, "Option C",
an answer that starts with or is only the letter, and finally the text of exactly one option. Only when the
answer yields nothing (often: the think block never closed) are the explicit forms looked for in the
reasoning, and that is recorded. Anything else is unparseable and counted as such (and as wrong).
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from thinktune.evals.mcq import MCQSet, Question


@dataclass(frozen=True)
class Extraction:
    letter: str | None
    how: str  # boxed, phrase, bold, option, leading, text, reasoning:boxed, reasoning:phrase, unparseable

    @property
    def parsed(self) -> bool:
        return self.letter is not None


#: Prefix of `Extraction.how` when the letter was only found in the reasoning (the answer named none).
_FROM_REASONING = "reasoning:"


def named_in_answer(how: str | None) -> bool:
    """Whether an extraction's `how` says the answer itself named an option (by a letter or by one option's
    text), rather than the letter being read from the reasoning or not found."""
    return bool(how) and how != "unparseable" and not how.startswith(_FROM_REASONING)


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
                return Extraction(letter, f"{_FROM_REASONING}{stage}")
    return Extraction(None, "unparseable")


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


@dataclass(frozen=True)
class Grade:
    letter: str | None  # the option chosen, None when unparseable
    how: str  # see Extraction.how
    correct: bool | None  # None: the question has no reference letter


#: An open-ended answer longer than this (in words) is judged by its last sentence only: a long answer that
#: lists candidates must not be counted right because the reference is somewhere among them.
OPEN_ANSWER_WORDS = 40
_ARTICLES = re.compile(r"\b(?:the|a|an)\b")


def _norm_answer(text: str) -> str:
    """Lowercase, NFKC, punctuation and articles out, whitespace collapsed: 'The B. pertussis.' -> 'b pertussis'."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _conclusion(answer: str) -> str:
    """The last sentence of an answer (where a long answer states its conclusion)."""
    parts = [p for p in re.split(r"(?<=[.!?。！？])\s+|\n+", answer.strip()) if p.strip()]
    return parts[-1] if parts else ""


def match_reference(answer: str, reference: str, aliases: Sequence[str] = ()) -> tuple[bool, str]:
    """(right, how) for an open-ended answer: the normalized reference (or an alias) is the answer, or appears in
    it as a whole phrase; answers over :data:`OPEN_ANSWER_WORDS` words are judged by their last sentence."""
    ans = _norm_answer(answer)
    if not ans:
        return False, "no answer"
    targets = [("reference", reference), *(("alias", a) for a in aliases)]
    normalized = [(name, _norm_answer(t)) for name, t in targets if _norm_answer(t)]
    for name, t in normalized:
        if ans == t:
            return True, f"exact:{name}"
    scope, text = "answer", ans
    if len(ans.split()) > OPEN_ANSWER_WORDS:
        scope, text = "conclusion", _norm_answer(_conclusion(answer))
    for name, t in normalized:
        if re.search(rf"(?<!\w){re.escape(t)}(?!\w)", text):
            return True, f"{scope}:{name}"
    return False, "no match"


def grade(question: Question, generation: Any) -> Grade:
    """The one grader: the option `generation` (anything with ``answer`` and ``reasoning``) chose, and whether it
    is the reference. Eval, compare and the reinforcement reward call this, nothing else. An open-ended
    verifiable question (no options, a short reference) is graded by :func:`match_reference` on the answer."""
    if question.open_ended:
        right, how = match_reference(generation.answer, question.reference or "", question.aliases)
        return Grade(None, how, right)
    if not question.options:
        return Grade(None, "no options", None)
    got = extract_choice(generation.answer, question.options, generation.reasoning)
    correct = (got.letter == question.answer) if question.answer else None
    return Grade(got.letter, got.how, correct)


def accuracy(grades: Sequence[Grade]) -> dict[str, Any] | None:
    """Accuracy with its 95% Wilson interval and the unparseable count, over the grades that have a reference."""
    scored = [g for g in grades if g.correct is not None]
    if not scored:
        return None
    k = sum(bool(g.correct) for g in scored)
    lo, hi = wilson_interval(k, len(scored))
    return {
        "questions": len(scored),
        "correct": k,
        "accuracy": k / len(scored),
        "ci95": [lo, hi],
        "unparseable": sum(g.letter is None for g in scored),
    }


def score_set(mcq: MCQSet, grades: Sequence[Grade]) -> dict[str, Any]:
    """A benchmark's :func:`accuracy` next to the constant-letter and random baselines over the same questions."""
    scored = [(it, g) for it, g in zip(mcq.items, grades, strict=True) if it.answer is not None]
    n = len(scored)
    acc = accuracy([g for _, g in scored]) or {
        "correct": 0,
        "accuracy": None,
        "ci95": [0.0, 1.0],
        "unparseable": 0,
    }
    parsed = n - acc["unparseable"]
    constant = mcq.constant_letter
    const_correct = sum(it.answer == constant for it, _ in scored)
    random_acc = sum(1 / len(it.options or {"": ""}) for it, _ in scored) / n if n else None
    how = Counter(g.how for _, g in scored)
    return {
        "name": mcq.name,
        "path": mcq.path,
        "questions": n,
        "rows_in_file": mcq.rows_in_file,
        "correct": acc["correct"],
        "accuracy": acc["accuracy"],
        "ci95": acc["ci95"],
        "unparseable": acc["unparseable"],
        "accuracy_of_parsed": acc["correct"] / parsed if parsed else None,
        "extracted_by": dict(sorted(how.items())),
        "baselines": {
            "constant_letter": constant,
            "constant_letter_accuracy": const_correct / n if n else None,
            "random": random_acc,
        },
    }
