"""Load tokenizers and models from a hub id, a local folder, or a GGUF file; built-in `pkg:` assets.

Heavy libraries (transformers, torch) are imported inside functions so the CLI starts instantly.
"""

from __future__ import annotations

import json
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
    if requested == "packed_sdpa":  # thinktune's padding-free SDPA; transformers' SDPA for anything else
        from thinktune.speed import register_packed_sdpa

        return register_packed_sdpa()
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
    source, kwargs = pretrained_source(cfg)
    gguf = "gguf_file" in kwargs
    if not gguf:
        check_weights_format(source, cfg.allow_pickle)
    dtype_name, _ = pick_dtype(dtype or cfg.dtype, device)
    kwargs.update(
        dtype=getattr(torch, dtype_name), attn_implementation=pick_attention(cfg.attn_implementation, device)
    )
    kwargs.update(extra)  # the caller's arguments win, as before
    if not gguf and not cfg.allow_pickle:
        kwargs["use_safetensors"] = True  # never unpickle weights unless the config says so
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


# ------------------------------------------------------------------------------------------ QLoRA

#: transformers' optimizer names that run on bitsandbytes (8-bit states and/or paged memory).
_BNB_OPTIM_MARKERS = ("8bit", "bnb", "paged_")


def uses_bitsandbytes(optim: str) -> bool:
    """Whether a transformers optimizer name (train.optim) runs on bitsandbytes (8-bit or paged states)."""
    return any(marker in optim for marker in _BNB_OPTIM_MARKERS)


def _require_bitsandbytes(what: str) -> None:
    import importlib.util

    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append(
            "no CUDA GPU is available: bitsandbytes' 4-bit weights and 8-bit/paged optimizers run on NVIDIA "
            "GPUs. Here, train 16-bit LoRA instead (model.load_in_4bit=false, train.optim=adamw_torch)."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        problems.append(
            "the bitsandbytes package is not installed: pip install 'thinktune[qlora]' "
            "(or pip install 'bitsandbytes>=0.45')."
        )
    if problems:
        raise ModelLoadError(f"{what} cannot run on this machine:\n  - " + "\n  - ".join(problems))


def require_qlora_support() -> None:
    """Refuse a 4-bit base before any weights load on a machine without CUDA or without bitsandbytes."""
    _require_bitsandbytes("QLoRA (model.load_in_4bit=true)")


def require_optimizer_support(optim: str) -> None:
    """Refuse a bitsandbytes optimizer (e.g. train.optim=paged_adamw_8bit) where it cannot run; other
    optimizers pass."""
    if uses_bitsandbytes(optim):
        _require_bitsandbytes(f"train.optim={optim}")


def qlora_settings(cfg: ModelConfig, *, bf16_supported: bool | None = None) -> dict[str, Any] | None:
    """The 4-bit loading settings as plain values (None when model.load_in_4bit is off): NF4 with double
    quantization, computing in bf16 (fp16 on GPUs without bf16, e.g. Turing/T4). `bf16_supported=None` asks the
    current GPU."""
    if not cfg.load_in_4bit:
        return None
    if cfg.dtype == "float32":
        raise ModelLoadError(
            "model.load_in_4bit with model.dtype=float32: QLoRA computes in bf16/fp16; use auto."
        )
    if cfg.dtype == "auto":
        if bf16_supported is None:
            import torch

            bf16_supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        compute = "bfloat16" if bf16_supported else "float16"
    else:
        compute = cfg.dtype
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": compute,
        "bnb_4bit_quant_storage": "uint8",
    }


def build_quantization_config(settings: dict[str, Any]) -> Any:
    """A transformers BitsAndBytesConfig from :func:`qlora_settings` (no hardware check)."""
    import torch
    from transformers import BitsAndBytesConfig

    kwargs = dict(settings)
    kwargs["bnb_4bit_compute_dtype"] = getattr(torch, kwargs["bnb_4bit_compute_dtype"])
    return BitsAndBytesConfig(**kwargs)


def quantization_config(cfg: ModelConfig) -> Any | None:
    """`BitsAndBytesConfig` for `load_model(cfg, quantization_config=..., device_map={"": 0})`, or None without
    model.load_in_4bit. Raises a clear error on a machine without CUDA or bitsandbytes.

    After a 4-bit load, call :func:`prepare_kbit_model` before wrapping the model with LoRA."""
    settings = qlora_settings(cfg)
    if settings is None:
        return None
    require_qlora_support()
    return build_quantization_config(settings)


def prepare_kbit_model(model: Any, *, gradient_checkpointing: bool) -> Any:
    """Ready a 4-bit model for LoRA training: freeze every base weight and, with gradient checkpointing,
    turn it on (non-reentrant) and make the embedding output require grad so the first block's adapters get
    gradients.

    This is peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=...,
    gradient_checkpointing_kwargs={"use_reentrant": False}) minus one step: PEFT also upcasts every 16-bit
    parameter (embeddings, lm_head, norms) to fp32, which for DeepSeek-R1-Distill-Qwen-7B adds 2.2 GB
    (2 x 152064 x 3584 weights from 2 to 4 bytes) and alone breaks the 8 GB budget; with bf16 compute it buys
    nothing. TRL's SFTTrainer (1.16) no longer calls it either; it casts the adapters to bf16 itself."""
    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    return model
