"""Load tokenizers, models and adapters from a hub id, a local folder, a GGUF file or a built-in `pkg:` asset.

Heavy libraries (transformers, torch) are imported inside functions so the CLI starts instantly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from thinktune.config import ModelConfig
from thinktune.errors import AssetError, ModelLoadError
from thinktune.models import assets
from thinktune.models.attention import implementation_name, resolve_attention
from thinktune.models.precision import Precision, resolve_precision

log = logging.getLogger(__name__)


def resolve_source(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder or id, gguf file name or None). Accepts `pkg:` aliases and direct paths to .gguf files."""
    if not name_or_path:
        raise ModelLoadError("model.name_or_path is empty: set a hub id, a local folder or a .gguf file.")
    try:
        source = assets.resolve(name_or_path)
    except AssetError as e:
        raise ModelLoadError(str(e)) from None
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {source!r} does not exist.")
        return str(path.parent), path.name
    if gguf_file:
        return source, gguf_file
    if source.startswith((".", "/", "~")) and not path.exists():
        raise ModelLoadError(f"model folder {source!r} does not exist.")
    return (str(path) if path.exists() else source), None


def check_remote_code(source: str, trust_remote_code: bool) -> None:
    """Refuse, by name, a local model or tokenizer folder that ships Python code (``auto_map``) unless
    model.trust_remote_code is set. transformers refuses too, but without naming the setting or the files."""
    if trust_remote_code:
        return
    folder = Path(source)
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if auto_map:
            code = sorted(p.name for p in folder.glob("*.py"))
            raise ModelLoadError(
                f"{folder} ships its own Python code ({name} auto_map: {auto_map}; files: {', '.join(code) or 'none'}"
                "), which thinktune does not run by default. Read that code; if you trust it, set "
                "model.trust_remote_code=true."
            )


def check_weights_format(source: str, allow_pickle: bool) -> None:
    """Refuse a local model folder whose weights are only pickles (.bin/.pt), unless model.allow_pickle."""
    folder = Path(source)
    if allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise ModelLoadError(
            f"{folder} holds its weights only as pickle files ({', '.join(pickles[:3])}); loading a pickle can run "
            "arbitrary code, so thinktune loads safetensors only. Convert the weights to safetensors, or set "
            "model.allow_pickle=true if you trust where they came from."
        )


def _read_template_override(chat_template: str) -> str:
    path = Path(chat_template).expanduser()
    if "{%" not in chat_template and "{{" not in chat_template:
        if not path.is_file():
            raise ModelLoadError(
                f"model.chat_template {chat_template!r} is neither a Jinja template nor an existing file."
            )
        return path.read_text(encoding="utf-8")
    return chat_template


def pretrained_source(
    cfg: Any, name: str | None = None, gguf_file: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The resolved source and the from_pretrained arguments every loader shares (trust_remote_code, revision,
    gguf_file), after refusing custom code the model config does not allow. `name` and `gguf_file` default to
    the model's own (`cfg` is the config's model section)."""
    if name is None:
        name, gguf_file = cfg.name_or_path, cfg.gguf_file
    source, gguf = resolve_source(name, gguf_file)
    check_remote_code(source, cfg.trust_remote_code)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if gguf:
        kwargs["gguf_file"] = gguf
    return source, kwargs


def load_tokenizer(cfg: ModelConfig) -> Any:
    """Tokenizer from `model.tokenizer` or `model.name_or_path` (works with a tokenizer-only folder)."""
    from transformers import AutoTokenizer

    source, kwargs = pretrained_source(
        cfg, cfg.tokenizer or cfg.name_or_path, None if cfg.tokenizer else cfg.gguf_file
    )
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as e:
        hint = _load_hint(source, e, cfg.trust_remote_code)
        raise ModelLoadError(
            f"could not load the tokenizer from {source!r}: {type(e).__name__}: {e}{hint}"
        ) from None
    if cfg.chat_template:
        tok.chat_template = _read_template_override(cfg.chat_template)
    if tok.pad_token is None:
        # Padding never enters the loss (labels come from the completion mask), so eos is a safe pad.
        tok.pad_token = tok.eos_token
    return tok


def _load_hint(source: str, error: Exception, trust_remote_code: bool) -> str:
    text = str(error)
    if "trust_remote_code" in text and not trust_remote_code:
        return (
            "\nThis model ships its own code. Read it, then set model.trust_remote_code=true if you trust it."
        )
    if "safetensors" in text:
        return (
            "\nthinktune loads safetensors weights only; set model.allow_pickle=true to allow .bin pickles."
        )
    if not Path(source).exists():
        return (
            "\nIf this is a hub id, check the spelling and your network (or HF_HUB_OFFLINE); for a local model, "
            "give the folder path."
        )
    return ""


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    cfg: ModelConfig,
    *,
    device: str | None = None,
    precision: Precision | None = None,
    attention: str | None = None,
    quantization: Any = None,
) -> Any:
    """A causal LM from a hub id, folder, .gguf file or `pkg:` alias, on `device`.

    `precision` and `attention` default to what :func:`~thinktune.models.precision.resolve_precision` and
    :func:`~thinktune.models.attention.resolve_attention` decide for inference on `device`; training passes its
    own (padding-free attention). `quantization` is a BitsAndBytesConfig from
    :func:`thinktune.models.qlora.quantization_config`: the 4-bit base is placed on `device` as it loads."""
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    source, kwargs = pretrained_source(cfg)
    gguf = "gguf_file" in kwargs
    if not gguf:
        check_weights_format(source, cfg.allow_pickle)
    precision = precision or resolve_precision(cfg.dtype, device)
    attention = attention or resolve_attention(cfg.attn_implementation, device)
    kwargs.update(dtype=precision.torch_dtype, attn_implementation=implementation_name(attention))
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map={"": device})
    if not gguf and not cfg.allow_pickle:
        kwargs["use_safetensors"] = True  # never unpickle weights unless the config says so
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as e:
        hint = _load_hint(source, e, cfg.trust_remote_code)
        raise ModelLoadError(
            f"could not load the model from {source!r}: {type(e).__name__}: {e}{hint}"
        ) from None
    if quantization is None:
        model.to(device)
    return model


def load_adapter(
    model: Any, adapter_dir: str | Path, *, trainable: bool = False, allow_pickle: bool = False
) -> Any:
    """Wrap `model` with a saved PEFT adapter (safetensors only unless `allow_pickle`)."""
    from peft import PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"{path} is not a PEFT adapter folder (no adapter_config.json).")
    check_weights_format(str(path), allow_pickle)
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
