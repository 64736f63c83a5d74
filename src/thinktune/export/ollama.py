"""Ollama: derive a Modelfile ``TEMPLATE`` from the training chat template, write the Modelfile, read it back,
and render it the way Ollama does (Go-template semantics, :mod:`thinktune.export.gotemplate`).

The ``TEMPLATE`` is derived by rendering probe conversations through the training template and reading off the
text around each role (:func:`ollama_template`); :mod:`thinktune.export.templatecheck` then verifies it like any
other source of prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thinktune.errors import TemplateExportError
from thinktune.export import gotemplate
from thinktune.formatting.formatter import Formatter

_Q1, _Q2, _A, _R, _S = "QPROBE1q", "QPROBE2q", "APROBE1a", "RPROBE1r", "SPROBE1s"


@dataclass(frozen=True)
class Conversation:
    name: str
    turns: tuple[tuple[str, str, str], ...]  # earlier (question, reasoning, answer)
    question: str
    system: str | None = None  # None: the run's own system prompt, if any


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
    head0, tail0 = _split(fmt.apply([{"role": "user", "content": _Q1}], True), _Q1)
    a, b, c = _split(
        fmt.apply([{"role": "system", "content": _S}, {"role": "user", "content": _Q1}], True), _S, _Q1
    )
    plain = [{"role": "user", "content": _Q1}, {"role": "assistant", "content": _A}]
    h, x, y, z = _split(fmt.apply(plain + [{"role": "user", "content": _Q2}], True), _Q1, _A, _Q2)
    with_r = [
        {"role": "user", "content": _Q1},
        fmt.assistant_message(_R, _A),
        {"role": "user", "content": _Q2},
    ]
    rendered_r = fmt.apply(with_r, True)
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
    if not fmt.uses_chat_template:
        raise TemplateExportError(
            "this run used a plain-text template (data.text_template or no chat template), which Ollama cannot "
            "express as a chat; train with the model's chat template or set model.chat_template."
        )
    variants = fmt.thinking_variants()
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
        kw = fmt.template_kwargs
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


def ollama_messages(fmt: Formatter, conv: Conversation) -> list[dict[str, str]]:
    """The conversation as an Ollama client sends it: reasoning of earlier turns in `thinking`."""
    msgs: list[dict[str, str]] = [{"role": "system", "content": conv.system}] if conv.system else []
    for q, reasoning, answer in conv.turns:
        msgs += [
            {"role": "user", "content": q},
            {"role": "assistant", "content": answer, "thinking": reasoning},
        ]
    return msgs + [{"role": "user", "content": conv.question}]
