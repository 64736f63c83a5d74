"""Every plot thinktune draws, in one place: the loss curve a run redraws while it trains, the data length
histogram, and the report's accuracy and reasoning-length plots. Each is a pure function of records (no model,
no run state); files are written atomically, so a viewer never sees half a PNG. matplotlib is imported only
when something is drawn (the CLI starts without it).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

TRAIN_COLOR, EVAL_COLOR = "#4C72B0", "#C44E52"


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def _png(
    draw: Callable[[Any], Any], size: tuple[float, float], dpi: int = 100, grid: tuple[int, int] = (1, 1)
) -> tuple[bytes, Any]:
    """PNG bytes of a figure drawn by `draw(axes)`, and what `draw` returned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, figsize=size, squeeze=False)
    try:
        drawn = draw(axes.flatten() if grid != (1, 1) else axes[0, 0])
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue(), drawn


def _write(path: str | Path, data: bytes) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _render(draw: Callable[[Any], Any], size: tuple[float, float] = (9, 3.6)) -> str:
    return png_uri(_png(draw, size)[0])


# ------------------------------------------------------------------------------------------ loss curve


def loss_series(records: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """(step, value) points of the train and eval loss in metrics.jsonl records."""

    def points(key: str) -> list[tuple[float, float]]:
        return [(r["step"], r[key]) for r in records if is_number(r.get(key)) and is_number(r.get("step"))]

    return {"train loss": points("loss"), "eval loss (held out)": points("eval_loss")}


def draw_loss(ax: Any, records: list[dict[str, Any]], *, annotate: bool = True) -> dict[str, int]:
    """Train loss per logging step and eval loss per evaluation against the optimizer step; returns the points
    drawn per series (a series with none is not drawn)."""
    series = loss_series(records)
    train, evals = series["train loss"], series["eval loss (held out)"]
    if train:
        ax.plot(*zip(*train, strict=True), color=TRAIN_COLOR, label="train loss", linewidth=1.4)
    if evals:
        ax.plot(
            *zip(*evals, strict=True), "o-", color=EVAL_COLOR, label="eval loss (held out)", linewidth=1.6
        )
        first, last = evals[0][1], evals[-1][1]
        if annotate and len(evals) > 1 and first > 0:
            ax.annotate(
                f"{last:.3f} ({(last - first) / first:+.0%})",
                xy=evals[-1],
                xytext=(-10, 12),
                textcoords="offset points",
                ha="right",
                color=EVAL_COLOR,
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per supervised token)")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    return {name: len(points) for name, points in series.items() if points}


REWARD_COLORS = {"correct": "#55A868", "format": "#8172B2", "length": "#DD8452"}


def has_rewards(records: list[dict[str, Any]]) -> bool:
    """Whether metrics.jsonl records come from the reinforcement stage (they log a reward)."""
    return any(is_number(r.get("reward")) for r in records)


def _points(records: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in records if is_number(r.get(key)) and is_number(r.get("step"))]


def draw_rewards(ax: Any, records: list[dict[str, Any]]) -> dict[str, int]:
    """The total reward per logging step (with its spread) and each reward's mean apart."""
    drawn = {}
    total = _points(records, "reward")
    if total:
        xs, ys = zip(*total, strict=True)
        ax.plot(xs, ys, color="black", linewidth=1.8, label="reward (weighted sum)")
        spread = [
            r.get("reward_std") for r in records if is_number(r.get("reward")) and is_number(r.get("step"))
        ]
        if all(is_number(x) for x in spread):
            ax.fill_between(xs, [y - s for y, s in zip(ys, spread, strict=True)],
                            [y + s for y, s in zip(ys, spread, strict=True)], color="black", alpha=0.08)  # fmt: skip
        drawn["reward"] = len(total)
    for name, color in REWARD_COLORS.items():
        pts = _points(records, f"reward_{name}")
        if pts:
            ax.plot(*zip(*pts, strict=True), color=color, linewidth=1.2, label=name)
            drawn[f"reward_{name}"] = len(pts)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward per completion")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    return drawn


def draw_completion_lengths(ax: Any, records: list[dict[str, Any]]) -> dict[str, int]:
    """Mean completion length in tokens, and (right axis) the share cut at max_completion_length."""
    drawn = {}
    lengths = _points(records, "completion_length")
    if lengths:
        ax.plot(*zip(*lengths, strict=True), color=TRAIN_COLOR, linewidth=1.4, label="mean length")
        drawn["completion_length"] = len(lengths)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("completion tokens")
    ax.grid(alpha=0.3)
    clipped = _points(records, "clipped_share")
    if clipped:
        twin = ax.twinx()
        twin.plot(
            *zip(*clipped, strict=True),
            color=EVAL_COLOR,
            linestyle="--",
            linewidth=1.2,
            label="cut at the limit",
        )
        twin.set_ylim(0, 1)
        twin.set_ylabel("share cut at max_completion_length", color=EVAL_COLOR)
        drawn["clipped_share"] = len(clipped)
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=8)
    return drawn


def _draw_rl(axes: Any, records: list[dict[str, Any]], title: str, annotate: bool) -> dict[str, int]:
    loss_ax, reward_ax, length_ax = axes
    drawn = draw_loss(loss_ax, records, annotate=annotate)
    loss_ax.set_title("loss (GRPO: near 0 is normal)", fontsize=10)
    drawn |= draw_rewards(reward_ax, records)
    reward_ax.set_title("rewards", fontsize=10)
    drawn |= draw_completion_lengths(length_ax, records)
    length_ax.set_title("completion length", fontsize=10)
    if title:
        loss_ax.figure.suptitle(title, fontsize=10)
    return drawn


def plot_loss_curve(records: list[dict[str, Any]], path: str | Path, title: str = "") -> dict[str, int]:
    """loss_curve.png of a run from its metrics.jsonl records; returns the points drawn per series. A
    reinforcement run (its records log rewards) gets a reward panel and a completion-length panel beside the
    loss."""
    if has_rewards(records):
        data, drawn = _png(lambda axes: _draw_rl(axes, records, title, True), (15, 4), dpi=100, grid=(1, 3))
        _write(path, data)
        return drawn

    def draw(ax: Any) -> dict[str, int]:
        drawn = draw_loss(ax, records)
        ax.set_title(title or "loss", fontsize=10)
        return drawn

    data, drawn = _png(draw, (7, 4), dpi=110)
    _write(path, data)
    return drawn


def loss_plot(metrics: list[dict[str, Any]]) -> str | None:
    """The report's loss plot (a data URI; with reward and length panels for a reinforcement run), or None when
    metrics.jsonl has no loss yet."""
    if not any(loss_series(metrics).values()):
        return None
    if has_rewards(metrics):
        return png_uri(_png(lambda axes: _draw_rl(axes, metrics, "", False), (15, 4), grid=(1, 3))[0])
    return _render(lambda ax: draw_loss(ax, metrics, annotate=False))


# ------------------------------------------------------------------------------------------ data lengths


def length_histogram(
    path: str | Path, lengths: list[dict[str, int]], max_length: int, title: str = ""
) -> Path:
    """length_histogram.png: total tokens per example with the max_length line; question, reasoning and answer
    spans apart. `lengths` holds one ``Encoded.lengths`` dict per example."""
    totals = [x["total"] for x in lengths]

    def draw(axes: Any) -> None:
        ax1, ax2 = axes
        ax1.hist(totals, bins=30, color=TRAIN_COLOR)
        ax1.axvline(max_length, color=EVAL_COLOR, linestyle="--", label=f"max_length {max_length}")
        over = sum(t > max_length for t in totals)
        ax1.set_title(f"total tokens per example ({over} over max_length)")
        ax1.set_xlabel("tokens")
        ax1.set_ylabel("examples")
        ax1.legend()
        for span, color in (("question", "#8172B2"), ("reasoning", "#55A868"), ("answer", "#DD8452")):
            ax2.hist([x[span] for x in lengths], bins=30, alpha=0.6, label=span, color=color)
        ax2.set_title("tokens by span")
        ax2.set_xlabel("tokens")
        ax2.legend()
        if title:
            ax1.figure.suptitle(title, fontsize=9)

    return _write(path, _png(draw, (10, 3.6), dpi=110, grid=(1, 2))[0])


# ------------------------------------------------------------------------------------------ report plots


def accuracy_plot(rows: list[dict[str, Any]]) -> str | None:
    """Accuracy per benchmark and model with 95% intervals, and the two baselines as markers."""
    rows = [r for r in rows if r.get("accuracy") is not None]
    if not rows:
        return None

    def draw(ax: Any) -> None:
        labels = [f"{r['benchmark']} ({r['model']})" for r in rows]
        accs = [100 * r["accuracy"] for r in rows]
        lo = [max(0.0, 100 * (r["accuracy"] - r["ci95"][0])) for r in rows]
        hi = [max(0.0, 100 * (r["ci95"][1] - r["accuracy"])) for r in rows]
        colors = ["#8c8c8c" if r["model"] == "base" else "#4C72B0" for r in rows]
        y = list(range(len(rows)))
        ax.barh(y, accs, xerr=[lo, hi], color=colors, capsize=4)
        for yi, r in zip(y, rows, strict=True):
            b = r.get("baselines") or {}
            if b.get("random") is not None:
                ax.plot(100 * b["random"], yi, "k|", markersize=18)
            if b.get("constant_letter_accuracy") is not None:
                ax.plot(100 * b["constant_letter_accuracy"], yi, "r|", markersize=18)
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("accuracy % (bars: 95% interval; black tick: random; red tick: constant letter)")
        ax.grid(axis="x", alpha=0.3)

    return _render(draw, (9, 0.6 * len(rows) + 1.4))


def length_plot(series: dict[str, list[int]]) -> str | None:
    """Overlaid histograms of reasoning length in tokens, one per model."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None

    def draw(ax: Any) -> None:
        top = max(max(v) for v in series.values())
        bins = max(5, min(30, len({x for v in series.values() for x in v})))
        palette = {"base": "#8c8c8c", "tuned": "#4C72B0"}
        names = list(series)
        # Side-by-side bars per bin: identical distributions stay visible instead of hiding one another.
        ax.hist(
            [series[n] for n in names],
            bins=bins,
            range=(0, max(1, top)),
            label=[
                f"{n} (n={len(series[n])}, median {sorted(series[n])[(len(series[n]) - 1) // 2]})"
                for n in names
            ],
            color=[palette.get(n, f"C{i}") for i, n in enumerate(names)],
        )
        ax.set_xlabel("reasoning tokens per answer")
        ax.set_ylabel("answers")
        ax.legend()
        ax.grid(alpha=0.3)

    return _render(draw)
