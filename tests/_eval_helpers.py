"""A realistic run folder without training: what `thinktune train` leaves behind, built from a tiny random model.

The layout follows the run-folder contract in thinktune.rundir: config.yaml, data/{train,validation}.jsonl,
metrics.jsonl, data_report.json + length_histogram.png, adapter/ (a PEFT LoRA adapter with non-zero weights
and the tokenizer), summary.json. Optional parts can be left out to test readers that must tolerate them.
"""

from __future__ import annotations

import json
from pathlib import Path

from thinktune.config import Config
from thinktune.configfile import dump_yaml
from thinktune.data.load import load_examples
from thinktune.data.schemas import Example
from thinktune.formatting import doctor
from thinktune.formatting.formatter import Formatter
from thinktune.models import assets
from thinktune.report.plots import length_histogram
from thinktune.rundir import save_examples
from thinktune.utils import write_json

MCQ_EXAMPLE = Example(
    "A 30-year-old with fever and neck stiffness. Which test confirms meningitis?\n\nA. CT head\nB. Lumbar puncture"
    "\nC. Blood culture\nD. MRI spine",
    "Meningitis is confirmed by examining cerebrospinal fluid.",
    "The answer is B: lumbar puncture.",
    None,
    {
        "options": {"A": "CT head", "B": "Lumbar puncture", "C": "Blood culture", "D": "MRI spine"},
        "answer_idx": "B",
    },
)

METRICS = [
    # the documented metrics.jsonl schema; eval lines carry eval_loss and may lack the training fields
    {
        "step": 5,
        "epoch": 0.5,
        "loss": 2.91,
        "learning_rate": 1.8e-4,
        "grad_norm": 1.4,
        "tokens_per_second": 118.0,
        "supervised_tokens": 3100,
    },
    {
        "step": 10,
        "epoch": 1.0,
        "loss": 2.42,
        "learning_rate": 1.2e-4,
        "grad_norm": 1.1,
        "tokens_per_second": 121.5,
        "supervised_tokens": 6230,
    },
    {"step": 10, "epoch": 1.0, "eval_loss": 2.55},
    {
        "step": 15,
        "epoch": 1.5,
        "loss": 2.05,
        "learning_rate": 6e-5,
        "grad_norm": 0.9,
        "tokens_per_second": 120.2,
        "supervised_tokens": 9400,
    },
    {
        "step": 20,
        "epoch": 2.0,
        "loss": 1.87,
        "learning_rate": 0.0,
        "grad_norm": 0.8,
        "tokens_per_second": 119.9,
        "supervised_tokens": 12480,
    },
    {"step": 20, "epoch": 2.0, "eval_loss": 2.31},
]


def make_run_dir(
    root: Path,
    tokenizer_dir: str | Path,
    *,
    arch: str = "qwen2",
    n_val: int = 4,
    max_new_tokens: int = 8,
    with_metrics: bool = True,
    with_summary: bool = True,
    with_data_report: bool = True,
    seed: int = 0,
) -> Path:
    """Build root/base-model (tiny random) and root/run (the run folder) and return the run folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = assets.build_tiny_model(root / "base-model", tokenizer_dir, arch, seed=seed)
    cfg = Config()
    cfg.model.name_or_path = str(base)
    cfg.data.source = "sample"
    cfg.data.val_size = n_val
    cfg.data.max_length = 1024
    cfg.lora.r = 4
    cfg.lora.lora_alpha = 8
    cfg.train.output_dir = str(root / "runs")
    cfg.generation.max_new_tokens = max_new_tokens
    cfg.eval.batch_size = 8

    run = root / "run"
    (run / "data").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    examples = load_examples("sample").examples
    english = [e for e in examples if e.question.isascii()]
    chinese = [e for e in examples if not e.question.isascii()]
    val = [english[0], chinese[0], MCQ_EXAMPLE, *english[1 : max(1, n_val - 2)]][:n_val]
    train = [e for e in examples if e not in val][:12]
    save_examples(run / "data" / "validation.jsonl", val)
    save_examples(run / "data" / "train.jsonl", train)

    tok = AutoTokenizer.from_pretrained(str(base))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(run / "adapter")
    tok.save_pretrained(run / "adapter")

    if with_data_report:
        fmt = Formatter(tok)
        encoded = doctor.encode_all(fmt, train + val)
        result = doctor.apply_length_policy(fmt, encoded, cfg.data.max_length, cfg.data.length_policy)
        report = doctor.build_report(
            fmt,
            {
                "source": "sample",
                "schema": "medical-o1",
                "rows_read": 56,
                "examples": 56,
                "bad_rows": [],
                "duplicates_removed": 0,
            },
            encoded,
            result,
            max_length=cfg.data.max_length,
            policy=cfg.data.length_policy,
            notes=[],
            splits={"train": len(train), "validation": len(val)},
            tokenizer_name=str(tokenizer_dir),
        )
        doctor.write_report(run, report)
        length_histogram(run / "length_histogram.png", [e.lengths for e in encoded], cfg.data.max_length)
    if with_metrics:
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in METRICS), encoding="utf-8")
    if with_summary:
        write_json(
            run / "summary.json",
            {
                "status": "completed",
                "train_runtime_seconds": 162.4,
                "steps": 20,
                "epochs": 2.0,
                "supervised_tokens": 12480,
                "final_loss": 1.87,
                "final_eval_loss": 2.31,
            },
        )
    return run


def write_mcq(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


MCQ_ROWS = [
    {
        "question": "Which vitamin deficiency causes scurvy?",
        "options": {"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D", "D": "Vitamin K"},
        "answer_idx": "B",
    },
    {
        "question": "Which organ produces insulin?",
        "options": {"A": "Liver", "B": "Pancreas", "C": "Spleen", "D": "Kidney"},
        "answer_idx": "B",
    },
    {
        "question": "缺铁性贫血最常见的原因是什么？",
        "options": {"A": "慢性失血", "B": "维生素B12缺乏", "C": "溶血", "D": "骨髓衰竭"},
        "answer_idx": "A",
    },
]
