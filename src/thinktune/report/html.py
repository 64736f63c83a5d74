"""`thinktune report RUN_DIR` -> RUN_DIR/report.html: one self-contained page about a run.

Everything is a pure function of the run folder's files (config.yaml, summary.json, data_report.json,
length_histogram.png, metrics.jsonl, loss_curve.png, eval_*.json/.jsonl, compare.json/.jsonl); the page shows
whatever exists and says which command fills each missing part. Plots are drawn with matplotlib and embedded
as base64 data URIs; there is no script, no external stylesheet and no network access (a Content-Security-
Policy forbids it), so the file can be mailed or attached as it is. All text is HTML-escaped.
"""

from __future__ import annotations

import html
import logging
import shlex
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from thinktune.evals.health import HEALTH_ROWS, fmt_value, health_metrics, lookup
from thinktune.evals.records import Output
from thinktune.report.files import load_run_files
from thinktune.report.plots import accuracy_plot, has_rewards, is_number, length_plot, loss_plot, png_uri
from thinktune.utils import atomic_write_text

log = logging.getLogger(__name__)

EXAMPLES_SHOWN = 12
SECTIONS = ("summary", "loss", "data", "heldout", "accuracy", "lengths", "health", "examples")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:1.5rem;
color:#1f2328;line-height:1.45}
h1{font-size:1.6rem;margin:.2rem 0}h2{font-size:1.25rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem;
margin-top:2rem}h3{font-size:1rem;margin:1rem 0 .4rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.92rem}td,th{border:1px solid #d0d7de;padding:.3rem .6rem;
text-align:left;vertical-align:top}th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
img.plot{max-width:100%;height:auto;border:1px solid #eaeef2;display:block;margin:.5rem 0}
.missing{background:#fff8c5;border:1px solid #d4a72c;padding:.5rem .8rem;border-radius:6px}
.missing code{background:#fff;padding:0 .3rem}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1rem}.side{border:1px solid #d0d7de;border-radius:6px;
padding:.5rem .8rem;min-width:0}.side h4{margin:.1rem 0 .4rem}
pre{white-space:pre-wrap;word-wrap:break-word;background:#f6f8fa;padding:.5rem;border-radius:4px;font-size:.85rem}
details summary{cursor:pointer;color:#0969da}.q{background:#f6f8fa;padding:.5rem .8rem;border-radius:6px}
.good{color:#1a7f37}.bad{color:#cf222e}.muted{color:#656d76;font-size:.9rem}
nav a{margin-right:.8rem}
"""


# ------------------------------------------------------------------------------------------ reading


# ------------------------------------------------------------------------------------------ plots


# ------------------------------------------------------------------------------------------ html pieces


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _missing(what: str, command: str) -> str:
    return f'<p class="missing">{esc(what)}: not run yet: run <code>{esc(command)}</code></p>'


def _img(uri: str, alt: str, ident: str) -> str:
    return f'<img class="plot" id="{esc(ident)}" alt="{esc(alt)}" src="{uri}">'


def _table(headers: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = ""
    for row in rows:
        cells = "".join(
            f'<td class="num">{esc(c)}</td>' if i >= numeric_from else f"<td>{esc(c)}</td>"
            for i, c in enumerate(row)
        )
        body += f"<tr>{cells}</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _interval(ci: Any) -> str:
    return "-" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _scalar(x: Any) -> bool:
    return isinstance(x, (str, int, float, bool)) or x is None


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "-" if x is None else str(x)


# ------------------------------------------------------------------------------------------ sections


def section_summary(f: dict[str, Any], cmd: str) -> str:
    cfg = f["config"] or {}
    if not cfg and not f["summary"]:
        return _missing("run summary", "thinktune train CONFIG.yaml")
    m, d, lo, t = (cfg.get(k) or {} for k in ("model", "data", "lora", "train"))
    rows = [
        ["model", m.get("name_or_path")],
        ["data", " ".join(str(x) for x in (d.get("source"), d.get("config_name"), d.get("split")) if x)],
        ["reasoning", d.get("reasoning")],
        ["max_length / length policy", f"{d.get('max_length')} / {d.get('length_policy')}" if d else None],
        [
            "LoRA",
            f"r={lo.get('r')} alpha={lo.get('lora_alpha')} dropout={lo.get('lora_dropout')} targets={lo.get('target_modules')}"
            if lo
            else None,
        ],
        [
            "precision",
            f"{m.get('dtype')}" + (" + 4-bit base (QLoRA)" if m.get("load_in_4bit") else "") if m else None,
        ],
        [
            "learning rate / schedule",
            f"{t.get('learning_rate')} / {t.get('lr_scheduler_type')}" if t else None,
        ],
        ["epochs / max steps", f"{t.get('num_train_epochs')} / {t.get('max_steps')}" if t else None],
        [
            "batch",
            f"{t.get('per_device_train_batch_size')} x {t.get('gradient_accumulation_steps')} accumulation"
            if t
            else None,
        ],
    ]
    dr = f["data_report"] or {}
    if dr.get("splits"):
        rows.append(["examples", ", ".join(f"{k} {v}" for k, v in dr["splits"].items())])
    rows = [r for r in rows if r[1] not in (None, "")]
    out = _table(["setting", "value"], rows, numeric_from=9)
    summary = f["summary"]
    if isinstance(summary, dict):
        facts = [[k, _fmt(v)] for k, v in summary.items() if _scalar(v)]
        facts += [
            [f"{k}.{k2}", _fmt(v2)]
            for k, v in summary.items()
            if isinstance(v, dict)
            for k2, v2 in v.items()
            if _scalar(v2)
        ]
        out += "<h3>Training outcome (summary.json)</h3>" + _table(["field", "value"], facts, numeric_from=9)
    else:
        out += _missing("training outcome (summary.json)", "thinktune train ... (this run has not finished)")
    env = f["env"]
    if isinstance(env, dict):
        keys = ("torch", "transformers", "trl", "peft", "cuda_available", "gpus", "time")
        out += (
            '<p class="muted">'
            + esc("; ".join(f"{k} {env[k]}" for k in keys if env.get(k) is not None))
            + "</p>"
        )
    return out


#: What a reinforcement run's curves mean (the loss is not a measure of progress there).
RL_NOTE = (
    "GRPO: the loss is near 0 by construction (each completion's advantage is its reward minus its group's mean, "
    "so they cancel on average); a loss near 0 is normal and says nothing about progress. Watch the reward: it "
    "should rise, with its parts (correct, format, length) apart; the completion length and the share cut at "
    "max_completion_length show whether answers still fit. Sampled completions with their rewards are in "
    "completions.jsonl."
)
RL_KEYS = (
    "step", "loss", "reward", "reward_correct", "reward_format", "reward_length", "zero_spread_share", "kl",
    "entropy", "completion_length", "clipped_share", "step_time_s", "generation_tokens_per_s",
)  # fmt: skip


def section_loss(f: dict[str, Any], cmd: str) -> str:
    uri = loss_plot(f["metrics"])
    if uri:
        rl = has_rewards(f["metrics"])
        keys = RL_KEYS if rl else ("step", "epoch", "loss", "tokens_per_s", "eval_loss")
        note = ", ".join(
            f"{k} {_fmt(m[k])}"
            for k in keys
            for m in [next((m for m in reversed(f["metrics"]) if is_number(m.get(k))), None)]
            if m is not None
        )
        alt = "loss, rewards and completion lengths by step" if rl else "training and evaluation loss by step"
        return (
            _img(uri, alt, "loss-plot")
            + (f"<p>{esc(RL_NOTE)}</p>" if rl else "")
            + f'<p class="muted">last logged: {esc(note)}</p>'
        )
    if f["loss_curve"]:
        return _img(png_uri(f["loss_curve"]), "loss curve", "loss-plot")
    return _missing("loss curves (metrics.jsonl)", "thinktune train CONFIG.yaml")


def section_data(f: dict[str, Any], cmd: str) -> str:
    out = ""
    if f["length_histogram"]:
        out += _img(
            png_uri(f["length_histogram"]), "token length histogram of the training data", "length-histogram"
        )
    dr = f["data_report"]
    if isinstance(dr, dict) and isinstance(dr.get("lengths"), dict):
        rows = [
            [span, *(_fmt(q.get(k)) for k in ("min", "p50", "p90", "p99", "max"))]
            for span, q in dr["lengths"].items()
            if isinstance(q, dict)
        ]
        out += _table(["tokens", "min", "p50", "p90", "p99", "max"], rows)
        lp = dr.get("length_policy") or {}
        if lp:
            out += (
                f'<p class="muted">length policy {esc(lp.get("policy"))} at max_length {esc(lp.get("max_length"))}: '
                f"kept {esc(lp.get('kept'))}, dropped {esc(len(lp.get('dropped') or []))}, reasoning shortened "
                f"{esc(len(lp.get('shortened') or []))}</p>"
            )
    return out or _missing("data lengths (data_report.json)", "thinktune inspect-data ... or thinktune train")


def section_heldout(f: dict[str, Any], cmd: str) -> str:
    rows = []
    for name, e in f["evals"].items():
        loss = e["summary"].get("heldout_loss") or {}
        for span in ("reasoning", "answer", "completion"):
            s = loss.get(span)
            if isinstance(s, dict):
                rows.append([name, span, f"{s['loss']:.4f}", f"{s['perplexity']:.2f}", s.get("tokens")])
    if not rows:
        return _missing("held-out loss by span", f"thinktune eval {cmd} and thinktune eval {cmd} --base")
    return _table(["model", "span", "loss", "perplexity", "tokens"], rows, numeric_from=2)


def accuracy_rows(f: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, e in f["evals"].items():
        for bench, b in (e["summary"].get("benchmarks") or {}).items():
            rows.append({"benchmark": bench, "model": name, "source": f"eval_{name}.json", **b})
    cmp = f["compare"] or {}
    for side in ("base", "tuned"):
        acc = (cmp.get(side) or {}).get("accuracy")
        if acc:
            sets = ", ".join(cmp.get("sets") or []) or "compare"
            rows.append({"benchmark": sets, "model": side, "source": "compare.json", "baselines": {}, **acc})
    return rows


def section_accuracy(f: dict[str, Any], cmd: str) -> str:
    rows = accuracy_rows(f)
    if not rows:
        return _missing(
            "benchmark accuracy",
            f"thinktune eval {cmd} --base --benchmark FILE and thinktune eval {cmd} --benchmark FILE "
            f"(or thinktune compare {cmd} --benchmark FILE)",
        )
    uri = accuracy_plot(rows)
    table = _table(
        [
            "benchmark",
            "model",
            "accuracy",
            "95% interval",
            "questions",
            "unparseable",
            "constant letter",
            "random",
            "from",
        ],
        [
            [
                r["benchmark"],
                r["model"],
                _pct(r.get("accuracy")),
                _interval(r.get("ci95")),
                r.get("questions"),
                r.get("unparseable"),
                (
                    f"{r['baselines'].get('constant_letter')} {_pct(r['baselines'].get('constant_letter_accuracy'))}"
                    if r.get("baselines")
                    else "-"
                ),
                _pct((r.get("baselines") or {}).get("random")),
                r["source"],
            ]
            for r in rows
        ],
        numeric_from=2,
    )
    return (_img(uri, "accuracy with 95% intervals", "accuracy-plot") if uri else "") + table


def length_series(f: dict[str, Any]) -> tuple[dict[str, list[int]], str]:
    if f["pairs"]:
        return {
            side: [int(p.side(side).reasoning_tokens or 0) for p in f["pairs"]] for side in ("base", "tuned")
        }, "compare.jsonl (the same questions for both)"
    series = {
        name: [int(r.output.reasoning_tokens or 0) for r in e["records"]] for name, e in f["evals"].items()
    }
    return {k: v for k, v in series.items() if v}, "eval_*.jsonl"


def section_lengths(f: dict[str, Any], cmd: str) -> str:
    series, source = length_series(f)
    uri = length_plot(series)
    if not uri:
        return _missing("reasoning-length distributions", f"thinktune compare {cmd}")
    return (
        _img(uri, "reasoning length distributions before and after", "length-plot")
        + f'<p class="muted">from {esc(source)}</p>'
    )


def section_health(f: dict[str, Any], cmd: str) -> str:
    columns: list[tuple[str, dict[str, Any]]] = []
    if f["pairs"]:
        for side in ("base", "tuned"):
            outputs = [replace(p.side(side), question_language=p.question_language) for p in f["pairs"]]
            columns.append((f"{side} (compare)", health_metrics(outputs)))
    for name, e in f["evals"].items():
        h = (e["summary"].get("health") or {}).get("all")
        if isinstance(h, dict):
            columns.append((f"{name} (eval)", h))
    if not columns:
        return _missing("reasoning health", f"thinktune compare {cmd}")
    rows = [["generations", *(c[1].get("generations") for c in columns)]]
    rows += [
        [label, *(fmt_value(lookup(c[1], key), kind) for c in columns)] for key, label, kind in HEALTH_ROWS
    ]
    return _table(["metric", *(c[0] for c in columns)], rows)


def _side_html(name: str, s: Output, ref_letter: str | None) -> str:
    verdict = ""
    if ref_letter:
        ok = s.correct
        verdict = (
            f' <span class="{"good" if ok else "bad"}">chose {esc(s.predicted or "nothing parseable")}'
            f" ({'correct' if ok else 'wrong'})</span>"
        )
    flags = []
    if not s.think_closed:
        flags.append("think block not closed")
    if s.hit_max_new_tokens:
        flags.append("hit max_new_tokens")
    reasoning = s.reasoning or ""
    details = (
        f"<details><summary>reasoning ({esc(s.reasoning_tokens)} tokens)</summary><pre>{esc(reasoning)}</pre></details>"
        if reasoning
        else '<p class="muted">(no reasoning)</p>'
    )
    return (
        f'<div class="side"><h4>{esc(name)}{verdict}</h4>{details}'
        f"<pre>{esc(s.answer or '(no answer)')}</pre>"
        f'<p class="muted">{esc(s.answer_tokens)} answer tokens'
        + (f"; {esc(', '.join(flags))}" if flags else "")
        + "</p></div>"
    )


def section_examples(f: dict[str, Any], cmd: str) -> str:
    pairs = f["pairs"]
    if not pairs:
        return _missing("before/after examples", f"thinktune compare {cmd}")
    out = (
        f'<p class="muted">{min(len(pairs), EXAMPLES_SHOWN)} of {len(pairs)} questions from compare.jsonl</p>'
    )
    for i, p in enumerate(pairs[:EXAMPLES_SHOWN], start=1):
        ref = p.reference
        letter = p.reference_letter
        ref_text = f"{letter}. {ref}" if letter else ref
        options = p.options or {}
        opts = "".join(f"<li>{esc(k)}. {esc(v)}</li>" for k, v in options.items()) if letter else ""
        out += (
            f'<article class="example" id="example-{i}"><h3>{i}. {esc(p.set)} #{esc(p.index)}</h3>'
            f'<div class="q">{esc(p.question)}'
            + (f'<ol type="A">{opts}</ol>' if opts else "")
            + "</div>"
            + (
                f"<details><summary>reference answer</summary><pre>{esc(ref_text)}</pre></details>"
                if ref_text
                else ""
            )
            + f'<div class="pair">{_side_html("base", p.base, letter)}{_side_html("tuned", p.tuned, letter)}</div></article>'
        )
    return out


TITLES = {
    "summary": "Run summary",
    "loss": "Loss curves (and rewards, for GRPO)",
    "data": "Data lengths",
    "heldout": "Held-out loss by span",
    "accuracy": "Benchmark accuracy, before and after",
    "lengths": "Reasoning length, before and after",
    "health": "Reasoning health",
    "examples": "Before and after: examples",
}

BUILDERS: dict[str, Callable[[dict[str, Any], str], str]] = {
    "summary": section_summary,
    "loss": section_loss,
    "data": section_data,
    "heldout": section_heldout,
    "accuracy": section_accuracy,
    "lengths": section_lengths,
    "health": section_health,
    "examples": section_examples,
}


def build_html(files: dict[str, Any], run_ref: str | None = None) -> str:
    """The whole page from :func:`load_run_files` output."""
    cmd = shlex.quote(run_ref or str(files["dir"]))
    cfg = files["config"] or {}
    model = (cfg.get("model") or {}).get("name_or_path") or "?"
    title = f"thinktune report: {files['dir'].name}"
    nav = "".join(f'<a href="#{s}">{esc(TITLES[s])}</a>' for s in SECTIONS)
    body = ""
    for s in SECTIONS:
        try:
            content = BUILDERS[s](files, cmd)
        except Exception as e:  # one unreadable file must not cost the whole report
            log.warning("report: section %s failed: %s: %s", s, type(e).__name__, e)
            content = (
                f'<p class="missing">this section could not be drawn: {esc(type(e).__name__)}: {esc(e)}</p>'
            )
        body += f'<section id="{s}"><h2>{esc(TITLES[s])}</h2>{content}</section>\n'
    generated = datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{esc(title)}</h1><p class="muted">{esc(model)} &middot; {esc(files["dir"])} &middot; '
        f"generated {esc(generated)}</p><nav>{nav}</nav></header>\n{body}</body></html>\n"
    )


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write report.html into `out_dir` (default: the run folder); replaced on every call: it is a view of the
    run's files, not a result."""
    d = Path(run_dir)
    path = Path(out_dir or d) / "report.html"
    atomic_write_text(path, build_html(load_run_files(d), str(run_dir)))
    return path
