"""Prove that training, inference and every export prompt the model identically (`thinktune check-template`).

For sample conversations (single and multi-turn, with reasoning, Chinese text) the generation prompt is rendered

- by training's :class:`~thinktune.formatting.Formatter` (the reference),
- by ``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` on the (exported) tokenizer,
- by the chat template embedded in a GGUF file, rendered with jinja2 the way transformers and llama.cpp do
  (with the runtime's BOS rule: a BOS the tokenizer adds is not written twice),
- by an Ollama Modelfile's ``TEMPLATE``, rendered with Go-template semantics (:mod:`thinktune.gotemplate`) on the
  values Ollama passes (``.System``, ``.Messages`` with ``.Role/.Content/.Thinking``, ``.Think``, ``.IsThinkSet``),

and every one must equal the reference; the stop tokens of each must contain the Formatter's end-of-turn token.

The Ollama ``TEMPLATE`` itself is derived here from the training template by rendering probe conversations and
reading off the text around each role (:func:`ollama_template`); it is then verified like any other source.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinktune import gotemplate
from thinktune.errors import ThinktuneError
from thinktune.formatting import TEXT, Formatter

log = logging.getLogger(__name__)

_Q1, _Q2, _A, _R, _S = "QPROBE1q", "QPROBE2q", "APROBE1a", "RPROBE1r", "SPROBE1s"


class TemplateExportError(ThinktuneError):
    """The training template cannot be reproduced by an export format; the message says why."""


@dataclass(frozen=True)
class Conversation:
    name: str
    turns: tuple[tuple[str, str, str], ...]  # earlier (question, reasoning, answer)
    question: str
    system: str | None = None  # None: the run's own system prompt, if any


SAMPLE_CONVERSATIONS = (
    Conversation("single turn", (), "What is 2 + 2?"),
    Conversation("single turn, system prompt", (), "Name a vitamin.", "You are a careful physician."),
    Conversation("Chinese, system prompt", (), "发热三天，咳嗽。可能的诊断？", "你是医生。"),
    Conversation(
        "multi-turn with reasoning", (("What is 2 + 2?", "Two plus two is four.", "4"),), "And 3 + 3?"
    ),
    Conversation(
        "multi-turn Chinese, history with and without reasoning",
        (
            ("发热三天，怎么办？", "", "多休息，多喝水。"),
            (
                "需要吃药吗？",
                "好的，考虑对症治疗。\n体温高于38.5度时可用退烧药。",
                "体温超过38.5℃可以服用退烧药。",
            ),
        ),
        "还要注意什么？",
        "你是医生。",
    ),
)


# ------------------------------------------------------------------------------------------ helpers


def template_kwargs(fmt: Formatter) -> dict[str, Any]:
    return dict(fmt.describe()["template_kwargs"])


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front when encoding (what llama.cpp and Ollama will do too)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def thinking_variants(fmt: Formatter) -> dict[str, Formatter]:
    """{"default": fmt} plus, for templates that take enable_thinking, the opposite setting."""
    out = {"default": fmt}
    kw = template_kwargs(fmt)
    if "enable_thinking" in kw:
        other = "drop" if kw["enable_thinking"] else "train"
        name = "thinking off" if kw["enable_thinking"] else "thinking on"
        out[name] = Formatter(fmt.tokenizer, reasoning=other, system_prompt=fmt.system_prompt)
    return out


def _apply(fmt: Formatter, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return fmt.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, **template_kwargs(fmt)
    )


def _split(text: str, *probes: str) -> list[str]:
    """Cut text at each probe (each must occur exactly once, in order)."""
    parts, rest = [], text
    for p in probes:
        if rest.count(p) != 1:
            raise TemplateExportError(
                f"the chat template does not render a probe message exactly once ({p!r} in {text!r}); "
                "it cannot be translated to an Ollama template."
            )
        head, rest = rest.split(p, 1)
        parts.append(head)
    parts.append(rest)
    return parts


def _common_prefix(*texts: str) -> str:
    out = texts[0]
    for t in texts[1:]:
        n = 0
        while n < min(len(out), len(t)) and out[n] == t[n]:
            n += 1
        out = out[:n]
    return out


def _common_suffix(*texts: str) -> str:
    return _common_prefix(*(t[::-1] for t in texts))[::-1]


def _go_literal(text: str) -> str:
    """A Go string-literal action printing `text` exactly (escapes keep the Modelfile free of raw control chars)."""
    if not text:
        return ""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '{{ "' + "".join(out) + '" }}'


# ------------------------------------------------------------------------------------------ Ollama template


@dataclass
class _Segments:
    bos: str
    sys_pre: str
    sys_post: str
    no_sys: str
    user_pre: str
    user_post: str
    assistant_pre: str
    assistant_post: str
    reasoning_pre: str  # printed before the answer of an earlier turn that had reasoning
    reasoning_post: str
    keeps_reasoning: bool
    gen: str


def _segments(fmt: Formatter, strip_bos: bool) -> _Segments:
    head0, tail0 = _split(_apply(fmt, [{"role": "user", "content": _Q1}], True), _Q1)
    a, b, c = _split(
        _apply(fmt, [{"role": "system", "content": _S}, {"role": "user", "content": _Q1}], True), _S, _Q1
    )
    plain = [{"role": "user", "content": _Q1}, {"role": "assistant", "content": _A}]
    h, x, y, z = _split(_apply(fmt, plain + [{"role": "user", "content": _Q2}], True), _Q1, _A, _Q2)
    with_r = [
        {"role": "user", "content": _Q1},
        fmt.assistant_message(_R, _A),
        {"role": "user", "content": _Q2},
    ]
    rendered_r = _apply(fmt, with_r, True)
    keeps = _R in rendered_r
    if keeps:
        hr, xr, rr, yr, zr = _split(rendered_r, _Q1, _R, _A, _Q2)
    else:
        hr, xr, yr, zr = _split(rendered_r, _Q1, _A, _Q2)
        rr = ""
    problems = []
    if c != tail0 or z != tail0 or zr != tail0:
        problems.append("the text after the last user message depends on the conversation")
    if h != head0 or hr != head0:
        problems.append("the text before the first user message depends on the conversation")
    if yr != y:
        problems.append("the text after an assistant answer depends on its reasoning")
    if not xr.startswith(x):
        problems.append("the assistant header changes when the turn has reasoning")
    if problems:
        raise TemplateExportError(
            "the chat template cannot be expressed as an Ollama template: " + "; ".join(problems)
        )
    user_pre = _common_suffix(head0, b, y)
    user_post = _common_prefix(x, tail0)
    # Prefer the natural cut (right after the end-of-turn token and its newlines) where it is consistent, so
    # the Modelfile reads like a hand-written one; any consistent cut renders the same text.
    natural = _after_eot(y, fmt.eot)
    if natural is not None and all(t.endswith(y[natural:]) for t in (head0, b)):
        user_pre = y[natural:]
    natural = _after_eot(x, fmt.eot) or 0
    if x[:natural] == tail0[:natural]:
        user_post = x[:natural]
    bos = ""
    bos_token = getattr(fmt.tokenizer, "bos_token", None) or ""
    if strip_bos and bos_token and a.startswith(bos_token) and head0.startswith(bos_token):
        bos = bos_token
    return _Segments(
        bos=bos,
        sys_pre=a[len(bos) :],
        sys_post=b[: len(b) - len(user_pre)],
        no_sys=head0[len(bos) : len(head0) - len(user_pre)],
        user_pre=user_pre,
        user_post=user_post,
        assistant_pre=x[len(user_post) :],
        assistant_post=y[: len(y) - len(user_pre)],
        reasoning_pre=xr[len(x) :],
        reasoning_post=rr,
        keeps_reasoning=keeps,
        gen=tail0[len(user_post) :],
    )


def _after_eot(text: str, eot: str) -> int | None:
    at = text.find(eot)
    if at < 0:
        return None
    at += len(eot)
    while at < len(text) and text[at] == "\n":
        at += 1
    return at


def ollama_template(fmt: Formatter, runtime_adds_bos: bool) -> str:
    """A Go template for Ollama that renders exactly the training prompt (verify with :func:`check`)."""
    if fmt.family == TEXT:
        raise TemplateExportError(
            "this run used a plain-text template (data.text_template or no chat template), which Ollama cannot "
            "express as a chat; train with the model's chat template or set model.chat_template."
        )
    variants = thinking_variants(fmt)
    segs = {name: _segments(f, runtime_adds_bos) for name, f in variants.items()}
    base = segs["default"]
    for name, s in segs.items():
        if {**vars(s), "gen": ""} != {**vars(base), "gen": ""}:
            raise TemplateExportError(f"the template's {name} mode changes more than the generation prompt")
    lit = _go_literal
    if base.keeps_reasoning:
        thinking = f"{lit(base.reasoning_pre)}{{{{ .Thinking }}}}{lit(base.reasoning_post)}"
    else:
        thinking = lit(base.reasoning_pre)
    thinking_part = f"{{{{ if .Thinking }}}}{thinking}{{{{ end }}}}" if thinking else ""
    if len(segs) == 2:
        kw = template_kwargs(fmt)
        on = (
            segs["default"].gen
            if kw["enable_thinking"]
            else next(s.gen for n, s in segs.items() if n != "default")
        )
        off = next(s.gen for n, s in segs.items() if n != "default") if kw["enable_thinking"] else base.gen
        gen = (
            f"{{{{ if $.IsThinkSet }}}}{{{{ if $.Think }}}}{lit(on)}{{{{ else }}}}{lit(off)}{{{{ end }}}}"
            f"{{{{ else }}}}{lit(base.gen)}{{{{ end }}}}"
        )
    else:
        gen = lit(base.gen)
    no_sys = f"{{{{ else }}}}{lit(base.no_sys)}" if base.no_sys else ""
    return (
        f"{{{{- if .System }}}}{lit(base.sys_pre)}{{{{ .System }}}}{lit(base.sys_post)}{no_sys}{{{{ end }}}}\n"
        "{{- range $i, $m := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
        f'{{{{- if eq .Role "user" }}}}{lit(base.user_pre)}{{{{ .Content }}}}{lit(base.user_post)}\n'
        f'{{{{- else if eq .Role "assistant" }}}}{lit(base.assistant_pre)}{thinking_part}'
        f"{{{{ .Content }}}}{lit(base.assistant_post)}\n"
        "{{- end }}\n"
        f'{{{{- if and $last (eq .Role "user") }}}}{gen}{{{{ end }}}}\n'
        "{{- end }}"
    )


def modelfile(
    fmt: Formatter,
    *,
    source: str,
    runtime_adds_bos: bool,
    stops: Sequence[str],
    parameters: dict[str, Any],
) -> str:
    """The Modelfile text: FROM, TEMPLATE, SYSTEM (the run's system prompt), PARAMETER stop and sampling lines."""
    template = ollama_template(fmt, runtime_adds_bos)
    lines = [
        "# Written by `thinktune export`; create the model with:  ollama create NAME -f Modelfile",
        f"FROM {source}",
        "",
        f'TEMPLATE """{template}"""',
    ]
    if fmt.system_prompt:
        if '"""' in fmt.system_prompt:
            raise TemplateExportError('the system prompt contains """, which a Modelfile cannot quote')
        lines += ["", f'SYSTEM """{fmt.system_prompt}"""']
    lines.append("")
    for stop in dict.fromkeys(stops):
        lines.append(f'PARAMETER stop "{stop}"')
    for key, value in parameters.items():
        lines.append(f"PARAMETER {key} {value}")
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict[str, Any]:
    """Read the commands thinktune writes (FROM, TEMPLATE, SYSTEM, PARAMETER), with Ollama's quoting rules."""
    out: dict[str, Any] = {"from": None, "template": None, "system": None, "parameters": []}
    i = 0
    while i < len(text):
        if text[i] in " \t\r\n":
            i += 1
            continue
        if text[i] == "#":
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
            continue
        end = i
        while end < len(text) and text[end].isalpha():
            end += 1
        command = text[i:end].lower()
        i = end + 1
        if command == "parameter":
            end = text.find(" ", i)
            name, i = text[i:end], end + 1
        if text.startswith('"""', i):
            close = text.index('"""', i + 3)
            value, i = text[i + 3 : close], close + 3
        else:
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            value, i = text[i:end].strip(), end
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
        if command == "parameter":
            out["parameters"].append((name, value))
        elif command in ("from", "template", "system"):
            out[command] = value
        else:
            raise ValueError(f"unexpected Modelfile command {command!r}")
    return out


def render_ollama(
    template: str,
    conversation: list[dict[str, str]],
    *,
    default_system: str | None,
    think: bool | None = None,
) -> str:
    """Render as Ollama does: the Modelfile SYSTEM is prepended when the request has no system message;
    consecutive messages of one role are merged; .System is all system messages joined."""
    msgs = [dict(m) for m in conversation]
    if default_system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": default_system})
    collated: list[dict[str, str]] = []
    for m in msgs:
        if collated and collated[-1]["role"] == m["role"]:
            collated[-1]["content"] += "\n\n" + m["content"]
        else:
            collated.append(dict(m))
    system = "\n\n".join(m["content"] for m in collated if m["role"] == "system")
    data = {
        "System": system,
        "Messages": [
            {"Role": m["role"], "Content": m["content"], "Thinking": m.get("thinking", "")} for m in collated
        ],
        "Tools": None,
        "Response": "",
        "Think": bool(think),
        "IsThinkSet": think is not None,
    }
    return gotemplate.render(template, data)


# ------------------------------------------------------------------------------------------ jinja (GGUF)


def render_jinja(template: str, messages: list[dict[str, Any]], *, bos: str, eos: str, **kwargs: Any) -> str:
    """Render a chat template with jinja2 configured as transformers (and llama.cpp's jinja) do."""
    from datetime import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False
    ):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda f: datetime.now().strftime(f)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos, **kwargs
    )


def gguf_facts(path: str | Path) -> dict[str, Any]:
    """Chat template, special tokens and BOS rule stored in a GGUF file (metadata only, no tensors)."""
    from thinktune.gguf_export import read_metadata

    meta = read_metadata(path)
    tokens = meta.get("tokenizer.ggml.tokens") or []

    def token(key: str) -> str | None:
        tid = meta.get(key)
        return tokens[tid] if tid is not None and tid < len(tokens) else None

    return {
        "chat_template": meta.get("tokenizer.chat_template"),
        "bos": token("tokenizer.ggml.bos_token_id") or "",
        "eos": token("tokenizer.ggml.eos_token_id") or "",
        "eot": token("tokenizer.ggml.eot_token_id"),
        "eos_id": meta.get("tokenizer.ggml.eos_token_id"),
        "eot_id": meta.get("tokenizer.ggml.eot_token_id"),
        "add_bos": bool(meta.get("tokenizer.ggml.add_bos_token")),
    }


# ------------------------------------------------------------------------------------------ the check


@dataclass
class CheckResult:
    sources: list[str] = field(default_factory=list)
    cases: int = 0
    mismatches: list[str] = field(default_factory=list)  # unified diffs
    stop_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.stop_problems

    def summary(self) -> str:
        head = (
            f"template round trip: {self.cases} prompts x {len(self.sources)} sources "
            f"({', '.join(self.sources)}): "
        )
        if self.ok:
            return head + "identical; stop tokens agree."
        parts = [head + f"{len(self.mismatches)} differences, {len(self.stop_problems)} stop-token problems"]
        parts += self.mismatches + [f"stop tokens: {p}" for p in self.stop_problems]
        return "\n".join(parts)


def _diff(expected: str, got: str, label: str) -> str:
    lines = difflib.unified_diff(
        expected.splitlines(keepends=True),
        got.splitlines(keepends=True),
        fromfile="training prompt (Formatter)",
        tofile=label,
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines) or (
        f"--- training prompt\n+++ {label}\n(differ only in invisible characters: {expected!r} vs {got!r})\n"
    )


def ollama_messages(fmt: Formatter, conv: Conversation) -> list[dict[str, str]]:
    """The conversation as an Ollama client sends it: reasoning of earlier turns in `thinking`."""
    msgs: list[dict[str, str]] = [{"role": "system", "content": conv.system}] if conv.system else []
    for q, reasoning, answer in conv.turns:
        msgs += [
            {"role": "user", "content": q},
            {"role": "assistant", "content": answer, "thinking": reasoning},
        ]
    return msgs + [{"role": "user", "content": conv.question}]


def check(
    fmt: Formatter,
    *,
    conversations: Sequence[Conversation] = SAMPLE_CONVERSATIONS,
    tokenizer: Any = None,
    tokenizer_label: str = "tokenizer.apply_chat_template",
    gguf: dict[str, Any] | None = None,
    gguf_label: str = "GGUF chat template",
    modelfile_text: str | None = None,
    modelfile_label: str = "Ollama TEMPLATE",
    ollama_adds_bos: bool = False,
    generation_eos_ids: Sequence[int] | None = None,
) -> CheckResult:
    """Compare every given source with the Formatter on every conversation (and thinking mode)."""
    result = CheckResult(sources=["Formatter"])
    tok = tokenizer if tokenizer is not None else fmt.tokenizer
    if fmt.family != TEXT:
        result.sources.append(tokenizer_label)
    if gguf is not None:
        result.sources.append(gguf_label)
    parsed = parse_modelfile(modelfile_text) if modelfile_text is not None else None
    if parsed is not None:
        result.sources.append(modelfile_label)
    variants = thinking_variants(fmt)
    for mode, f in variants.items():
        think = None if mode == "default" else template_kwargs(f)["enable_thinking"]
        for conv in conversations:
            if f.family == TEXT and conv.turns:
                continue
            expected = f.chat_prompt(conv.turns, conv.question, conv.system)
            name = conv.name + ("" if mode == "default" else f" [{mode}]")
            result.cases += 1
            got: dict[str, str] = {}
            if f.family != TEXT:
                msgs = f.conversation(conv.turns, conv.question, conv.system)
                got[tokenizer_label] = tok.apply_chat_template(
                    msgs, tokenize=False, add_generation_prompt=True, **template_kwargs(f)
                )
                if gguf is not None:
                    if not gguf.get("chat_template"):
                        got[gguf_label] = "<no tokenizer.chat_template in the GGUF file>"
                    else:
                        text = render_jinja(
                            gguf["chat_template"],
                            msgs,
                            bos=gguf["bos"],
                            eos=gguf["eos"],
                            **template_kwargs(f),
                        )
                        if gguf["add_bos"] and gguf["bos"]:
                            # llama.cpp strips a template-written BOS and adds the token itself: one BOS.
                            text = gguf["bos"] + text.removeprefix(gguf["bos"])
                        got[gguf_label] = text
                if parsed is not None:
                    text = render_ollama(
                        parsed["template"] or "",
                        ollama_messages(f, conv),
                        default_system=parsed["system"],
                        think=think,
                    )
                    got[modelfile_label] = (tok.bos_token if ollama_adds_bos else "") + text
            for label, text in got.items():
                if text != expected:
                    result.mismatches.append(f"[{name}] {label}:\n" + _diff(expected, text, label))
    _check_stops(
        fmt, tok, gguf, parsed, generation_eos_ids, result, tokenizer_label, gguf_label, modelfile_label
    )
    return result


def _check_stops(fmt, tok, gguf, parsed, generation_eos_ids, result, tok_label, gguf_label, mf_label) -> None:
    eot, eot_id = fmt.eot, fmt.eot_id
    if tok.convert_tokens_to_ids(eot) != eot_id:
        result.stop_problems.append(
            f"{tok_label}: {eot!r} is id {tok.convert_tokens_to_ids(eot)}, not {eot_id}"
        )
    if generation_eos_ids is not None and eot_id not in generation_eos_ids:
        result.stop_problems.append(
            f"generation_config.json eos_token_id {list(generation_eos_ids)} lacks the end-of-turn id {eot_id}"
        )
    if gguf is not None and eot_id not in {gguf.get("eos_id"), gguf.get("eot_id")}:
        result.stop_problems.append(
            f"{gguf_label}: neither eos ({gguf.get('eos_id')}) nor eot ({gguf.get('eot_id')}) is {eot!r} ({eot_id})"
        )
    if parsed is not None:
        stops = [v for k, v in parsed["parameters"] if k == "stop"]
        if eot not in stops:
            result.stop_problems.append(f"{mf_label}: no `PARAMETER stop {eot}` (has {stops})")
