"""The model card (README.md) of an export: base model, data, settings, loss and evaluation results, how to run it.

Everything is read from the run folder's files (config.yaml, data_report.json, summary.json, metrics.jsonl,
eval_*.json); a file that is absent is simply not reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thinktune.rundir import RunDir


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _scalars(obj: Any, prefix: str = "", depth: int = 2) -> list[tuple[str, Any]]:
    """Flatten numbers, strings and booleans of a JSON object (data_report.json's facts)."""
    out: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}{k}"
            if isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) <= 80):
                out.append((key, round(v, 4) if isinstance(v, float) else v))
            elif isinstance(v, dict) and depth > 1:
                out += _scalars(v, key + ".", depth - 1)
    return out


_SUMMARY_FIELDS = (
    "status",
    "stage",
    "steps",
    "epochs",
    "train_examples",
    "validation_examples",
    "train_tokens",
    "supervised_tokens",
    "first_train_loss",
    "final_train_loss",
    "initial_eval_loss",
    "final_eval_loss",
    "wall_time_s",
)


def _num(x: Any) -> Any:
    return round(x, 4) if isinstance(x, float) else x


def results_rows(run: RunDir) -> list[tuple[str, Any]]:
    """What the run measured, read through its records: the training summary, the loss curve's ends, and for each
    eval_*.json its held-out loss by span, benchmark accuracy with interval and baselines, and reasoning health."""
    rows: list[tuple[str, Any]] = []
    if run.summary.is_file():
        summary = run.read_summary()
        rows += [
            (f"training: {k}", _num(getattr(summary, k)))
            for k in _SUMMARY_FIELDS
            if getattr(summary, k) is not None
        ]
    metrics = run.metrics_records()
    for key in ("loss", "eval_loss"):
        values = [(m.get("step"), m[key]) for m in metrics if isinstance(m.get(key), (int, float))]
        if values:
            rows.append(
                (
                    f"{key} first -> last (step)",
                    f"{values[0][1]:.4f} -> {values[-1][1]:.4f} ({values[-1][0]})",
                )
            )
    for path in sorted(run.path.glob("eval_*.json")):
        data = _read_json(path)
        if not isinstance(data, dict):
            continue
        name = path.stem[len("eval_") :]
        for span, s in (data.get("heldout_loss") or {}).items():
            if isinstance(s, dict) and isinstance(s.get("loss"), (int, float)):
                rows.append((f"{name}: held-out {span} loss", f"{s['loss']:.4f} ({s.get('tokens')} tokens)"))
        for bench, b in (data.get("benchmarks") or {}).items():
            if isinstance(b, dict) and b.get("accuracy") is not None:
                lo, hi = b.get("ci95") or (0.0, 1.0)
                base = b.get("baselines") or {}
                rows.append(
                    (
                        f"{name}: {bench} accuracy",
                        f"{100 * b['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] on {b.get('questions')} questions "
                        f"(random {100 * (base.get('random') or 0):.1f}%, unparseable {b.get('unparseable')})",
                    )
                )
        health = (data.get("health") or {}).get("all") or {}
        for key in ("closed_think_share", "stopped_share"):
            if isinstance(health.get(key), (int, float)):
                rows.append(
                    (f"{name}: {key.removesuffix('_share').replace('_', ' ')}", f"{100 * health[key]:.1f}%")
                )
    return rows


def _table(rows: list[tuple[str, Any]], limit: int = 60) -> list[str]:
    if not rows:
        return []
    lines = ["| key | value |", "|---|---|"]
    lines += [f"| `{k}` | {str(v).replace('|', '/')} |" for k, v in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"| ... | {len(rows) - limit} more in the run folder |")
    return lines


def model_card(run: RunDir, fmt: str, info: dict[str, Any], sampling_source: str, out: Path) -> str:
    cfg = run.config()
    base = cfg.model.name_or_path
    t = info["template"]
    lines = [
        "---",
        f"base_model: {json.dumps(base)}",
        "library_name: transformers" if fmt != "gguf" else "library_name: gguf",
        "tags: [thinktune, lora, reasoning]",
        "---",
        "",
        f"# {run.path.name}",
        "",
        f"`{base}` fine-tuned with LoRA by [thinktune](https://pypi.org/project/thinktune/) on chain-of-thought data, "
        f"exported as **{fmt}** (merged in {info['dtype']}"
        + (f", written as {info['gguf']['type']} GGUF" if "gguf" in info else "")
        + "). The adapter was merged into an unquantized base, never into a 4-bit one.",
        "",
        "## Prompt format",
        "",
        f"- chat template family: `{t['family']}` (sha256 {t['template_sha256']}), the exact template used in "
        "training; the exported tokenizer, GGUF and Modelfile were checked to render identical prompts "
        "(`thinktune check-template`).",
        f"- end of turn / stop: {', '.join(f'`{s}`' for s in info['stop_tokens'])}",
        f"- the generation prompt {'opens' if t['prompt_opens_think'] else 'does not open'} a `<think>` block; "
        f"reasoning was {'trained' if t['reasoning'] == 'train' else 'dropped'}.",
    ]
    if t.get("template_kwargs"):
        lines.append(f"- template arguments used in training: `{t['template_kwargs']}`")
    if cfg.data.system_prompt:
        lines.append(f"- system prompt used in training: {cfg.data.system_prompt!r}")
    sampling = ", ".join(f"{k}={v}" for k, v in info["sampling"].items())
    lines += [f"- recommended sampling: {sampling} ({sampling_source})", ""]

    d = cfg.data
    lines += [
        "## Data",
        "",
        f"- source: `{d.source}`" + (f" (config `{d.config_name}`)" if d.config_name else ""),
    ]
    lines.append(f"- split `{d.split}`, max_length {d.max_length}, length policy `{d.length_policy}`")
    report = _read_json(run.data_report) if run.data_report.is_file() else None
    if isinstance(report, dict):
        lines += [""] + _table(
            [(k, v) for k, v in _scalars(report) if not k.startswith(("notes", "template"))], limit=20
        )
    lo, tr = cfg.lora, cfg.train
    lines += [
        "",
        "## Training settings",
        "",
        *_table(
            [
                ("lora.r", lo.r),
                ("lora.lora_alpha", lo.lora_alpha),
                ("lora.lora_dropout", lo.lora_dropout),
                ("lora.target_modules", lo.target_modules),
                ("model.load_in_4bit (QLoRA)", cfg.model.load_in_4bit),
                ("train.learning_rate", tr.learning_rate),
                ("train.num_train_epochs", tr.num_train_epochs),
                ("train.max_steps", tr.max_steps),
                ("effective batch", tr.per_device_train_batch_size * tr.gradient_accumulation_steps),
                ("train.seed", tr.seed),
            ]
        ),
    ]
    results = results_rows(run)
    lines += ["", "## Results", ""]
    lines += (
        _table(results)
        if results
        else ["No summary, metrics or evaluation files were found in the run folder."]
    )
    lines += ["", "## Run it", ""] + _usage(fmt, out, info)
    return "\n".join(lines) + "\n"


def _usage(fmt: str, out: Path, info: dict[str, Any]) -> list[str]:
    if fmt == "gguf":
        name = info["gguf"]["file"]
        return [
            "```bash",
            f"llama-cli -m {out}/{name} --jinja -cnv    # chat with the embedded template",
            f"llama-server -m {out}/{name} --jinja      # OpenAI-compatible server",
            f"cd {out} && ollama create my-model -f Modelfile && ollama run my-model",
            "```",
        ]
    lines = [
        "```bash",
        f"thinktune chat --model {out}",
        f"vllm serve {out}",
    ]
    if fmt == "ollama":
        lines.append(f"cd {out} && ollama create my-model -f Modelfile && ollama run my-model")
    lines += [
        "```",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tok = AutoTokenizer.from_pretrained("{out}")',
        f'model = AutoModelForCausalLM.from_pretrained("{out}")',
        'messages = [{"role": "user", "content": "..."}]',
        "ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt', return_dict=True)",
        "print(tok.decode(model.generate(**ids, max_new_tokens=1024)[0]))  # stops at the end-of-turn token",
        "```",
    ]
    return lines
