"""The records evaluation writes and every later reader reads: one dataclass per kind, written and read here.

- :class:`Output`      one model's answer to one question, measured (reasoning health) and graded;
- :class:`EvalRecord`  one line of ``eval_<name>.jsonl``: the question and one model's :class:`Output`;
- :class:`ComparePair` one line of ``compare.jsonl``: the question and the base and tuned :class:`Output`;
- :class:`CompletionRecord` one line of ``completions.jsonl``: a completion sampled during GRPO and its rewards;
- :class:`PairRecord`  one line of ``data/pairs.jsonl``: a DPO pair (a right and a wrong sampled answer).

Files keep their documented layout (an eval line is flat; a compare line nests ``base`` and ``tuned``).
``from_dict`` accepts lines written by earlier versions (a field they lack takes its default), so the report and
the web UI read every run folder the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Output:
    reasoning: str = ""
    answer: str = ""
    think_opened: bool = False
    think_closed: bool = False
    stopped: bool = False  # ended with the end-of-turn token
    hit_max_new_tokens: bool = False
    new_tokens: int = 0
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    repeat_rate: float = 0.0  # share of repeated 4-grams (see thinktune.evals.health)
    question_language: str | None = None
    answer_language: str | None = None
    predicted: str | None = None  # the option letter read from the answer (multiple-choice questions)
    extracted_by: str | None = None  # how it was read (boxed, phrase, ..., unparseable)
    correct: bool | None = None  # None: nothing to grade against

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Output:
        return cls(**_known(cls, raw))


@dataclass(frozen=True)
class EvalRecord:
    set: str  # "validation" or the benchmark's name
    index: int
    question: str
    output: Output
    reference: str | None = None
    row: int | None = None
    options: dict[str, str] | None = None
    reference_letter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        head = {
            "set": self.set,
            "index": self.index,
            "row": self.row,
            "question": self.question,
            "options": self.options,
            "reference_letter": self.reference_letter,
            "reference": self.reference,
        }
        out = {**head, **self.output.to_dict()}
        # what a question does not have is left out, as the file has always been written
        return {k: v for k, v in out.items() if v is not None or k not in _OPTIONAL}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvalRecord:
        fields = _known(cls, raw)
        fields.pop("output", None)
        return cls(**{"set": "", "index": 0, "question": "", **fields}, output=Output.from_dict(raw))


@dataclass(frozen=True)
class ComparePair:
    set: str
    index: int
    question: str
    base: Output
    tuned: Output
    question_language: str | None = None
    options: dict[str, str] | None = None
    reference: str | None = None
    reference_letter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**out, "base": self.base.to_dict(), "tuned": self.tuned.to_dict()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ComparePair:
        fields = _known(cls, raw)
        sides = {side: Output.from_dict(raw.get(side) or {}) for side in ("base", "tuned")}
        fields.update(sides)
        return cls(**{"set": "", "index": 0, "question": "", **fields})

    def side(self, name: str) -> Output:
        return self.base if name == "base" else self.tuned


@dataclass(frozen=True)
class CompletionRecord:
    """A completion the policy sampled at a GRPO logging step, as it was read and rewarded."""

    step: int
    question: str
    completion: str
    reasoning: str = ""
    answer: str = ""
    think_closed: bool = False
    stopped: bool = False
    new_tokens: int = 0
    rewards: dict[str, float] = dataclasses.field(default_factory=dict)
    total: float = 0.0  # the weighted sum GRPO normalises within the group
    reference: str | None = None
    reference_letter: str | None = None
    predicted: str | None = None
    row: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CompletionRecord:
        return cls(**{"step": 0, "question": "", "completion": "", **_known(cls, raw)})


@dataclass(frozen=True)
class PairRecord:
    """A DPO training pair: the prompt, a sampled answer the grader accepted and one it rejected."""

    question: str
    prompt: str
    chosen: str
    rejected: str
    row: int | None = None
    reference: str | None = None
    reference_letter: str | None = None
    chosen_tokens: int = 0
    rejected_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PairRecord:
        return cls(**{"question": "", "prompt": "", "chosen": "", "rejected": "", **_known(cls, raw)})


#: Fields an eval line holds only when the question has them (benchmark rows; graded questions).
_OPTIONAL = frozenset({"row", "options", "reference_letter", "predicted", "extracted_by", "correct"})


def _known(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}
