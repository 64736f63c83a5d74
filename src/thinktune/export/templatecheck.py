"""Prove that training, inference and every export prompt the model identically (`thinktune check-template`).

For sample conversations (single and multi-turn, with reasoning, Chinese text) the generation prompt is rendered

- by training's :class:`~thinktune.formatting.formatter.Formatter` (the reference),
- by ``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` on the (exported) tokenizer,
- by the chat template embedded in a GGUF file, rendered with jinja2 the way transformers and llama.cpp do
  (with the runtime's BOS rule: a BOS the tokenizer adds is not written twice),
- by an Ollama Modelfile's ``TEMPLATE``, rendered with Go-template semantics (:mod:`thinktune.export.gotemplate`) on the
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

from thinktune.errors import ExportError
from thinktune.export.ollama import Conversation, modelfile, ollama_messages, parse_modelfile, render_ollama
from thinktune.formatting.formatter import Formatter, adds_bos
from thinktune.infer.session import run_tokenizer
from thinktune.rundir import RunDir

log = logging.getLogger(__name__)


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


def planned_gguf_facts(fmt: Formatter) -> dict[str, Any]:
    """What a GGUF export of this formatter's tokenizer would embed (the same keys :func:`gguf_facts` reads)."""
    tok = fmt.tokenizer
    return {
        "chat_template": fmt.chat_template,
        "bos": tok.bos_token or "",
        "eos": tok.eos_token or "",
        "eos_id": tok.eos_token_id,
        "eot_id": fmt.eot_id,
        "add_bos": adds_bos(tok),
    }


def gguf_facts(path: str | Path) -> dict[str, Any]:
    """Chat template, special tokens and BOS rule stored in a GGUF file (metadata only, no tensors)."""
    from thinktune.export.gguf import read_metadata

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
    if fmt.uses_chat_template:
        result.sources.append(tokenizer_label)
    if gguf is not None:
        result.sources.append(gguf_label)
    parsed = parse_modelfile(modelfile_text) if modelfile_text is not None else None
    if parsed is not None:
        result.sources.append(modelfile_label)
    variants = fmt.thinking_variants()
    for mode, f in variants.items():
        think = None if mode == "default" else f.template_kwargs["enable_thinking"]
        for conv in conversations:
            if not f.multi_turn and conv.turns:
                continue
            expected = f.chat_prompt(conv.turns, conv.question, conv.system)
            name = conv.name + ("" if mode == "default" else f" [{mode}]")
            result.cases += 1
            got: dict[str, str] = {}
            if f.uses_chat_template:
                msgs = f.conversation(conv.turns, conv.question, conv.system)
                got[tokenizer_label] = tok.apply_chat_template(
                    msgs, tokenize=False, add_generation_prompt=True, **f.template_kwargs
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
                            **f.template_kwargs,
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


def stop_tokens(fmt: Formatter) -> tuple[list[str], list[int]]:
    tok = fmt.tokenizer
    names, ids = [fmt.eot], [fmt.eot_id]
    if tok.eos_token and tok.eos_token_id is not None and tok.eos_token_id != fmt.eot_id:
        names.append(tok.eos_token)
        ids.append(tok.eos_token_id)
    return names, ids


def run_conversations(run: RunDir) -> list[Conversation]:
    convs = list(SAMPLE_CONVERSATIONS)
    if run.validation_data.is_file():
        for i, ex in enumerate(run.examples("validation")[:2]):
            convs.append(Conversation(f"validation example {i + 1}", (), ex.question, ex.system))
    return convs


def verify(
    folder: str | Path,
    fmt: Formatter,
    conversations: list[Conversation] | None = None,
    label: str | None = None,
) -> CheckResult:
    """The template round trip on an export folder's files: its tokenizer, GGUF file(s) and Modelfile."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    name = label or folder.name
    convs = conversations or list(SAMPLE_CONVERSATIONS)
    results = []
    ggufs = sorted(folder.glob("*.gguf"))
    modelfile = folder / "Modelfile"
    mf_text = modelfile.read_text(encoding="utf-8") if modelfile.is_file() else None
    if (folder / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(folder)
        gen_ids = None
        if (folder / "generation_config.json").is_file():
            eos = json.loads((folder / "generation_config.json").read_text()).get("eos_token_id")
            gen_ids = eos if isinstance(eos, list) else [eos]
        results.append(
            check(
                fmt,
                conversations=convs,
                tokenizer=tok,
                tokenizer_label=f"{name}/tokenizer apply_chat_template",
                modelfile_text=mf_text,
                modelfile_label=f"{name}/Modelfile TEMPLATE",
                ollama_adds_bos=adds_bos(tok),
                generation_eos_ids=gen_ids,
            )
        )
    for path in ggufs:
        facts = gguf_facts(path)
        results.append(
            check(
                fmt,
                conversations=convs,
                gguf=facts,
                gguf_label=f"{path.name} chat template",
                modelfile_text=mf_text,
                modelfile_label=f"{name}/Modelfile TEMPLATE (FROM {path.name})",
                ollama_adds_bos=facts["add_bos"],
            )
        )
    if not results:
        raise ExportError(f"{folder} holds neither a tokenizer nor a .gguf file: is it a thinktune export?")
    merged = CheckResult()
    for r in results:
        merged.sources += [s for s in r.sources if s not in merged.sources]
        merged.cases = max(merged.cases, r.cases)
        merged.mismatches += r.mismatches
        merged.stop_problems += r.stop_problems
    return merged


def check_run(run_dir: str | Path, exports: list[str | Path] | None = None) -> list[tuple[str, Any]]:
    """`thinktune check-template`: the run's template against the would-be exports, then each export folder
    given (default: every thinktune export inside RUN_DIR/export/). Returns [(what, CheckResult)]."""
    run = RunDir.open(run_dir)
    tok = run_tokenizer(run)
    fmt = Formatter.from_config(tok, run.config().data)
    convs = run_conversations(run)
    results: list[tuple[str, Any]] = []
    bos = adds_bos(tok)
    gguf = mf = None
    if fmt.uses_chat_template:
        gguf = planned_gguf_facts(fmt)
        mf = modelfile(fmt, source=".", runtime_adds_bos=bos, stops=stop_tokens(fmt)[0], parameters={})
    results.append(
        (
            f"{run.path} (run tokenizer; template as a GGUF would embed it; the Modelfile export would write)",
            check(fmt, conversations=convs, gguf=gguf, modelfile_text=mf, ollama_adds_bos=bos),
        )
    )
    if exports is None:
        root = run.path / "export"
        exports = (
            sorted(p for p in root.iterdir() if (p / "thinktune_export.json").is_file())
            if root.is_dir()
            else []
        )
    for folder in exports:
        results.append((str(folder), verify(folder, fmt, conversations=convs)))
    return results
