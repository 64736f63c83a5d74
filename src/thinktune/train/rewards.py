"""The reinforcement stage's rewards: pure functions of one completion, and the adapter that hands them to TRL.

Each reward reads a completion the way `eval` does: its token ids are cut at the end-of-turn token and split
into reasoning and answer by :func:`thinktune.infer.generate.make_generation` (which knows whether the prompt
already opened ``<think>``, as DeepSeek-R1-Distill's revised template does), and answers are graded by the one
grader, :func:`thinktune.evals.grading.grade`.

- :func:`correct_reward`  1 when the grader's option equals the reference letter (multiple choice), or the answer
  matches the reference or an alias (open-ended); else 0. With a verifier model (``grpo.verifier``) open-ended
  answers score HuatuoGPT-o1's 1 (right) / 0.1 (wrong) / 0 (no answer).
- :func:`format_reward`   the trained shape: the think block closed after ``grpo.min_reasoning_words`` words (or,
  with thinking off, no reasoning), then an answer with text in it (not markup alone) and no second think block,
  then the end-of-turn token: 0.5; for a multiple-choice question
  the answer itself (not the reasoning) must also name exactly one option for the other 0.5.
- :func:`think_reward`    1 when the think block is closed as expected (:func:`think_ok`), even when the answer
  after it is then cut at the limit: the signal that teaches a model with long reasoning to close it in time
  (off by default; the CPU demo turns it on).
- :func:`option_reward`   1 when the answer after the closed think block names exactly one option, even when it
  then runs on to the limit: the naming part of `format` on its own (off by default).
- :func:`length_reward`   DAPO's soft overlong punishment: 0 up to (1 - buffer) x the limit, then a ramp down to
  -1 at the limit; a completion cut at the limit scores -1.

TRL's ``think_format_reward`` looks for ``<think>`` in the completion, so it scores every completion of a
template that pre-fills ``<think>`` in the prompt 0 (trl #6966); here the prompt's pre-fill is part of the
reading, as in eval.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from thinktune.config import REWARD_NAMES, GRPOSection
from thinktune.data.reasoning import THINK_CLOSE, THINK_OPEN
from thinktune.evals.grading import extract_choice, grade
from thinktune.evals.mcq import Question
from thinktune.infer.generate import Generation, make_generation

log = logging.getLogger(__name__)

#: HuatuoGPT-o1's verifier rewards: a right answer, a wrong one, none at all.
VERIFIER_RIGHT, VERIFIER_WRONG, VERIFIER_NONE = 1.0, 0.1, 0.0


# ------------------------------------------------------------------------------------------ pure rewards


#: ``grpo.min_reasoning_words`` unless the config says otherwise.
MIN_REASONING_WORDS = GRPOSection().min_reasoning_words
_MARKUP = re.compile(r"<[^<>]*>")
_WORD = re.compile(r"\w\w")


def think_ok(gen: Generation, *, expect_think: bool, min_words: int = MIN_REASONING_WORDS) -> bool:
    """The reasoning part of the shape: a closed think block of at least `min_words` words when thinking is
    expected (an empty block closed at once is not reasoning, and a policy finds it within a few steps); none
    (or an empty one) when it is off (Qwen3 with enable_thinking=False pre-fills an empty block in the prompt)."""
    if expect_think:
        return gen.think_closed and len(gen.reasoning.split()) >= min_words
    return not gen.think_opened or (gen.think_closed and not gen.reasoning.strip())


def has_text(answer: str) -> bool:
    """The answer says something: a word left once markup tags are removed ('</thought>' alone is not one)."""
    return bool(_WORD.search(_MARKUP.sub(" ", answer)))


def structure_ok(gen: Generation, *, expect_think: bool, min_words: int = MIN_REASONING_WORDS) -> bool:
    """Think block as expected, an answer with text in it (:func:`has_text`) and no second think block, the
    end-of-turn token."""
    answer = gen.answer.strip()
    return (
        think_ok(gen, expect_think=expect_think, min_words=min_words)
        and has_text(answer)
        and THINK_OPEN not in answer
        and THINK_CLOSE not in answer
        and gen.stopped
    )


def names_option(question: Question, gen: Generation) -> bool:
    """The answer itself (not the reasoning) names exactly one of the options, as the grader reads it."""
    if not question.options:
        return False
    return extract_choice(gen.answer, question.options, "").letter is not None


def format_reward(
    gen: Generation, question: Question, *, expect_think: bool, min_words: int = MIN_REASONING_WORDS
) -> float:
    """0.5 for the shape (:func:`structure_ok`); for a multiple-choice question another 0.5 when the answer
    names one option (:func:`names_option`); an open-ended question's answer gets the full 1.0 for the shape."""
    if not structure_ok(gen, expect_think=expect_think, min_words=min_words):
        return 0.0
    if question.options:
        return 1.0 if names_option(question, gen) else 0.5
    return 1.0


def think_reward(gen: Generation, *, expect_think: bool, min_words: int = MIN_REASONING_WORDS) -> float:
    """1.0 when the think block is closed as expected (:func:`think_ok`), whatever follows it; else 0.0."""
    return 1.0 if think_ok(gen, expect_think=expect_think, min_words=min_words) else 0.0


def option_reward(
    gen: Generation, question: Question, *, expect_think: bool, min_words: int = MIN_REASONING_WORDS
) -> float:
    """1.0 when the think block is closed as expected (:func:`think_ok`) and the answer after it names exactly one
    option (:func:`names_option`), whatever follows; else 0.0 (and always 0.0 for an open-ended question)."""
    ok = think_ok(gen, expect_think=expect_think, min_words=min_words) and names_option(question, gen)
    return 1.0 if ok else 0.0


def correct_reward(gen: Generation, question: Question) -> float:
    """1.0 when the one grader says the answer is right, else 0.0."""
    return 1.0 if grade(question, gen).correct else 0.0


def length_reward(new_tokens: int, *, stopped: bool, max_tokens: int, buffer: float) -> float:
    """DAPO's soft overlong punishment over the completion's tokens (the end-of-turn token included)."""
    if not stopped and new_tokens >= max_tokens:
        return -1.0
    ramp = max(1.0, buffer * max_tokens)
    free = max_tokens - ramp
    if new_tokens <= free:
        return 0.0
    return max(-1.0, (free - new_tokens) / ramp)


def verifier_reward(right: bool | None) -> float:
    """HuatuoGPT-o1's scheme for a verifier's judgement: right 1, wrong 0.1, no answer (None) 0."""
    if right is None:
        return VERIFIER_NONE
    return VERIFIER_RIGHT if right else VERIFIER_WRONG


# ------------------------------------------------------------------------------------------ verifier


class Verifier:
    """A sequence-classification model that judges an open-ended answer against the reference.

    The input is ``question``, ``reference`` and ``answer`` as one text pair (question + reference, answer); a
    single logit is read through a sigmoid, two or more labels through a softmax (label 1 = right)."""

    def __init__(self, name_or_path: str, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(name_or_path).to(self.device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def judge(self, items: Sequence[tuple[Question, str]]) -> list[bool]:
        import torch

        if not items:
            return []
        first = [f"Question: {q.text}\nReference answer: {q.reference}" for q, _ in items]
        second = [f"Answer: {a}" for _, a in items]
        batch = self.tokenizer(
            first, second, padding=True, truncation=True, max_length=1024, return_tensors="pt"
        )
        with torch.no_grad():
            logits = self.model(**batch.to(self.device)).logits.float()
        if logits.shape[-1] == 1:
            p = torch.sigmoid(logits[:, 0])
        else:
            p = torch.softmax(logits, dim=-1)[:, 1]
        return [bool(x > 0.5) for x in p.tolist()]


# ------------------------------------------------------------------------------------------ TRL adapter


@dataclass
class Scored:
    """One completion as read and rewarded (what completions.jsonl records)."""

    question: Question
    generation: Generation
    rewards: dict[str, float]
    total: float


@dataclass
class RewardScorer:
    """The rewards as TRL reward functions, one per reward with a non-zero weight, each logged apart.

    TRL calls every reward function with the same batch; the first call reads and scores every completion of
    the batch once (cached), the others return their column. `questions` is indexed by the dataset's ``qid``
    column. The last batch's :class:`Scored` completions stay in :attr:`last` for completions.jsonl."""

    tokenizer: Any
    questions: Sequence[Question]
    weights: dict[str, float]
    eot_id: int
    prompt_opens_think: bool
    expect_think: bool
    max_completion_length: int
    length_buffer: float
    min_reasoning_words: int = MIN_REASONING_WORDS
    verifier: Verifier | None = None
    last: list[Scored] = field(default_factory=list)
    _key: Any = None
    _columns: dict[str, list[float]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [n for n in REWARD_NAMES if self.weights.get(n)]

    def functions(self) -> list[Callable[..., list[float]]]:
        """One callable per active reward, named after it (TRL logs ``rewards/<name>/mean`` and ``/std``)."""
        out = []
        for name in self.names:

            def reward(prompts, completions, completion_ids, qid, _name=name, **kw):
                return self.column(_name, prompts, completion_ids, qid, kw.get("log_metric"))

            reward.__name__ = name
            out.append(reward)
        return out

    def column(
        self, name: str, prompts: Sequence[str], completion_ids: Sequence[Sequence[int]], qids: Sequence[int],
        log_metric: Callable[[str, float], None] | None = None,
    ) -> list[float]:  # fmt: skip
        key = (id(completion_ids), len(completion_ids), hash(tuple(map(tuple, completion_ids))))
        if key != self._key:
            self._key = key
            self._columns = self.score(prompts, completion_ids, qids)
            if log_metric is not None:
                for metric, value in self.shares().items():
                    log_metric(metric, value)
        return self._columns[name]

    def read(self, prompt: str, ids: Sequence[int]) -> Generation:
        stops = [self.eot_id]
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id != self.eot_id:
            stops.append(self.tokenizer.eos_token_id)
        return make_generation(
            self.tokenizer,
            prompt,
            ids,
            stops,
            max_new_tokens=self.max_completion_length,
            prompt_opens_think=self.prompt_opens_think,
        )

    def score(
        self, prompts: Sequence[str], completion_ids: Sequence[Sequence[int]], qids: Sequence[int]
    ) -> dict[str, list[float]]:
        """Every active reward of every completion (unweighted), by reward name."""
        gens = [self.read(p, ids) for p, ids in zip(prompts, completion_ids, strict=True)]
        questions = [self.questions[int(i)] for i in qids]
        judged: dict[int, bool] = {}
        if self.verifier is not None and "correct" in self.names:
            todo = [(i, q, g) for i, (q, g) in enumerate(zip(questions, gens, strict=True)) if q.open_ended]
            answered = [(i, q, g.answer) for i, q, g in todo if g.answer.strip()]
            for (i, _, _), right in zip(
                answered, self.verifier.judge([(q, a) for _, q, a in answered]), strict=True
            ):
                judged[i] = right
        columns: dict[str, list[float]] = {n: [] for n in self.names}
        self.last = []
        for i, (q, g) in enumerate(zip(questions, gens, strict=True)):
            values: dict[str, float] = {}
            if "correct" in columns:
                if self.verifier is not None and q.open_ended:
                    values["correct"] = verifier_reward(judged.get(i))
                else:
                    values["correct"] = correct_reward(g, q)
            if "format" in columns:
                values["format"] = format_reward(
                    g, q, expect_think=self.expect_think, min_words=self.min_reasoning_words
                )
            if "think" in columns:
                values["think"] = think_reward(
                    g, expect_think=self.expect_think, min_words=self.min_reasoning_words
                )
            if "option" in columns:
                values["option"] = option_reward(
                    g, q, expect_think=self.expect_think, min_words=self.min_reasoning_words
                )
            if "length" in columns:
                values["length"] = length_reward(
                    g.new_tokens,
                    stopped=g.stopped,
                    max_tokens=self.max_completion_length,
                    buffer=self.length_buffer,
                )
            for n, v in values.items():
                columns[n].append(v)
            total = sum(self.weights[n] * v for n, v in values.items())
            self.last.append(Scored(q, g, values, total))
        return columns

    def shares(self) -> dict[str, float]:
        """Reasoning-health shares of the last batch, logged next to the rewards."""
        n = len(self.last) or 1
        return {
            "completions/think_closed": sum(s.generation.think_closed for s in self.last) / n,
            "completions/stopped": sum(s.generation.stopped for s in self.last) / n,
            "completions/option_named": sum(names_option(s.question, s.generation) for s in self.last) / n,
        }


def group_spread(totals: Sequence[float], group: int) -> list[float]:
    """The standard deviation of the total reward inside each consecutive group of `group` completions."""
    out = []
    for start in range(0, len(totals) - group + 1, group):
        xs = totals[start : start + group]
        mean = sum(xs) / len(xs)
        out.append(math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)))
    return out
