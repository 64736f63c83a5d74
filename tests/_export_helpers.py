"""Make thinktune run folders without training: a tiny random base, a LoRA adapter with non-zero weights saved
beside the run's tokenizer (with its chat template), and config.yaml -- the run-folder contract of rundir.py."""

from __future__ import annotations

import json
from pathlib import Path

from thinktune.config import Config
from thinktune.configfile import dump_yaml
from thinktune.models import assets
from thinktune.utils import write_json, write_jsonl

TOKENIZERS = {
    "r1": lambda: assets.r1_distill_tokenizer_dir(False),
    "r1-think": lambda: assets.r1_distill_tokenizer_dir(True),
    "qwen3": assets.qwen3_tokenizer_dir,
    "smollm2": lambda: assets.smollm2_dir(with_weights=False),
}


def small_tokenizer(out: Path, size: int = 2048) -> Path:
    """SmolLM2's byte-level BPE tokenizer cut to its first `size` ids (merges kept where all three parts survive),
    with its ChatML template: a real, consistent tokenizer whose GGUF transformers can read back in a second
    (gguf-py parses a 49k-150k vocabulary far more slowly)."""
    src = assets.smollm2_dir(with_weights=False)
    data = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = {t: i for t, i in data["model"]["vocab"].items() if i < size}
    merges = []
    for m in data["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append([a, b])
    data["model"]["vocab"], data["model"]["merges"] = vocab, merges
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < size]
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    from transformers import AutoTokenizer

    config["chat_template"] = AutoTokenizer.from_pretrained(src).chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return out


def make_run(
    root: Path,
    *,
    arch: str = "qwen2",
    tokenizer: str | Path = "r1",
    system_prompt: str | None = None,
    reasoning: str = "train",
    adapter: bool = True,
    results: bool = True,
    load_in_4bit: bool = False,
    seed: int = 0,
) -> Path:
    """A run folder under `root` (created), trained by nobody: base/ is the tiny base model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root.mkdir(parents=True, exist_ok=True)
    tok_dir = tokenizer if isinstance(tokenizer, Path) else TOKENIZERS[tokenizer]()
    base = assets.build_tiny_model(root / "base", tok_dir, arch, seed=seed)
    run = root / "run"
    run.mkdir()
    cfg = Config()
    cfg.model.name_or_path = str(base)
    cfg.model.load_in_4bit = load_in_4bit
    cfg.data.source = "sample"
    cfg.data.system_prompt = system_prompt
    cfg.data.reasoning = reasoning
    cfg.lora.r = 4
    cfg.lora.lora_alpha = 8
    (run / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    if adapter:
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        torch.manual_seed(seed + 1)
        lora = LoraConfig(
            r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
        )
        peft_model = get_peft_model(model, lora)
        peft_model.save_pretrained(run / "adapter")
        tok.save_pretrained(run / "adapter")
    if results:
        write_json(
            run / "summary.json", {"status": "completed", "final_loss": 1.234, "train_runtime_s": 12.5}
        )
        write_jsonl(
            run / "metrics.jsonl",
            [{"step": 5, "loss": 2.5, "eval_loss": None}, {"step": 10, "loss": 1.5, "eval_loss": 1.75}],
        )
        write_json(run / "data_report.json", {"load": {"examples": 56, "rows_read": 56}, "max_length": 2048})
        write_json(
            run / "eval_tuned.json", {"validation": {"loss": 1.7, "answer_loss": 0.9}, "accuracy": 0.42}
        )
        write_jsonl(
            run / "data" / "validation.jsonl",
            [
                {
                    "question": "患者发热三天，最可能的诊断？",
                    "reasoning": "r",
                    "answer": "a",
                    "system": None,
                    "meta": {},
                }
            ],
        )
    return run


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))
