"""Peak GPU memory and speed of the 1.5B recipe, without downloading the model (needs a CUDA GPU).

    python benchmarks/train_gpu_memory.py                      # bf16 (auto) and fp16 mixed precision
    python benchmarks/train_gpu_memory.py --steps 6 --tokens 2000

Builds a model with random weights and exactly DeepSeek-R1-Distill-Qwen-1.5B's shape (memory does not depend on
the weights' values), then runs `thinktune train` with configs/medical-o1-r1-distill-qwen-1.5b.yaml on synthetic
worst-case examples (every example near max_length, so each micro-batch is as large as the recipe allows) and
prints one row per precision: peak allocated / reserved GPU memory and training tokens per second. Compare the
peak with your GPU's memory (8 GB for the recipe's reference laptop) before starting a real run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "medical-o1-r1-distill-qwen-1.5b.yaml"
R1_15B_SHAPE = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=131072,
    tie_word_embeddings=False,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
)


def build_model(out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from thinktune.models import assets

    tok = AutoTokenizer.from_pretrained(assets.r1_distill_tokenizer_dir(False))
    config = Qwen2Config(**R1_15B_SHAPE, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_data(path: Path, examples: int, words: int) -> Path:
    vocab = "the patient presents with fever cough and we weigh the differential diagnosis with care".split()
    rows = []
    for i in range(examples):
        cot = " ".join(vocab[(i + k) % len(vocab)] for k in range(words))
        rows.append(
            {"Question": f"Case {i}: what is the diagnosis?", "Complex_CoT": cot, "Response": f"It is {i}."}
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def measure(model: Path, data: Path, work: Path, name: str, steps: int, extra: list[str]) -> dict:
    import torch

    from thinktune.configfile import load_config
    from thinktune.train.recipe import train

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    cfg = load_config(
        RECIPE,
        [
            f"model.name_or_path={model}",
            f"data.source={data}",
            "data.config_name=null",
            "data.val_size=2",
            f"train.output_dir={work}",
            f"train.run_name={name}",
            f"train.max_steps={steps}",
            "train.logging_steps=1",
            f"train.eval_steps={steps}",
            f"train.save_steps={steps}",
            *extra,
        ],
    )
    started = time.time()
    run = train(cfg)
    records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")][1:]  # the first step warms up
    env = json.loads(run.env_file.read_text())
    return {
        "precision": env["precision"],
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else float("nan"),
        "wall_s": time.time() - started,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per measurement")
    p.add_argument(
        "--tokens", type=int, default=1900, help="approximate tokens per example (recipe max 2048)"
    )
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_model(work / "r1-distill-qwen-1.5b-shape")
        data = write_data(work / "long.jsonl", examples=12, words=args.tokens)
        rows = [("bf16 (auto)", measure(model, data, work / "runs", "bf16", args.steps, []))]
        rows.append(
            ("fp16 mixed", measure(model, data, work / "runs", "fp16", args.steps, ["model.dtype=float16"]))
        )
    print(
        f"\n1.5B recipe on {torch.cuda.get_device_name(0)}: micro-batch 2 x ~{args.tokens} tokens, LoRA r=16"
    )
    print(f"{'setting':<14}{'precision':<44}{'peak alloc GiB':>16}{'peak reserved GiB':>19}{'tokens/s':>10}")
    for name, r in rows:
        print(
            f"{name:<14}{r['precision']:<44}{r['peak_allocated_gib']:>16.2f}{r['peak_reserved_gib']:>19.2f}"
            f"{r['tokens_per_s']:>10.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
