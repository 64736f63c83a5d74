"""`thinktune export RUN_DIR --format merged|ollama|gguf`: turn a run's adapter into a model people can run.

    thinktune export runs/r1-medical --format merged               # runs/r1-medical/export/merged/
    thinktune export runs/r1-medical --format ollama --out my-model # + Modelfile; then: ollama create NAME -f Modelfile
    thinktune export runs/r1-medical --format gguf --gguf-type q8_0 # model-q8_0.gguf (+ Modelfile) for llama.cpp

The base model is reloaded in 16-bit (also for QLoRA runs: an adapter is never merged into a 4-bit model), the
adapter merged into it, and everything is written into a temporary sibling folder that is renamed into place
only after the template round trip (:mod:`thinktune.export.templatecheck`) passed on the written files. Requests that
cannot work are refused before any weights load; an existing output folder is never overwritten.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinktune.config import Config
from thinktune.errors import ExportError
from thinktune.export.ollama import modelfile
from thinktune.export.templatecheck import (
    CheckResult,
    check,
    planned_gguf_facts,
    run_conversations,
    stop_tokens,
    verify,
)
from thinktune.formatting.formatter import Formatter, adds_bos
from thinktune.infer.session import open_run
from thinktune.models.loading import default_device
from thinktune.models.precision import resolve_precision
from thinktune.rundir import RunDir
from thinktune.utils import atomic_write_text, write_json

log = logging.getLogger(__name__)

FORMATS = ("merged", "ollama", "gguf")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class ExportPlan:
    """Everything decided before any weights load."""

    run: RunDir
    cfg: Config  # the run's config with the overrides given (generation.* only)
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
    overrides: list[str] | None = None,
) -> ExportPlan:
    """Validate the request and the run folder; refuse anything that cannot work, before heavy work."""
    from thinktune.export import gguf as gguf_export

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if fmt == "gguf" and gguf_type not in gguf_export.GGUF_TYPES:
        raise ExportError(f"--gguf-type {gguf_type!r}: choose one of {', '.join(gguf_export.GGUF_TYPES)}")
    session = open_run(
        run_dir, overrides
    )  # the run's config, trained tokenizer and template; refuses a run without adapter
    run = session.run
    target = Path(out) if out else run.path / "export" / (fmt if fmt != "gguf" else f"gguf-{gguf_type}")
    if target.exists():
        raise ExportError(
            f"{target} already exists; thinktune never overwrites an export. Choose another --out or remove it."
        )
    cfg, tokenizer, formatter = session.cfg, session.tokenizer, session.formatter
    arch = None
    if fmt in ("ollama", "gguf") and not formatter.uses_chat_template:
        raise ExportError(
            "this run was trained with a plain-text template (data.text_template, or a model without a chat "
            f"template); {fmt} needs a chat template to reproduce the training prompt. Use --format merged."
        )
    if fmt == "gguf":
        arch = gguf_export.check_supported(_base_config(cfg.model))
        gguf_export.pre_tokenizer_name(tokenizer)
    plan = ExportPlan(
        run, cfg, fmt, target, gguf_type, dtype, tokenizer, formatter, cfg.model.name_or_path, arch
    )
    # The prompts the export will produce, checked on the would-be artefacts before any weights load.
    pre = check_plan(plan)
    if not pre.ok:
        raise ExportError("the export would not prompt the model as training did:\n" + pre.summary())
    return plan


def _base_config(model_cfg: Any) -> Any:
    from transformers import AutoConfig

    from thinktune.models.loading import pretrained_source

    source, kwargs = pretrained_source(model_cfg)  # refuses custom code the run's config did not allow
    return AutoConfig.from_pretrained(source, **kwargs)


def sampling_defaults(fmt: Formatter, cfg: Config) -> tuple[dict[str, Any], str]:
    """Recommended sampling for the template family, else the run's own generation settings; and its source."""
    if fmt.recommended_sampling is not None:
        return fmt.recommended_sampling
    g = cfg.generation
    return {"temperature": g.temperature, "top_p": g.top_p}, "the run's generation settings"


def ollama_parameters(fmt: Formatter, cfg: Config, context: int | None) -> dict[str, Any]:
    params, _ = sampling_defaults(fmt, cfg)
    out = {k: v for k, v in params.items()}
    # Reasoning traces are long and Ollama's default context (2-4k) would cut them: room for the longest
    # training example plus a full generation, within what the model supports.
    wanted = max(4096, cfg.data.max_length + cfg.generation.max_new_tokens)
    out["num_ctx"] = min(wanted, int(context)) if context else wanted
    return out


def check_plan(plan: ExportPlan) -> CheckResult:
    """The round trip on what this export will write (tokenizer, embedded template, Modelfile)."""
    fmt, tok = plan.formatter, plan.tokenizer
    bos = adds_bos(tok)
    gguf = None
    mf = None
    if plan.format == "gguf":
        gguf = planned_gguf_facts(fmt)
    if plan.format in ("ollama", "gguf"):
        mf = modelfile(fmt, source=".", runtime_adds_bos=bos, stops=stop_tokens(fmt)[0], parameters={})
    return check(
        fmt, conversations=run_conversations(plan.run), gguf=gguf, modelfile_text=mf, ollama_adds_bos=bos
    )


# ------------------------------------------------------------------------------------------ heavy part


def merge(plan: ExportPlan) -> Any:
    """Base in 16-bit (or the dtype asked for) + adapter, merged. Never a 4-bit base."""

    from thinktune.models.loading import load_adapter, load_model

    cfg = copy.deepcopy(plan.cfg)
    dtype = plan.dtype
    if dtype == "auto":
        base_dtype = str(getattr(_base_config(cfg.model), "dtype", None) or "").replace("torch.", "")
        dtype = base_dtype if base_dtype in ("bfloat16", "float16") else "bfloat16"
    if cfg.model.load_in_4bit:
        log.info("the run trained a 4-bit (QLoRA) base; reloading the base in %s for the merge", dtype)
    cfg.model.load_in_4bit = False
    device = default_device()
    log.info("loading %s in %s on %s", cfg.model.name_or_path, dtype, device)
    model = load_model(cfg.model, device=device, precision=resolve_precision(dtype, device))
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
        result = verify(tmp, plan.formatter, conversations=run_conversations(plan.run), label=plan.out.name)
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
    from thinktune.export import gguf as gguf_export
    from thinktune.export.modelcard import model_card

    fmt, tok, run = plan.formatter, plan.tokenizer, plan.run
    bos = adds_bos(tok)
    stops, stop_ids = stop_tokens(fmt)
    sampling, sampling_source = sampling_defaults(fmt, plan.cfg)
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
        params = ollama_parameters(fmt, plan.cfg, context)
        mf = modelfile(fmt, source=".", runtime_adds_bos=bos, stops=stops, parameters=params)
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
        params = ollama_parameters(fmt, plan.cfg, context)
        mf = modelfile(fmt, source=f"./{name}", runtime_adds_bos=bos, stops=stops, parameters=params)
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
