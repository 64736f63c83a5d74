"""`thinktune export RUN_DIR --format merged|ollama|gguf`: turn a run's adapter into a model people can run.

    thinktune export runs/r1-medical --format merged               # runs/r1-medical/export/merged/
    thinktune export runs/r1-medical --format ollama --out my-model # + Modelfile; then: ollama create NAME -f Modelfile
    thinktune export runs/r1-medical --format gguf --gguf-type q8_0 # model-q8_0.gguf (+ Modelfile) for llama.cpp

The base model is reloaded in 16-bit (also for QLoRA runs: an adapter is never merged into a 4-bit model), the
adapter merged into it, and everything is written into a temporary sibling folder that is renamed into place
only after the template round trip (:mod:`thinktune.templatecheck`) passed on the written files. Requests that
cannot work are refused before any weights load; an existing output folder is never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinktune import templatecheck
from thinktune.errors import ThinktuneError
from thinktune.formatting import REASONING_FIELD, STRIPS_REASONING, TEXT, Formatter
from thinktune.rundir import RunDir
from thinktune.utils import atomic_write_text, write_json

log = logging.getLogger(__name__)

FORMATS = ("merged", "ollama", "gguf")
DTYPES = ("auto", "bfloat16", "float16", "float32")


class ExportError(ThinktuneError):
    """The export cannot be done as asked; the message says why and what to do."""


@dataclass
class ExportPlan:
    """Everything decided before any weights load."""

    run: RunDir
    format: str
    out: Path
    gguf_type: str
    dtype: str
    tokenizer: Any
    formatter: Formatter
    base: str
    arch: str | None


def plan_export(
    run_dir: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    gguf_type: str = "f16",
    dtype: str = "auto",
) -> ExportPlan:
    """Validate the request and the run folder; refuse anything that cannot work, before heavy work."""
    from thinktune import gguf_export

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if fmt == "gguf" and gguf_type not in gguf_export.GGUF_TYPES:
        raise ExportError(f"--gguf-type {gguf_type!r}: choose one of {', '.join(gguf_export.GGUF_TYPES)}")
    run = RunDir.open(run_dir)
    if not (run.adapter / "adapter_config.json").is_file():
        status = _summary_status(run)
        raise ExportError(
            f"{run.adapter} holds no PEFT adapter (adapter_config.json is missing){status}; nothing to export. "
            "Train (or resume) the run first: thinktune train ..."
        )
    target = Path(out) if out else run.path / "export" / (fmt if fmt != "gguf" else f"gguf-{gguf_type}")
    if target.exists():
        raise ExportError(
            f"{target} already exists; thinktune never overwrites an export. Choose another --out or remove it."
        )
    cfg = run.config()
    tokenizer = run.tokenizer()
    formatter = run.formatter(tokenizer)
    arch = None
    if fmt in ("ollama", "gguf") and formatter.family == TEXT:
        raise ExportError(
            "this run was trained with a plain-text template (data.text_template, or a model without a chat "
            f"template); {fmt} needs a chat template to reproduce the training prompt. Use --format merged."
        )
    if fmt == "gguf":
        arch = gguf_export.check_supported(_base_config(cfg.model))
        gguf_export.pre_tokenizer_name(tokenizer)
    plan = ExportPlan(run, fmt, target, gguf_type, dtype, tokenizer, formatter, cfg.model.name_or_path, arch)
    # The prompts the export will produce, checked on the would-be artefacts before any weights load.
    pre = check_plan(plan)
    if not pre.ok:
        raise ExportError("the export would not prompt the model as training did:\n" + pre.summary())
    return plan


def _summary_status(run: RunDir) -> str:
    if run.summary.is_file():
        try:
            return f" (summary.json status: {json.loads(run.summary.read_text()).get('status')!r})"
        except (OSError, ValueError):
            return ""
    return " (no summary.json: training may not have finished)"


def _base_config(model_cfg: Any) -> Any:
    from transformers import AutoConfig

    from thinktune.modeling import pretrained_source

    source, kwargs = pretrained_source(model_cfg)  # refuses custom code the run's config did not allow
    return AutoConfig.from_pretrained(source, **kwargs)


def sampling_defaults(fmt: Formatter, run: RunDir) -> tuple[dict[str, Any], str]:
    """Recommended sampling for the template family, and where the recommendation comes from."""
    if fmt.family == STRIPS_REASONING:
        return {"temperature": 0.6, "top_p": 0.95}, "DeepSeek-R1 recommendation (temperature 0.6, top_p 0.95)"
    if fmt.family == REASONING_FIELD:
        if templatecheck.template_kwargs(fmt).get("enable_thinking", True):
            return {"temperature": 0.6, "top_p": 0.95, "top_k": 20}, "Qwen3 thinking-mode recommendation"
        return {"temperature": 0.7, "top_p": 0.8, "top_k": 20}, "Qwen3 non-thinking-mode recommendation"
    g = run.config().generation
    return {"temperature": g.temperature, "top_p": g.top_p}, "the run's generation settings"


def stop_tokens(fmt: Formatter) -> tuple[list[str], list[int]]:
    tok = fmt.tokenizer
    names, ids = [fmt.eot], [fmt.eot_id]
    if tok.eos_token and tok.eos_token_id is not None and tok.eos_token_id != fmt.eot_id:
        names.append(tok.eos_token)
        ids.append(tok.eos_token_id)
    return names, ids


def ollama_parameters(fmt: Formatter, run: RunDir, context: int | None) -> dict[str, Any]:
    params, _ = sampling_defaults(fmt, run)
    out = {k: v for k, v in params.items()}
    cfg = run.config()
    # Reasoning traces are long and Ollama's default context (2-4k) would cut them: room for the longest
    # training example plus a full generation, within what the model supports.
    wanted = max(4096, cfg.data.max_length + cfg.generation.max_new_tokens)
    out["num_ctx"] = min(wanted, int(context)) if context else wanted
    return out


def _conversations(run: RunDir) -> list[templatecheck.Conversation]:
    convs = list(templatecheck.SAMPLE_CONVERSATIONS)
    if run.validation_data.is_file():
        for i, ex in enumerate(run.examples("validation")[:2]):
            convs.append(
                templatecheck.Conversation(f"validation example {i + 1}", (), ex.question, ex.system)
            )
    return convs


def check_plan(plan: ExportPlan) -> templatecheck.CheckResult:
    """The round trip on what this export will write (tokenizer, embedded template, Modelfile)."""
    fmt, tok = plan.formatter, plan.tokenizer
    bos = templatecheck.adds_bos(tok)
    gguf = None
    mf = None
    if plan.format == "gguf":
        gguf = {
            "chat_template": fmt.chat_template,
            "bos": tok.bos_token or "",
            "eos": tok.eos_token or "",
            "eos_id": tok.eos_token_id,
            "eot_id": fmt.eot_id,
            "add_bos": bos,
        }
    if plan.format in ("ollama", "gguf"):
        mf = templatecheck.modelfile(
            fmt, source=".", runtime_adds_bos=bos, stops=stop_tokens(fmt)[0], parameters={}
        )
    return templatecheck.check(
        fmt, conversations=_conversations(plan.run), gguf=gguf, modelfile_text=mf, ollama_adds_bos=bos
    )


# ------------------------------------------------------------------------------------------ heavy part


def merge(plan: ExportPlan) -> Any:
    """Base in 16-bit (or the dtype asked for) + adapter, merged. Never a 4-bit base."""
    import torch

    from thinktune.modeling import load_adapter, load_model

    cfg = plan.run.config()
    dtype = plan.dtype
    if dtype == "auto":
        base_dtype = str(getattr(_base_config(cfg.model), "dtype", None) or "").replace("torch.", "")
        dtype = base_dtype if base_dtype in ("bfloat16", "float16") else "bfloat16"
    if cfg.model.load_in_4bit:
        log.info("the run trained a 4-bit (QLoRA) base; reloading the base in %s for the merge", dtype)
    cfg.model.load_in_4bit = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log.info("loading %s in %s on %s", cfg.model.name_or_path, dtype, device)
    model = load_model(cfg.model, device=device, dtype=dtype)
    tok_len = len(plan.tokenizer)
    if model.get_input_embeddings().weight.shape[0] < tok_len:
        model.resize_token_embeddings(tok_len)
    model = load_adapter(model, plan.run.adapter)
    merged = model.merge_and_unload()
    merged.eval()
    return merged


def export(plan: ExportPlan) -> Path:
    """Write the export described by `plan`; returns the output folder."""
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{plan.out.name}.partial-", dir=plan.out.parent))
    try:
        model = merge(plan)
        info = _write(plan, model, tmp)
        result = verify(tmp, plan.formatter, conversations=_conversations(plan.run), label=plan.out.name)
        info["template_check"] = {"ok": result.ok, "sources": result.sources, "prompts": result.cases}
        if not result.ok:
            raise ExportError(
                "the written export does not prompt the model as training did:\n" + result.summary()
            )
        write_json(tmp / "thinktune_export.json", info)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, plan.out)
        except OSError:
            raise ExportError(
                f"{plan.out} appeared while exporting; the export was not moved there"
            ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s", result.summary())
    return plan.out


def _write(plan: ExportPlan, model: Any, out: Path) -> dict[str, Any]:
    from thinktune import gguf_export
    from thinktune.modelcard import model_card

    fmt, tok, run = plan.formatter, plan.tokenizer, plan.run
    bos = templatecheck.adds_bos(tok)
    stops, stop_ids = stop_tokens(fmt)
    sampling, sampling_source = sampling_defaults(fmt, run)
    info: dict[str, Any] = {
        "format": plan.format,
        "run": str(run.path.resolve()),
        "base_model": plan.base,
        "dtype": str(model.dtype).replace("torch.", ""),
        "template": fmt.describe(),
        "stop_tokens": stops,
        "sampling": sampling,
    }
    context = getattr(model.config, "max_position_embeddings", None)
    if plan.format in ("merged", "ollama"):
        model.generation_config = _generation_config(model, tok, stop_ids, sampling)
        model.save_pretrained(out, safe_serialization=True)
        save_tokenizer(tok, out, adds_bos=bos)
    if plan.format == "ollama":
        params = ollama_parameters(fmt, run, context)
        mf = templatecheck.modelfile(fmt, source=".", runtime_adds_bos=bos, stops=stops, parameters=params)
        atomic_write_text(out / "Modelfile", mf)
    if plan.format == "gguf":
        name = f"model-{plan.gguf_type}.gguf"
        info["gguf"] = gguf_export.write_gguf(
            model,
            tok,
            out / name,
            gguf_type=plan.gguf_type,
            eot_id=fmt.eot_id,
            adds_bos=bos,
            chat_template=fmt.chat_template,
            name=f"{run.path.name} ({plan.base} + LoRA)",
        )
        params = ollama_parameters(fmt, run, context)
        mf = templatecheck.modelfile(
            fmt, source=f"./{name}", runtime_adds_bos=bos, stops=stops, parameters=params
        )
        atomic_write_text(out / "Modelfile", mf)
    atomic_write_text(out / "README.md", model_card(run, plan.format, info, sampling_source, plan.out))
    return info


def _generation_config(model: Any, tok: Any, stop_ids: list[int], sampling: dict[str, Any]) -> Any:
    from transformers import GenerationConfig

    gc = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=stop_ids if len(stop_ids) > 1 else stop_ids[0],
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stop_ids[0],
    )
    temperature = sampling.get("temperature", 0)
    if temperature and temperature > 0:
        gc.do_sample = True
        gc.temperature = temperature
        gc.top_p = sampling.get("top_p", 1.0)
        if "top_k" in sampling:
            gc.top_k = sampling["top_k"]
    else:
        gc.do_sample = False
    return gc


def save_tokenizer(tok: Any, out: Path, *, adds_bos: bool) -> None:
    """The tokenizer with the exact training chat template; `add_bos_token` written explicitly, because Ollama
    and llama.cpp's converters read that flag to decide whether to put BOS in front."""
    tok.save_pretrained(out)
    if tok.chat_template and not (out / "chat_template.jinja").is_file():
        atomic_write_text(out / "chat_template.jinja", tok.chat_template)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["add_bos_token"] = adds_bos
    cfg.setdefault("add_eos_token", False)
    atomic_write_text(cfg_path, json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def verify(
    folder: str | Path,
    fmt: Formatter,
    conversations: list[templatecheck.Conversation] | None = None,
    label: str | None = None,
) -> templatecheck.CheckResult:
    """The template round trip on an export folder's files: its tokenizer, GGUF file(s) and Modelfile."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    name = label or folder.name
    convs = conversations or list(templatecheck.SAMPLE_CONVERSATIONS)
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
            templatecheck.check(
                fmt,
                conversations=convs,
                tokenizer=tok,
                tokenizer_label=f"{name}/tokenizer apply_chat_template",
                modelfile_text=mf_text,
                modelfile_label=f"{name}/Modelfile TEMPLATE",
                ollama_adds_bos=templatecheck.adds_bos(tok),
                generation_eos_ids=gen_ids,
            )
        )
    for path in ggufs:
        facts = templatecheck.gguf_facts(path)
        results.append(
            templatecheck.check(
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
    merged = templatecheck.CheckResult()
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
    tok = run.tokenizer()
    fmt = run.formatter(tok)
    convs = _conversations(run)
    results: list[tuple[str, Any]] = []
    bos = templatecheck.adds_bos(tok)
    gguf = mf = None
    if fmt.family != TEXT:
        gguf = {
            "chat_template": fmt.chat_template,
            "bos": tok.bos_token or "",
            "eos": tok.eos_token or "",
            "eos_id": tok.eos_token_id,
            "eot_id": fmt.eot_id,
            "add_bos": bos,
        }
        mf = templatecheck.modelfile(
            fmt, source=".", runtime_adds_bos=bos, stops=stop_tokens(fmt)[0], parameters={}
        )
    results.append(
        (
            f"{run.path} (run tokenizer; template as a GGUF would embed it; the Modelfile export would write)",
            templatecheck.check(fmt, conversations=convs, gguf=gguf, modelfile_text=mf, ollama_adds_bos=bos),
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
