"""Does the demo's fine-tune transfer to data the team did not write? The demo's adapter against its base model on
real medical-o1 rows and real MedQA questions, side by side.

    .venv/bin/python benchmarks/demo_transfer.py                       # runs/demo, 40 real rows, 40 MedQA questions
    .venv/bin/python benchmarks/demo_transfer.py --run runs/demo-2 --loss-only   # held-out loss by span only (fast)
    .venv/bin/python benchmarks/demo_transfer.py --rows 20 --questions 20 --max-new-tokens 512

Real rows: the first --rows rows of ../shared/data/medical_o1_demo/demo_data.json (the medical-o1 authors' demo
file: Question / Complex_CoT / Response; never in the demo's training data, which is thinktune's own sample).
Multiple-choice questions: the first --questions rows of ../shared/data/medagents_bench/medqa/test.jsonl.
Both models are one set of weights (the adapter switched off for the base), prompted through the run's own
formatter with the run's decoding settings, exactly as `thinktune eval` does (this script calls it):

- held-out loss by span (reasoning, answer, completion) on the real rows;
- reasoning health of the answers to the real rows (closed think block, stopped, hit max_new_tokens, lengths);
- on MedQA: the share of answers naming a parseable option, and accuracy with its interval and baselines.

Results go to RUN/transfer/ (eval_base.json, eval_tuned.json and their .jsonl) and a table is printed. Without
../shared/data the script says so and stops.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(os.environ.get("THINKTUNE_SHARED", ROOT.parent / "shared")) / "data"
REAL_ROWS = SHARED / "medical_o1_demo" / "demo_data.json"
MEDQA = SHARED / "medagents_bench" / "medqa" / "test.jsonl"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo", help="the demo's run folder (default runs/demo)")
    ap.add_argument("--rows", type=int, default=40, help="real medical-o1 rows (held-out loss and health)")
    ap.add_argument("--questions", type=int, default=40, help="MedQA questions (parse rate, accuracy)")
    ap.add_argument("--max-new-tokens", type=int, help="generation.max_new_tokens (default: the run's)")
    ap.add_argument("--batch-size", type=int, help="eval.batch_size (default: the run's)")
    ap.add_argument(
        "--loss-only", action="store_true", help="held-out loss by span only: no generation (fast)"
    )
    ap.add_argument("--out", help="folder for the eval files (default RUN/transfer; must not hold them yet)")
    args = ap.parse_args()
    missing = [str(p) for p in (REAL_ROWS, MEDQA) if not p.is_file()]
    if missing:
        print(f"the real data is not here ({', '.join(missing)}); nothing to measure", file=sys.stderr)
        return 2

    from thinktune.evals.evaluate import heldout_loss, load_heldout, run_eval
    from thinktune.infer.session import open_run

    overrides = []
    if args.max_new_tokens:
        overrides.append(f"generation.max_new_tokens={args.max_new_tokens}")
    if args.batch_size:
        overrides.append(f"eval.batch_size={args.batch_size}")
    session = open_run(args.run, overrides)
    rows = load_heldout(str(REAL_ROWS), session.cfg.data, session.formatter)[: args.rows]
    if args.loss_only:
        results = {
            side: {
                "heldout_loss": heldout_loss(
                    session.model(), session.formatter, rows, adapter=side == "tuned"
                )
            }
            for side in ("base", "tuned")
        }
    else:
        out = Path(args.out) if args.out else Path(args.run) / "transfer"
        results = {}
        for side in ("base", "tuned"):
            # held-out rows and MedQA questions limited apart: one run per set
            loss = run_eval(
                session,
                out_dir=out,
                name=side,
                adapter=side == "tuned",
                benchmarks=[],
                limit=args.rows,
                examples=rows,
            )
            with tempfile.TemporaryDirectory() as tmp:
                mcq = run_eval(
                    session,
                    out_dir=Path(tmp),
                    name=side,
                    adapter=side == "tuned",
                    benchmarks=[str(MEDQA)],
                    limit=args.questions,
                    examples=[],
                )
            results[side] = {**loss, "benchmarks": mcq["benchmarks"], "mcq_health": mcq["health"]["all"]}
    print_table(results, rows=len(rows), questions=args.questions, loss_only=args.loss_only)
    return 0


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def print_table(results: dict, *, rows: int, questions: int, loss_only: bool) -> None:
    b, t = results["base"], results["tuned"]
    print(f"\n{'on ' + str(rows) + ' real medical-o1 rows':<42}{'base':>10}{'tuned':>10}{'change':>10}")
    for span in ("completion", "reasoning", "answer"):
        lb, lt = b["heldout_loss"][span]["loss"], t["heldout_loss"][span]["loss"]
        print(f"  {span + '-span loss':<40}{lb:>10.3f}{lt:>10.3f}{(lt - lb) / lb:>+10.1%}")
    if loss_only:
        return
    for key, label in (
        ("closed_think_share", "closed the think block"),
        ("stopped_share", "stopped at end-of-turn"),
        ("hit_max_new_tokens_share", "hit max_new_tokens"),
    ):
        print(f"  {label:<40}{_pct(b['health']['all'][key]):>10}{_pct(t['health']['all'][key]):>10}")
    (name,) = b["benchmarks"]
    mb, mt = b["benchmarks"][name], t["benchmarks"][name]
    print(f"{'on ' + str(questions) + ' MedQA questions':<42}")
    parsed = lambda m: (m["questions"] - m["unparseable"]) / m["questions"]  # noqa: E731
    print(f"  {'named a parseable option':<40}{_pct(parsed(mb)):>10}{_pct(parsed(mt)):>10}")
    for m, side in ((mb, "base"), (mt, "tuned")):
        lo, hi = m["ci95"]
        print(
            f"  accuracy ({side}) {100 * m['accuracy']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]; baselines: always "
            f"{m['baselines']['constant_letter']} {_pct(m['baselines']['constant_letter_accuracy'])}, random "
            f"{_pct(m['baselines']['random'])}"
        )


if __name__ == "__main__":
    sys.exit(main())
