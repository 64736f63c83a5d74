"""Load tokenizers and models from a hub id, a local folder, or a GGUF file; built-in `pkg:` assets.

Heavy libraries (transformers, torch) are imported inside functions so the CLI starts instantly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from thinktune import assets
from thinktune.config import ModelConfig
from thinktune.errors import ThinktuneError

log = logging.getLogger(__name__)


class ModelLoadError(ThinktuneError, RuntimeError):
    """The model or tokenizer could not be loaded; the message says what was tried and what to do."""


def resolve_source(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder or id, gguf file name or None). Accepts `pkg:` aliases and direct paths to .gguf files."""
    if not name_or_path:
        raise ModelLoadError("model.name_or_path is empty: set a hub id, a local folder or a .gguf file.")
    try:
        source = assets.resolve(name_or_path)
    except assets.AssetError as e:
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


def _read_template_override(chat_template: str) -> str:
    path = Path(chat_template).expanduser()
    if "{%" not in chat_template and "{{" not in chat_template:
        if not path.is_file():
            raise ModelLoadError(
                f"model.chat_template {chat_template!r} is neither a Jinja template nor an existing file."
            )
        return path.read_text(encoding="utf-8")
    return chat_template


def load_tokenizer(cfg: ModelConfig) -> Any:
    """Tokenizer from `model.tokenizer` or `model.name_or_path` (works with a tokenizer-only folder)."""
    from transformers import AutoTokenizer

    source, gguf = resolve_source(cfg.tokenizer or cfg.name_or_path, None if cfg.tokenizer else cfg.gguf_file)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if gguf:
        kwargs["gguf_file"] = gguf
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
    if not Path(source).exists():
        return (
            "\nIf this is a hub id, check the spelling and your network (or HF_HUB_OFFLINE); for a local model, "
            "give the folder path."
        )
    return ""


def pick_dtype(requested: str, device: str) -> tuple[str, str]:
    """(weight dtype name, precision label for logs). bf16 where the GPU supports it; fp16 weights with fp32
    adapters where it does not (never fp16 gradients); fp32 on CPU."""
    import torch

    if requested != "auto":
        return requested, requested
    if device.startswith("cuda") and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bfloat16", "bf16"
        return "float16", "fp16 mixed precision (fp32 adapter weights)"
    return "float32", "fp32 (CPU)"


def pick_attention(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(cfg: ModelConfig, *, device: str | None = None, dtype: str | None = None, **extra: Any) -> Any:
    """A causal LM from a hub id, folder, .gguf file or `pkg:` alias, in the chosen precision, on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    source, gguf = resolve_source(cfg.name_or_path, cfg.gguf_file)
    dtype_name, _ = pick_dtype(dtype or cfg.dtype, device)
    kwargs: dict[str, Any] = {
        "dtype": getattr(torch, dtype_name),
        "trust_remote_code": cfg.trust_remote_code,
        "attn_implementation": pick_attention(cfg.attn_implementation, device),
        **extra,
    }
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as e:
        hint = _load_hint(source, e, cfg.trust_remote_code)
        raise ModelLoadError(
            f"could not load the model from {source!r}: {type(e).__name__}: {e}{hint}"
        ) from None
    if "device_map" not in extra:
        model.to(device)
    return model


def load_adapter(model: Any, adapter_dir: str | Path, *, trainable: bool = False) -> Any:
    """Wrap `model` with a saved PEFT adapter."""
    from peft import PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"{path} is not a PEFT adapter folder (no adapter_config.json).")
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
