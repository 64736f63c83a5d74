"""Run folders without training: what `thinktune train` (and `thinktune eval`) leave behind, built from a tiny random
base model and written by thinktune's own writers, so a reader under test sees exactly the files a real run has.

- config.yaml             thinktune.train.runfolder.write_config
- data/*.jsonl            thinktune.rundir.save_examples
- data_report.json        thinktune.formatting.doctor (build_report + write_report), with length_histogram.png
                          from thinktune.report.plots.length_histogram
- env.json                thinktune.utils.environment_info, as training writes it
- metrics.jsonl           thinktune.train.callbacks.MetricsWriter, driven through on_log with the Trainer's logs
                          (and loss_curve.png from the LossCurve callback)
- adapter/                PEFT get_peft_model(...).save_pretrained (non-zero LoRA weights) + the tokenizer beside it
- summary.json            RunDir.update_summary (a RunSummary, as runfolder.finish fills it)
- eval_tuned.json/.jsonl  thinktune.evals.evaluate.run_eval on the run itself (two held-out examples)

The layout is the run-folder contract of thinktune.rundir; optional parts can be left out to test readers that must
tolerate them. The base model is ``root/base``, the run folder ``root/run``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from thinktune.config import Config
from thinktune.data.load import load_configured
from thinktune.data.schemas import Example
from thinktune.formatting import doctor
from thinktune.formatting.formatter import Formatter
from thinktune.models import assets
from thinktune.report.plots import length_histogram
from thinktune.rundir import RunDir, save_examples
from thinktune.train.runfolder import write_config
from thinktune.utils import environment_info, write_json

TOKENIZERS = {
    "r1": lambda: assets.r1_distill_tokenizer_dir(False),
    "r1-think": lambda: assets.r1_distill_tokenizer_dir(True),
    "qwen3": assets.qwen3_tokenizer_dir,
    "smollm2": lambda: assets.smollm2_dir(with_weights=False),
}

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

#: What the Trainer hands MetricsWriter.on_log over a 20-step, 2-epoch run: (global_step, logs). Train logs at
#: steps 5-20, an evaluation at steps 10 and 20, and the end-of-training summary (which the writer skips).
TRAINER_LOGS: list[tuple[int, dict[str, Any]]] = [
    (5, {"loss": 2.5, "learning_rate": 1.8e-4, "grad_norm": 1.4, "mean_token_accuracy": 0.41}),
    (10, {"loss": 2.0, "learning_rate": 1.2e-4, "grad_norm": 1.1, "mean_token_accuracy": 0.47}),
    (10, {"eval_loss": 1.9, "eval_runtime": 0.8, "eval_mean_token_accuracy": 0.49}),
    (15, {"loss": 1.7, "learning_rate": 6e-5, "grad_norm": 0.9, "mean_token_accuracy": 0.52}),
    (20, {"loss": 1.5, "learning_rate": 0.0, "grad_norm": 0.8, "mean_token_accuracy": 0.55}),
    (20, {"eval_loss": 1.75, "eval_runtime": 0.8, "eval_mean_token_accuracy": 0.53}),
    (20, {"train_runtime": 162.4, "train_loss": 1.9, "train_samples_per_second": 1.5}),
]
STEPS_PER_EPOCH = 10


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


def write_metrics(
    path: Path,
    logs: list[tuple[int, dict[str, Any]]] = TRAINER_LOGS,
    *,
    tokens_per_step: int = 640,
    supervised_per_step: int = 310,
) -> list[dict[str, Any]]:
    """metrics.jsonl as training writes it: thinktune's MetricsWriter fed the Trainer's logs, step by step (the
    token counters advance as they would over steps of `tokens_per_step` tokens, `supervised_per_step` of them
    supervised). Returns the records written."""
    from thinktune.train.callbacks import MetricsWriter
    from thinktune.utils import read_jsonl

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = MetricsWriter(str(path))
    state = SimpleNamespace(global_step=0, epoch=0.0, num_input_tokens_seen=0, is_world_process_zero=True)
    control = SimpleNamespace()
    writer.on_train_begin(None, state, control)  # no model: the supervised-token hook is not needed here
    for step, entry in logs:
        state.global_step = step
        state.epoch = step / STEPS_PER_EPOCH
        state.num_input_tokens_seen = step * tokens_per_step
        writer.supervised_tokens = step * supervised_per_step
        writer.on_log(None, state, control, logs=dict(entry))
    return list(read_jsonl(path))


def _tokenizer_dir(tokenizer: str | Path) -> Path:
    return Path(tokenizer) if isinstance(tokenizer, Path) else Path(TOKENIZERS[tokenizer]())


def make_run(
    root: Path,
    *,
    arch: str = "qwen2",
    tokenizer: str | Path = "r1",
    n_val: int = 4,
    max_new_tokens: int = 8,
    system_prompt: str | None = None,
    reasoning: str = "train",
    load_in_4bit: bool = False,
    seed: int = 0,
    adapter: bool = True,
    results: bool = True,
    with_metrics: bool | None = None,
    with_summary: bool | None = None,
    with_data_report: bool | None = None,
    with_eval: bool | None = None,
) -> Path:
    """A run folder under `root` (created), trained by nobody; returns ``root/run`` (``root/base`` is the base).

    `tokenizer` is a name in TOKENIZERS or a tokenizer folder. Always written: config.yaml, data/train.jsonl and
    data/validation.jsonl (`n_val` held-out examples: an English one, a Chinese one, a multiple-choice one, then
    English ones) and, with `adapter`, adapter/. `results` (default True) is the default of every `with_*` part:
    metrics.jsonl + loss_curve.png, summary.json, data_report.json + length_histogram.png + env.json, and
    eval_tuned.json/.jsonl (a real evaluation of the run on two held-out examples; it needs the adapter and a
    base that loads on the CPU, so by default it is left out without `adapter` or with `load_in_4bit`).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with_metrics = results if with_metrics is None else with_metrics
    with_summary = results if with_summary is None else with_summary
    with_data_report = results if with_data_report is None else with_data_report
    with_eval = (results and adapter and not load_in_4bit) if with_eval is None else with_eval

    root.mkdir(parents=True, exist_ok=True)
    tok_dir = _tokenizer_dir(tokenizer)
    base = assets.build_tiny_model(root / "base", tok_dir, arch, seed=seed)
    cfg = Config()
    cfg.model.name_or_path = str(base)
    cfg.model.load_in_4bit = load_in_4bit
    cfg.data.source = "sample"
    cfg.data.system_prompt = system_prompt
    cfg.data.reasoning = reasoning
    cfg.data.val_size = n_val
    cfg.data.max_length = 1024
    cfg.lora.r = 4
    cfg.lora.lora_alpha = 8
    cfg.train.output_dir = str(root / "runs")
    cfg.generation.max_new_tokens = max_new_tokens
    cfg.eval.batch_size = 8

    run = RunDir(root / "run")
    run.path.mkdir()
    write_config(run, cfg)

    tok = AutoTokenizer.from_pretrained(str(base))
    fmt = Formatter.from_config(tok, cfg.data)
    loaded = load_configured(cfg.data, reserved=fmt.reserved)  # as training reads its source
    english = [e for e in loaded.examples if e.question.isascii()]
    chinese = [e for e in loaded.examples if not e.question.isascii()]
    val = [english[0], chinese[0], MCQ_EXAMPLE, *english[1 : max(1, n_val - 2)]][:n_val]
    train = [e for e in loaded.examples if e not in val][:12]
    save_examples(run.train_data, train)
    save_examples(run.validation_data, val)

    params = None
    if adapter:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        torch.manual_seed(seed + 1)
        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.lora_alpha,
            target_modules="all-linear",
            init_lora_weights=False,  # non-zero B: the adapter changes the model
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, lora)
        params = peft_model.get_nb_trainable_parameters()
        peft_model.save_pretrained(run.adapter)
        tok.save_pretrained(run.adapter)
        del peft_model, model

    if with_data_report:
        encoded = doctor.encode_all(fmt, train + val)
        policy = doctor.apply_length_policy(fmt, encoded, cfg.data.max_length, cfg.data.length_policy)
        report = doctor.build_report(
            fmt,
            loaded.summary(),
            encoded,
            policy,
            max_length=cfg.data.max_length,
            policy=cfg.data.length_policy,
            notes=fmt.check(loaded.examples[:3]),
            splits={"train": len(train), "validation": len(val)},
            tokenizer_name=str(tok_dir),
        )
        doctor.write_report(run.path, report)
        length_histogram(
            run.length_histogram, [e.lengths for e in encoded], cfg.data.max_length, title=loaded.source
        )
        write_json(
            run.env_file,
            environment_info() | {"device": "cpu", "precision": "fp32", "dtype": "float32", "world_size": 1},
        )

    records: list[dict[str, Any]] = []
    if with_metrics:
        from thinktune.train.callbacks import LossCurve

        records = write_metrics(run.metrics)
        LossCurve(run.metrics, run.loss_curve, title=f"{run.path.name}: {cfg.model.name_or_path}").draw()

    if with_summary:
        losses = [r["loss"] for r in records if r.get("loss") is not None]
        evals = [r["eval_loss"] for r in records if r.get("eval_loss") is not None]
        last = records[-1] if records else {}
        run.update_summary(
            status="completed" if adapter else "running",
            stage="sft",
            steps=last.get("step"),
            max_steps=last.get("step"),
            epochs=last.get("epoch"),
            session_wall_time_s=162.4,
            wall_time_s=162.4,
            train_tokens=max((r.get("tokens") or 0 for r in records), default=None),
            supervised_tokens=max((r.get("supervised_tokens") or 0 for r in records), default=None),
            first_train_loss=losses[0] if losses else None,
            final_train_loss=losses[-1] if losses else None,
            initial_eval_loss=evals[0] if evals else None,
            final_eval_loss=evals[-1] if evals else None,
            best_eval_loss=min(evals) if evals else None,
            trainable_params=params[0] if params else None,
            total_params=params[1] if params else None,
            precision="fp32",
            device="cpu",
            world_size=1,
            train_examples=len(train),
            validation_examples=len(val),
            adapter=str(run.adapter) if run.has_adapter else None,
            loss_curve=str(run.loss_curve) if run.loss_curve.is_file() else None,
        )

    if with_eval:
        evaluate(run.path, "tuned", limit=2)
    return run.path


def evaluate(run: Path, name: str = "tuned", *, adapter: bool = True, limit: int = 2, **kwargs: Any) -> Path:
    """`thinktune eval RUN --name NAME --limit LIMIT` in-process (thinktune.evals.evaluate.run_eval on the run's own
    held-out split, on the CPU); returns eval_NAME.json."""
    from thinktune.evals.evaluate import run_eval
    from thinktune.infer.session import open_run

    session = open_run(run, adapter=adapter, device="cpu")
    try:
        summary = run_eval(
            session, out_dir=run, name=name, adapter=adapter, benchmarks=[], limit=limit, **kwargs
        )
    finally:
        session.release_model()
    return Path(summary["paths"][0])


def write_mcq(path: Path, rows: list[dict]) -> Path:
    """A multiple-choice benchmark file (the input `thinktune eval --benchmark` reads)."""
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


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
