"""The one formatter: Example + tokenizer -> (prompt_text, completion_text), through the model's own template.

Training, evaluation, comparison, chat and export all use :class:`Formatter`, so the text a model is trained
on is, token for token, the text it is later prompted with:

- ``prompt_text`` is exactly ``tokenizer.apply_chat_template([system?, user], add_generation_prompt=True)``
  (with ``enable_thinking`` when the template takes it);
- ``completion_text`` continues it: the reasoning inside ``<think>...</think>``, the answer, and the template's
  end-of-turn token (which is trained, so the model learns to stop).

Template families are recognised by behaviour, not by model name:

``reasoning_field``  the template renders ``reasoning_content`` itself (Qwen3);
``strips_reasoning`` the template deletes everything up to ``</think>`` from assistant turns and may pre-open
                     ``<think>`` in the generation prompt (DeepSeek-R1-Distill). Rendering a training example
                     with ``apply_chat_template`` would silently drop the chain of thought, so the completion is
                     assembled here from the template's own assistant header and end-of-turn token;
``inline``           an ordinary chat template (ChatML, e.g. SmolLM2): the reasoning is written as
                     ``<think>\\n...\\n</think>\\n\\n`` before the answer;
``text``             no chat template (or ``data.text_template``): a plain-text template with the placeholders
                     {system} {question} {reasoning} {answer}; the end of sequence is the tokenizer's eos.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from thinktune.config import PLACEHOLDERS, DataConfig, check_text_template
from thinktune.data.reasoning import THINK_CLOSE, THINK_OPEN, think_block
from thinktune.data.schemas import Example
from thinktune.errors import ExampleError, TemplateError

log = logging.getLogger(__name__)

REASONING_FIELD = "reasoning_field"
STRIPS_REASONING = "strips_reasoning"
INLINE = "inline"
TEXT = "text"

#: Used for models without a chat template. {system} and the blank line after it vanish when there is none.
PLAIN_TEXT_TEMPLATE = (
    "{system}\n\n### Question:\n{question}\n\n### Response:\n<think>\n{reasoning}\n</think>\n\n{answer}"
)
_PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))

_PROBE_Q, _PROBE_R, _PROBE_A = "PROBEQ7x", "PROBER7x", "PROBEA7x"


#: Added tokens that read as markup (``<think>``, ``<|im_end|>``, ``<｜end▁of▁sentence｜>``): text holding one
#: would be tokenized as that token. Added tokens that are plain text (runs of spaces in code models) are not.
_MARKUP_TOKEN = re.compile(r"<[^<>\s]+>|<\|.*\|>|<｜.*｜>|\[[A-Z_]+\]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def reserved_texts(tokenizer: Any) -> tuple[str, ...]:
    """Strings this tokenizer turns into special or added control tokens wherever they occur in text."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        content = str(getattr(added, "content", added))
        if getattr(added, "special", False) or _MARKUP_TOKEN.fullmatch(content):
            found.add(content)
    found.discard("")
    return tuple(sorted(found, key=lambda t: (-len(t), t)))


@dataclass(frozen=True)
class Rendered:
    """Prompt and completion text, with the character span of the answer inside the completion."""

    prompt: str
    completion: str
    answer_start: int  # char offset of the answer in `completion`; everything before it is the reasoning span


@dataclass
class Encoded:
    """Token ids of one example; the supervised span is exactly the completion (reasoning + answer + eot)."""

    input_ids: list[int]
    completion_mask: list[int]
    prompt_len: int
    answer_start: int  # token index (into input_ids) where the answer span starts
    example: Example = field(repr=False, compare=False)

    @property
    def lengths(self) -> dict[str, int]:
        return {
            "question": self.prompt_len,
            "reasoning": self.answer_start - self.prompt_len,
            "answer": len(self.input_ids) - self.answer_start,
            "total": len(self.input_ids),
        }

    def labels(self) -> list[int]:
        """Labels come from the completion mask, never from the pad id (pad may equal the end-of-turn token)."""
        return [t if m else -100 for t, m in zip(self.input_ids, self.completion_mask, strict=True)]


def _template_source(tokenizer: Any) -> str | None:
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, dict):
        tpl = tpl.get("default")
    return tpl or None


class Formatter:
    """Render examples the way the model's own template does. See the module docstring for the families."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        reasoning: str = "train",
        system_prompt: str | None = None,
        text_template: str | None = None,
    ) -> None:
        if reasoning not in ("train", "drop"):
            raise ValueError(f"reasoning must be 'train' or 'drop', got {reasoning!r}")
        self.tokenizer = tokenizer
        self.refused: list[dict[str, Any]] = []  # examples doctor.encode_all skipped (row, reason)
        self.reserved = reserved_texts(tokenizer)
        self._reserved_re = re.compile("|".join(map(re.escape, self.reserved))) if self.reserved else None
        if system_prompt:
            problem = self._text_problem(system_prompt)
            if problem:
                raise TemplateError(f"data.system_prompt {problem}; remove it from the setting.")
        self.reasoning = reasoning
        self.system_prompt = system_prompt
        self._text_template_setting = text_template
        self.chat_template = _template_source(tokenizer)
        self.text_template: str | None = None
        if text_template is not None or self.chat_template is None:
            self.text_template = PLAIN_TEXT_TEMPLATE if text_template is None else text_template
            problems = check_text_template(self.text_template)
            if problems:
                raise TemplateError(f"data.text_template: {'; '.join(problems)}")
            if self.chat_template is None and text_template is None:
                log.info("the tokenizer has no chat template; using thinktune's plain-text template")
            self.family = TEXT
            self._template_kwargs: dict[str, Any] = {}
            eos = tokenizer.eos_token
            if not eos:
                raise TemplateError(
                    "the tokenizer has no eos_token, so a plain-text template has no way to mark the end of an "
                    "answer; set model.chat_template or add an eos token to the tokenizer."
                )
            self.eot = eos
            self._bos = tokenizer.bos_token if adds_bos(tokenizer) else ""
        else:
            # enable_thinking selects Qwen3-style thinking/no-thinking prompts; only pass it where it is read.
            self._template_kwargs = (
                {"enable_thinking": reasoning == "train"} if "enable_thinking" in self.chat_template else {}
            )
            self.family = self._detect_family()
            self.eot = self._detect_eot()
        self.eot_id = tokenizer.convert_tokens_to_ids(self.eot)
        if self.eot_id is None or self.eot_id == getattr(tokenizer, "unk_token_id", object()):
            ids = tokenizer(self.eot, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise TemplateError(
                    f"end-of-turn marker {self.eot!r} is not a single token; generation could not stop on it"
                )
            self.eot_id = ids[0]
        self.prompt_opens_think = self._prompt_opens_think()

    @classmethod
    def from_config(cls, tokenizer: Any, data: DataConfig) -> Formatter:
        """The formatter a config's data section describes: reasoning mode, system prompt, text template."""
        return cls(
            tokenizer,
            reasoning=data.reasoning,
            system_prompt=data.system_prompt,
            text_template=data.text_template,
        )

    def with_reasoning(self, mode: str) -> Formatter:
        """The same formatter with reasoning ``train`` or ``drop`` (for Qwen3: thinking on or off)."""
        if mode == self.reasoning:
            return self
        return Formatter(
            self.tokenizer,
            reasoning=mode,
            system_prompt=self.system_prompt,
            text_template=self._text_template_setting,
        )

    def thinking_variants(self) -> dict[str, Formatter]:
        """{"default": self} plus, for templates with a thinking switch, the formatter with the other setting."""
        out = {"default": self}
        if self.has_thinking_switch:
            name = "thinking off" if self.thinking else "thinking on"
            out[name] = self.with_reasoning("drop" if self.thinking else "train")
        return out

    # ------------------------------------------------------------------------------ what the family can do

    @property
    def uses_chat_template(self) -> bool:
        """False for a plain-text template: nothing to embed in a GGUF or an Ollama TEMPLATE."""
        return self.family != TEXT

    @property
    def multi_turn(self) -> bool:
        """Whether earlier turns can be rendered (a plain-text template asks each question on its own)."""
        return self.family != TEXT

    @property
    def template_kwargs(self) -> dict[str, Any]:
        """The extra arguments every ``apply_chat_template`` call gets (``enable_thinking`` where it is read)."""
        return dict(self._template_kwargs)

    @property
    def has_thinking_switch(self) -> bool:
        """The template takes ``enable_thinking`` (Qwen3), so reasoning can be switched on and off."""
        return "enable_thinking" in self._template_kwargs

    @property
    def thinking(self) -> bool | None:
        """``enable_thinking`` as this formatter passes it, or None for templates without the switch."""
        return self._template_kwargs.get("enable_thinking")

    @property
    def recommended_sampling(self) -> tuple[dict[str, Any], str] | None:
        """The sampling the model family's authors recommend, and where that comes from (None: no advice)."""
        if self.family == STRIPS_REASONING:
            return {
                "temperature": 0.6,
                "top_p": 0.95,
            }, "DeepSeek-R1 recommendation (temperature 0.6, top_p 0.95)"
        if self.family == REASONING_FIELD:
            if self._template_kwargs.get("enable_thinking", True):
                return {"temperature": 0.6, "top_p": 0.95, "top_k": 20}, "Qwen3 thinking-mode recommendation"
            return {"temperature": 0.7, "top_p": 0.8, "top_k": 20}, "Qwen3 non-thinking-mode recommendation"
        return None

    # ------------------------------------------------------------------------------ template introspection

    def apply(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        """``apply_chat_template`` with this formatter's template arguments, as text."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, **self._template_kwargs
        )

    def _detect_family(self) -> str:
        user = [{"role": "user", "content": _PROBE_Q}]
        try:
            with_field = self.apply(
                user + [{"role": "assistant", "content": _PROBE_A, "reasoning_content": _PROBE_R}], False
            )
            inline = self.apply(
                user
                + [
                    {"role": "assistant", "content": f"{THINK_OPEN}\n{_PROBE_R}\n{THINK_CLOSE}\n\n{_PROBE_A}"}
                ],
                False,
            )
        except Exception as e:
            raise TemplateError(
                f"the chat template failed on a plain user/assistant conversation ({type(e).__name__}: {e}); "
                "set model.chat_template to a working template or data.text_template to a plain-text one."
            ) from None
        if _PROBE_A not in inline:
            raise TemplateError(
                "the chat template does not render the assistant's answer; set model.chat_template."
            )
        if _PROBE_R in with_field and _PROBE_A in with_field:
            if "reasoning_content" in (self.chat_template or ""):
                return REASONING_FIELD
        if _PROBE_R not in inline:
            return STRIPS_REASONING
        return INLINE

    def _detect_eot(self) -> str:
        """The token the template writes right after an assistant answer: what the model must learn to emit."""
        full = self.apply(
            [{"role": "user", "content": _PROBE_Q}, {"role": "assistant", "content": _PROBE_A}], False
        )
        tail = full[full.rfind(_PROBE_A) + len(_PROBE_A) :]
        # Everything after an answer is template text, the same for every answer: the answer is located by
        # this suffix, never by searching for its text (a short answer like "e" also occurs inside "<|im_end|>").
        self._answer_suffix = tail
        tok = self.tokenizer
        special = set(getattr(tok, "all_special_tokens", []) or [])
        special |= {str(t) for t in getattr(tok, "added_tokens_decoder", {}).values()}
        ids = tok(tail, add_special_tokens=False)["input_ids"]
        for token in tok.convert_ids_to_tokens(ids):
            if token in special and token in tail:
                self._between = tail[: tail.find(token)]
                return token
        if tok.eos_token and tok.eos_token in tail:
            self._between = tail[: tail.find(tok.eos_token)]
            return tok.eos_token
        raise TemplateError(
            f"the chat template ends an assistant turn with {tail!r}, which holds no special token: a model trained "
            "on it cannot learn to stop. Set model.chat_template to a template that closes turns with an "
            "end-of-turn token, or data.text_template (the tokenizer's eos is appended)."
        )

    def _prompt_opens_think(self) -> bool:
        prompt = self.prompt("x")
        return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)

    # ------------------------------------------------------------------------------ rendering

    def messages(self, question: str, system: str | None = None) -> list[dict[str, str]]:
        system = system if system is not None else self.system_prompt
        msgs = [{"role": "system", "content": system}] if system else []
        return msgs + [{"role": "user", "content": question}]

    def _text_problem(self, text: str) -> str | None:
        """Why `text` cannot go into a prompt or completion as plain text, or None."""
        bad = _SURROGATE.search(text)
        if bad:
            return (
                f"holds a lone UTF-16 surrogate ({bad.group(0).encode('unicode_escape').decode()}), which is not "
                "valid text"
            )
        if self._reserved_re is not None:
            m = self._reserved_re.search(text)
            if m:
                return (
                    f"contains {m.group(0)!r}, which this tokenizer reads as a special token, not as text (it "
                    "would inject a control token, such as an end of turn, into the conversation)"
                )
        return None

    def check_text(self, **fields: str | None) -> None:
        """Raise ExampleError if any of the named texts cannot be rendered as plain text."""
        for name, text in fields.items():
            problem = self._text_problem(text) if text else None
            if problem:
                raise ExampleError(f"the {name} {problem}")

    def prompt(self, question: str, system: str | None = None) -> str:
        """The generation prompt, identical at training and inference."""
        self.check_text(question=question, system=system)
        if self.family == TEXT:
            return self._render_text(question, "", "", system)[0]
        return self.apply(self.messages(question, system), True)

    def assistant_message(self, reasoning: str, answer: str) -> dict[str, str]:
        """An assistant turn in the form this family's template expects (for multi-turn histories)."""
        if self.family == REASONING_FIELD:
            return {"role": "assistant", "content": answer, "reasoning_content": reasoning}
        return {"role": "assistant", "content": think_block(reasoning) + answer}

    def conversation(
        self, turns: Sequence[tuple[str, str, str]], question: str, system: str | None = None
    ) -> list[dict[str, str]]:
        """Messages for a multi-turn chat: earlier (question, reasoning, answer) turns as this family's template
        expects them (the template keeps or drops their reasoning), then the new question."""
        msgs = self.messages(turns[0][0] if turns else question, system)
        for i, (q, reasoning, answer) in enumerate(turns):
            if i:
                msgs.append({"role": "user", "content": q})
            msgs.append(self.assistant_message(reasoning, answer))
        if turns:
            msgs.append({"role": "user", "content": question})
        return msgs

    def chat_prompt(
        self, turns: Sequence[tuple[str, str, str]], question: str, system: str | None = None
    ) -> str:
        """The generation prompt after earlier turns; with no turns it is exactly :meth:`prompt`."""
        if not turns:
            return self.prompt(question, system)
        self.check_text(question=question, system=system)
        for q, reasoning, answer in turns:
            self.check_text(question=q, reasoning=reasoning, answer=answer)
        if self.family == TEXT:
            raise TemplateError(
                "a plain-text template has no multi-turn form: each question is asked on its own "
                "(set model.chat_template for multi-turn chat)."
            )
        return self.apply(self.conversation(turns, question, system), True)

    def render(self, example: Example) -> Rendered:
        reasoning = example.reasoning if self.reasoning == "train" else ""
        if not example.answer.strip():
            raise ExampleError("the answer is empty")
        self.check_text(
            question=example.question, reasoning=reasoning, answer=example.answer, system=example.system
        )
        if THINK_OPEN in reasoning or THINK_CLOSE in reasoning or THINK_CLOSE in example.answer:
            raise ExampleError("the reasoning or the answer contains a '<think>' or '</think>' tag")
        if self.family == TEXT:
            prompt, completion, answer_start = self._render_text(
                example.question, reasoning, example.answer, example.system
            )
            return Rendered(prompt, completion, answer_start)
        msgs = self.messages(example.question, example.system)
        prompt = self.apply(msgs, True)
        if self.family == STRIPS_REASONING:
            completion = self._strips_completion(msgs, prompt, reasoning, example.answer)
        else:
            full = self.apply(msgs + [self.assistant_message(reasoning, example.answer)], False)
            if not full.startswith(prompt):
                raise TemplateError(
                    "the generation prompt is not a prefix of the rendered conversation, so training text would "
                    f"differ from inference text.\n  prompt ends: {prompt[-80:]!r}\n  full text:   "
                    f"{full[len(prompt) - 80 : len(prompt) + 40]!r}\nSet model.chat_template to a consistent template."
                )
            # Whatever the template writes after the end-of-turn token (usually "\n") is never generated.
            answer_end = self._answer_end(full, example.answer)
            completion = full[len(prompt) : answer_end + len(self._between) + len(self.eot)]
        answer_start = len(completion) - len(self.eot) - len(self._between) - len(example.answer)
        if reasoning and reasoning not in completion[:answer_start]:
            raise ExampleError(
                f"the chain of thought was changed while rendering with the {self.family} template (it begins "
                "or ends with characters the template strips)"
            )
        return Rendered(prompt, completion, answer_start)

    def _answer_end(self, full: str, answer: str) -> int:
        """Where `answer` ends in a rendered conversation that closes with it; ExampleError if the template
        changed the answer's text."""
        if not full.endswith(answer + self._answer_suffix):
            raise ExampleError(
                "the chat template changed the answer text while rendering it (it begins or ends with characters "
                "the template strips, such as newlines)"
            )
        return len(full) - len(self._answer_suffix)

    def _strips_completion(self, msgs: list[dict[str, str]], prompt: str, reasoning: str, answer: str) -> str:
        full = self.apply(msgs + [{"role": "assistant", "content": answer}], False)
        end = self._answer_end(full, answer)
        head = full[: end - len(answer)]
        between = self._between  # text the template puts between the answer and the end-of-turn token
        if prompt == head:
            return think_block(reasoning) + answer + between + self.eot
        prefill = prompt[len(head) :]
        if prompt.startswith(head) and prefill.strip() == THINK_OPEN:
            # The generation prompt already opened the think block (newer R1 revisions): continue inside it.
            body = think_block(reasoning, force=True) + answer + between + self.eot
            if not body.startswith(prefill):
                raise TemplateError(f"cannot continue the pre-opened think block {prefill!r}")
            return body[len(prefill) :]
        raise TemplateError(
            "the generation prompt does not match the template's assistant header:\n"
            f"  prompt ends: {prompt[-60:]!r}\n  assistant turn starts: {head[-60:]!r}"
        )

    def _render_text(
        self, question: str, reasoning: str, answer: str, system: str | None
    ) -> tuple[str, str, int]:
        tpl = self.text_template or PLAIN_TEXT_TEMPLATE
        system = system if system is not None else self.system_prompt
        if not system:
            tpl = re.sub(r"\{system\}\s*", "", tpl)
        cut = (
            tpl.find("{reasoning}")
            if (self.reasoning == "train" and "{reasoning}" in tpl)
            else tpl.find("{answer}")
        )

        values = {
            "{system}": system or "",
            "{question}": question,
            "{reasoning}": reasoning,
            "{answer}": answer,
        }

        def fill(part: str) -> str:
            # One pass over the template: user text may itself contain "{answer}" or braces and must never be
            # substituted again (so neither str.format nor chained str.replace is safe here).
            return _PLACEHOLDER_RE.sub(lambda m: values[m.group(0)], part)

        prompt = self._bos + fill(tpl[:cut])
        at = tpl.find("{answer}")
        before_answer = fill(tpl[cut:at])
        completion = before_answer + answer + fill(tpl[at + len("{answer}") :]) + self.eot
        answer_start = len(before_answer)
        return prompt, completion, answer_start

    # ------------------------------------------------------------------------------ encoding

    def encode(self, example: Example) -> Encoded:
        """Tokenize prompt and completion separately (as at inference) and concatenate them."""
        r = self.render(example)
        tok = self.tokenizer
        prompt_ids = tok(r.prompt, add_special_tokens=False)["input_ids"]
        comp = tok(r.completion, add_special_tokens=False, return_offsets_mapping=True)
        comp_ids = comp["input_ids"]
        offsets = comp.get("offset_mapping")
        if offsets is not None:
            answer_tok = next(
                (i for i, (_, end) in enumerate(offsets) if end > r.answer_start), len(comp_ids)
            )
        else:  # slow tokenizers: count the tokens before the answer
            answer_tok = len(tok(r.completion[: r.answer_start], add_special_tokens=False)["input_ids"])
        if not comp_ids or comp_ids[-1] != self.eot_id:
            raise TemplateError(f"the completion does not end with the end-of-turn token {self.eot!r}")
        ids = list(prompt_ids) + list(comp_ids)
        return Encoded(
            input_ids=ids,
            completion_mask=[0] * len(prompt_ids) + [1] * len(comp_ids),
            prompt_len=len(prompt_ids),
            answer_start=len(prompt_ids) + answer_tok,
            example=example,
        )

    # ------------------------------------------------------------------------------ checks

    def check(self, examples: list[Example] | None = None) -> list[str]:
        """Run the startup checks; return notes (things handled). Raises TemplateError on real problems."""
        probes = []
        for ex in examples or []:
            try:
                self.render(ex)
            except ExampleError:
                continue  # that example is reported as a bad row; the template is checked on the others
            probes.append(ex)
        probes += [
            Example("What is 2 + 2?", "Two plus two is four.", "4"),
            Example(
                "发热三天，咳嗽。可能的诊断？",
                "好的，先考虑上呼吸道感染。",
                "最可能是急性支气管炎。",
                system="你是医生。",
            ),
            Example("Name a vitamin.", "", "Vitamin C."),
        ]
        notes: list[str] = []
        problems: list[str] = []
        tok = self.tokenizer
        for ex in probes:
            r = self.render(ex)
            prompt_again = self.prompt(ex.question, ex.system)
            if r.prompt != prompt_again:
                problems.append("the training prompt differs from the inference prompt")
            enc = self.encode(ex)
            if self.reasoning == "train" and ex.reasoning and ex.reasoning not in r.completion:
                problems.append("the chain of thought is missing from the completion")
            if enc.labels()[-1] != self.eot_id:
                problems.append(f"the end-of-turn token {self.eot!r} is not inside the supervised span")
            joint = tok(r.prompt + r.completion, add_special_tokens=False)["input_ids"]
            if joint != enc.input_ids and "boundary" not in " ".join(notes):
                notes.append(
                    "prompt and completion tokenize differently apart than together at their boundary; thinktune "
                    "tokenizes them apart, exactly as the model sees them at inference"
                )
            bos = getattr(tok, "bos_token_id", None)
            if bos is not None and enc.input_ids[:2] == [bos, bos]:
                problems.append("the prompt starts with two BOS tokens")
        pad = getattr(tok, "pad_token_id", None)
        if pad is not None and pad == self.eot_id:
            notes.append(
                f"the pad token equals the end-of-turn token {self.eot!r}; labels come from the completion mask, "
                "never from the pad id, so the end-of-turn token stays trained"
            )
        if self.family == STRIPS_REASONING:
            notes.append(
                "this chat template deletes reasoning from assistant turns; thinktune writes the think block "
                "itself so the chain of thought is trained"
            )
        if problems:
            raise TemplateError("template checks failed:\n  - " + "\n  - ".join(dict.fromkeys(problems)))
        return notes

    def describe(self) -> dict[str, Any]:
        source = self.text_template if self.family == TEXT else self.chat_template
        return {
            "family": self.family,
            "end_of_turn": self.eot,
            "end_of_turn_id": self.eot_id,
            "prompt_opens_think": self.prompt_opens_think,
            "template_kwargs": dict(self._template_kwargs),
            "reasoning": self.reasoning,
            "template_sha256": hashlib.sha256((source or "").encode()).hexdigest()[:16],
        }


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front when encoding (what llama.cpp and Ollama do with it too)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos
