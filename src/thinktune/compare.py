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

from thinktune.errors import ThinktuneError
from thinktune.health import HEALTH_ROWS, fmt_value, generation_record, health_metrics, lookup
from thinktune.inference import Session
from thinktune.tasks.language import detect_language
from thinktune.tasks.mcq import extract_choice, load_mcq, question_text, wilson_interval
from thinktune.utils import write_json, write_jsonl

log = logging.getLogger(__name__)

SIDE_FIELDS = (
    "reasoning",
    "answer",
    "reasoning_tokens",
    "answer_tokens",
    "new_tokens",
    "think_closed",
    "stopped",
    "hit_max_new_tokens",
    "repeat_rate",
    "answer_language",
)


class CompareError(ThinktuneError):
    pass


def _questions(session: Session, benchmarks: list[str], limit: int | None) -> list[dict[str, Any]]:
    """Question records (text, prompt, reference) in a fixed order."""
    fmt = session.formatter
    items: list[dict[str, Any]] = []
    if benchmarks:
        for path in benchmarks:
            mcq = load_mcq(path, limit)
            for i, it in enumerate(mcq.items):
                items.append(
                    {
                        "set": mcq.name,
                        "index": i,
                        "question": it.question,
                        "options": it.options,
                        "reference_letter": it.answer,
                        "reference": it.options.get(it.answer or "", None),
                        "prompt": fmt.prompt(question_text(it)),
                    }
                )
        return items
    for i, ex in enumerate(session.validation_examples(limit)):
        options, letter = ex.meta.get("options"), ex.meta.get("answer_idx")
        mcq_meta = isinstance(options, dict) and letter in options
        items.append(
            {
                "set": "validation",
                "index": i,
                "question": ex.question,
                "options": options if mcq_meta else None,
                "reference_letter": letter if mcq_meta else None,
                "reference": ex.answer,
                "prompt": fmt.prompt(ex.question, ex.system),
            }
        )
    return items


def _side(question: dict[str, Any], gen: Any, tokenize) -> dict[str, Any]:
    rec = generation_record(question["question"], gen, tokenize)
    side = {k: rec[k] for k in SIDE_FIELDS}
    if question.get("reference_letter"):
        got = extract_choice(gen.answer, question["options"], gen.reasoning)
        side.update(
            predicted=got.letter, extracted_by=got.how, correct=got.letter == question["reference_letter"]
        )
    return side


def pair_records(
    questions: list[dict[str, Any]], base: list[Any], tuned: list[Any], tokenize
) -> list[dict[str, Any]]:
    pairs = []
    for q, b, t in zip(questions, base, tuned, strict=True):
        pairs.append(
            {
                "set": q["set"],
                "index": q["index"],
                "question": q["question"],
                "question_language": detect_language(q["question"]),
                "options": q.get("options"),
                "reference": q.get("reference"),
                "reference_letter": q.get("reference_letter"),
                "base": _side(q, b, tokenize),
                "tuned": _side(q, t, tokenize),
            }
        )
    return pairs


def _side_records(pairs: list[dict[str, Any]], side: str) -> list[dict[str, Any]]:
    return [{**p[side], "question_language": p["question_language"]} for p in pairs]


def accuracy(pairs: list[dict[str, Any]], side: str) -> dict[str, Any] | None:
    graded = [p for p in pairs if p.get("reference_letter")]
    if not graded:
        return None
    k = sum(bool(p[side].get("correct")) for p in graded)
    lo, hi = wilson_interval(k, len(graded))
    unparseable = sum(p[side].get("predicted") is None for p in graded)
    return {
        "questions": len(graded),
        "correct": k,
        "accuracy": k / len(graded),
        "ci95": [lo, hi],
        "unparseable": unparseable,
    }


def summarize(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Health and accuracy of each side and how many answers changed: a pure function of compare.jsonl."""
    changed = sum(p["base"]["answer"].strip() != p["tuned"]["answer"].strip() for p in pairs)
    graded = [p for p in pairs if p.get("reference_letter")]
    return {
        "questions": len(pairs),
        "sets": sorted({p["set"] for p in pairs}),
        "answers_changed": changed,
        "choices_changed": sum(p["base"].get("predicted") != p["tuned"].get("predicted") for p in graded),
        "base": {"health": health_metrics(_side_records(pairs, "base")), "accuracy": accuracy(pairs, "base")},
        "tuned": {
            "health": health_metrics(_side_records(pairs, "tuned")),
            "accuracy": accuracy(pairs, "tuned"),
        },
    }


def run_compare(
    session: Session, *, benchmarks: list[str], limit: int | None, out_dir: Path, overwrite: bool = False
) -> dict[str, Any]:
    started = time.time()
    jsonl_path, json_path = out_dir / "compare.jsonl", out_dir / "compare.json"
    existing = [str(p) for p in (jsonl_path, json_path) if p.exists()]
    if existing and not overwrite:
        raise CompareError(
            f"{existing[0]} already exists; pass --overwrite to replace it (nothing was changed)."
        )
    if session.adapter_dir is None:
        raise CompareError("compare needs a tuned model: this run has no adapter.")
    decoding = session.decoding_summary()  # refuses an impossible backend before any model is loaded
    questions = _questions(session, benchmarks, limit)
    if not questions:
        raise CompareError(
            "no questions to compare: the run has no validation split (data.val_size=0); pass --benchmark FILE."
        )
    prompts = [q["prompt"] for q in questions]
    log.info("comparing base and tuned on %d questions", len(prompts))
    # Same prompts and decoding (greedy: both sides in the same batches; sampling: the same batches and seeds
    # per side): any difference comes from the adapter.
    base, tuned = session.generate_both(prompts)
    tok = session.tokenizer
    pairs = pair_records(questions, base, tuned, lambda t: tok(t, add_special_tokens=False)["input_ids"])
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
    write_jsonl(jsonl_path, pairs)
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
    summary: dict[str, Any], pairs: list[dict[str, Any]] | None = None, out=None, width: int = 100
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
        print("\nfirst question: " + _clip(p["question"], width), file=out)
        for side in ("base", "tuned"):
            s = p[side]
            print(
                f"  {side:<5} thinks {s['reasoning_tokens']} tokens"
                f"{'' if s['think_closed'] else ' (think block not closed)'}; answers: "
                + _clip(s["answer"] or "(no answer)", width - 30),
                file=out,
            )
    for path in summary.get("paths", []):
        print(f"wrote {path}", file=out)


def _interval(a: dict[str, Any]) -> str:
    lo, hi = a["ci95"]
    return f"[{100 * lo:.0f}, {100 * hi:.0f}]"


def _clip(text: str, width: int) -> str:
    return textwrap.shorten(" ".join(text.split()), width=max(20, width), placeholder=" ...")
