"""`thinktune compare RUN_DIR`: the base and the tuned model answer the same questions, decoded the same way.

    thinktune compare runs/my-run --limit 20
    thinktune compare runs/my-run --benchmark ../shared/data/medagents_bench/medqa/test.jsonl --limit 50

The questions are the run's held-out (validation) questions, or with --benchmark the questions of those
multiple-choice files. Both models come from one set of weights (the adapter switched off for the base), get
identical prompts (the run's formatter), identical decoding settings and identical seeds. Writes
compare.jsonl (one pair per question) and compare.json (settings and the summary), and prints what changed.
"""

from __future__ import annotations

import logging
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from thinktune.errors import EvalError
from thinktune.evals.evaluate import record, tokenizer_fn
from thinktune.evals.grading import Grade, accuracy
from thinktune.evals.health import HEALTH_ROWS, fmt_value, health_metrics, lookup
from thinktune.evals.language import detect_language
from thinktune.evals.mcq import Question, load_questions
from thinktune.evals.records import ComparePair
from thinktune.infer.session import Session
from thinktune.utils import write_json, write_jsonl

log = logging.getLogger(__name__)


def questions(session: Session, benchmarks: list[str], limit: int | None) -> list[Question]:
    """The benchmark questions, or else the run's held-out questions, in a fixed order."""
    if benchmarks:
        return [q for mcq in load_questions(benchmarks, limit) for q in mcq.items]
    return [Question.from_example(ex, i) for i, ex in enumerate(session.validation_examples(limit))]


def pair(question: Question, base: Any, tuned: Any, tokenize: Any) -> ComparePair:
    """One compare.jsonl line: the question, and each side measured and graded exactly as eval does."""
    b, t = record(question, base, tokenize), record(question, tuned, tokenize)
    return ComparePair(
        set=question.set,
        index=question.index,
        question=question.text,
        base=b.output,
        tuned=t.output,
        question_language=detect_language(question.text),
        options=question.options,
        reference=question.reference,
        reference_letter=question.answer,
    )


def _grades(pairs: list[ComparePair], side: str) -> list[Grade]:
    return [
        Grade(p.side(side).predicted, p.side(side).extracted_by or "", p.side(side).correct)
        for p in pairs
        if p.reference_letter
    ]


def summarize(pairs: list[ComparePair]) -> dict[str, Any]:
    """Health and accuracy of each side and how many answers changed: a pure function of compare.jsonl."""
    changed = sum(p.base.answer.strip() != p.tuned.answer.strip() for p in pairs)
    graded = [p for p in pairs if p.reference_letter]
    return {
        "questions": len(pairs),
        "sets": sorted({p.set for p in pairs}),
        "answers_changed": changed,
        "choices_changed": sum(p.base.predicted != p.tuned.predicted for p in graded),
        **{
            side: {
                "health": health_metrics([p.side(side) for p in pairs]),
                "accuracy": accuracy(_grades(pairs, side)),
            }
            for side in ("base", "tuned")
        },
    }


def run_compare(
    session: Session, *, benchmarks: list[str], limit: int | None, out_dir: Path, overwrite: bool = False
) -> dict[str, Any]:
    started = time.time()
    jsonl_path, json_path = out_dir / "compare.jsonl", out_dir / "compare.json"
    existing = [str(p) for p in (jsonl_path, json_path) if p.exists()]
    if existing and not overwrite:
        raise EvalError(
            f"{existing[0]} already exists; pass --overwrite to replace it (nothing was changed)."
        )
    if session.adapter_dir is None:
        raise EvalError("compare needs a tuned model: this run has no adapter.")
    decoding = session.decoding_summary()  # refuses an impossible backend before any model is loaded
    asked = questions(session, benchmarks, limit)
    if not asked:
        raise EvalError(
            "no questions to compare: the run has no validation split (data.val_size=0); pass --benchmark FILE."
        )
    fmt = session.formatter
    prompts = [fmt.prompt(q.message, q.system) for q in asked]
    log.info("comparing base and tuned on %d questions", len(prompts))
    # Same prompts and decoding (greedy: both sides in the same batches; sampling: the same batches and seeds
    # per side): any difference comes from the adapter.
    base, tuned = session.generate_both(prompts)
    tokenize = tokenizer_fn(session.tokenizer)
    pairs = [pair(q, b, t, tokenize) for q, b, t in zip(asked, base, tuned, strict=True)]
    summary = {
        "model": session.model_name,
        "adapter": str(session.adapter_dir),
        "run_dir": str(session.run.path) if session.run else None,
        "benchmarks": benchmarks,
        "limit": limit,
        "generation": decoding,
        **summarize(pairs),
        "seconds": round(time.time() - started, 1),
        "finished_at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(jsonl_path, (p.to_dict() for p in pairs))
    write_json(json_path, summary)
    summary["paths"] = [str(jsonl_path), str(json_path)]
    summary["pairs"] = pairs
    return summary


# ------------------------------------------------------------------------------------------ terminal view


def _delta(b: Any, t: Any, kind: str) -> str:
    if b is None or t is None:
        return ""
    if kind == "share":
        return f"{100 * (t - b):+.1f} pts"
    return f"{t - b:+.0f}"


def print_summary(
    summary: dict[str, Any], pairs: list[ComparePair] | None = None, out=None, width: int = 100
) -> None:
    out = out or sys.stdout
    b, t = summary["base"], summary["tuned"]
    print(
        f"\n== compare: {summary['model']} (base) vs + {summary['adapter']} (tuned), {summary['questions']} questions",
        file=out,
    )
    print(f"{'':<38}{'base':>14}{'tuned':>14}{'change':>14}", file=out)
    for key, label, kind in HEALTH_ROWS:
        bv, tv = lookup(b["health"], key), lookup(t["health"], key)
        print(
            f"  {label:<36}{fmt_value(bv, kind):>14}{fmt_value(tv, kind):>14}{_delta(bv, tv, kind):>14}",
            file=out,
        )
    if b["accuracy"] and t["accuracy"]:
        ba, ta = b["accuracy"], t["accuracy"]

        def acc(a: dict[str, Any]) -> str:
            return f"{100 * a['accuracy']:.1f}%"

        print(
            f"  {'accuracy (' + str(ba['questions']) + ' graded)':<36}{acc(ba):>14}{acc(ta):>14}"
            f"{_delta(ba['accuracy'], ta['accuracy'], 'share'):>14}",
            file=out,
        )
        print(
            f"  {'  95% interval':<36}{_interval(ba):>14}{_interval(ta):>14}",
            file=out,
        )
        print(f"  {'unparseable answers':<36}{ba['unparseable']:>14}{ta['unparseable']:>14}", file=out)
    print(
        f"answers that changed: {summary['answers_changed']} of {summary['questions']}"
        + (f"; chosen option changed: {summary['choices_changed']}" if b["accuracy"] else ""),
        file=out,
    )
    for p in (pairs or [])[:1]:
        print("\nfirst question: " + _clip(p.question, width), file=out)
        for side in ("base", "tuned"):
            s = p.side(side)
            print(
                f"  {side:<5} thinks {s.reasoning_tokens} tokens"
                f"{'' if s.think_closed else ' (think block not closed)'}; answers: "
                + _clip(s.answer or "(no answer)", width - 30),
                file=out,
            )
    for path in summary.get("paths", []):
        print(f"wrote {path}", file=out)


def _interval(a: dict[str, Any]) -> str:
    lo, hi = a["ci95"]
    return f"[{100 * lo:.0f}, {100 * hi:.0f}]"


def _clip(text: str, width: int) -> str:
    return textwrap.shorten(" ".join(text.split()), width=max(20, width), placeholder=" ...")
