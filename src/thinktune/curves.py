"""The loss curve of a run: train and eval loss on one figure, drawn from metrics.jsonl records alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_loss_curve(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Draw train loss (per log step) and eval loss (per evaluation) against the optimizer step; write `path`
    atomically so a viewer never sees half a file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), color="#4C72B0", label="train loss", linewidth=1.4)
    if evals:
        ax.plot(
            *zip(*evals, strict=True),
            color="#C44E52",
            marker="o",
            label="eval loss (held out)",
            linewidth=1.6,
        )
        first, last = evals[0][1], evals[-1][1]
        if len(evals) > 1 and first > 0:
            ax.annotate(
                f"{last:.3f} ({(last - first) / first:+.0%})",
                xy=evals[-1],
                xytext=(-10, 12),
                textcoords="offset points",
                ha="right",
                color="#C44E52",
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per supervised token)")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    ax.set_title(title or "loss", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
