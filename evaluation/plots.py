"""Figures: a run's training curves and the batch-size comparison (matplotlib, Agg, no pyplot state)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sslkit.files import atomic_path, read_metrics


def save_figure(fig: Figure, path: Path, dpi: int = 110) -> Path:
    """Render `fig` with Agg (no pyplot state) to the PNG `path`, atomically."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path



def _series(records: Sequence[dict[str, Any]], key: str, x: str = "step") -> list[tuple[float, float]]:
    """(x, value) pairs of `key`, one per x (the last one wins: a resumed run re-logs its steps)."""
    found = {r[x]: r[key] for r in records if isinstance(r.get(key), int | float) and x in r}
    return sorted(found.items())


# (metrics.jsonl key, x axis, title, y label); a panel is drawn only when its key was logged
PANELS = (
    ("loss", "step", "training loss", "loss"),
    ("lr", "step", "learning rate", "lr"),
    ("images_per_s", "step", "throughput", "images/s"),
    ("knn_top1", "epoch", "kNN monitor (weighted kNN)", "top-1 (%)"),
    ("acc", "step", "contrastive accuracy (positive ranked first)", "accuracy"),
    ("queue_fill", "step", "queue fill (real keys / K)", "fraction"),
)


def plot_training(run_dir: str | Path) -> Path:
    """`<run dir>/training.png`: every logged curve of metrics.jsonl (loss, lr, images/s, the kNN
    monitor, MoCo's contrastive accuracy and queue fill), one panel each."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    panels = [(p, _series(records, p[0], p[1])) for p in PANELS]
    panels = [(p, xy) for p, xy in panels if xy] or [(PANELS[0], [])]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, ((key, x, title, ylabel), xy) in zip(axes, panels, strict=False):
        if not xy:
            ax.text(0.5, 0.5, "nothing logged yet", ha="center", va="center", transform=ax.transAxes)
        elif key == "queue_fill":
            full = next((s for s, v in xy if v >= 1.0), None)
            ax.plot(*zip(*xy, strict=True), lw=1.2, color="tab:purple")
            if full is not None:  # the first K/B steps, and a little after
                ax.axvline(full, ls="--", lw=0.8, color="gray")
                ax.set_xlim(0, max(full * 1.5, 1))
                title += f"\nfull at step {full:g}"
        else:
            ax.plot(*zip(*xy, strict=True), lw=1.2, marker="o" if len(xy) < 30 else None, ms=3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.set(xlabel=x, ylabel=ylabel, title=title)
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.suptitle(run_dir.name)
    return save_figure(fig, run_dir / "training.png")


def training_plot_callback(run_dir: Path) -> Callable[[], None]:
    """A checkpoint callback that refreshes `<run dir>/training.png`; a failed plot only warns."""

    def refresh() -> None:
        try:
            plot_training(run_dir)
        except Exception as exc:  # a picture must never stop training
            print(f"sslkit: warning: could not plot {run_dir / 'training.png'}: {exc}", file=sys.stderr)

    return refresh


def plot_batch_compare(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Accuracy, training time and peak memory of each run of the batch-size comparison."""
    labels = [f"{r['method']}\n@{r['batch_size']}" for r in rows]
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    ax_acc, ax_time, ax_mem = fig.subplots(1, 3)
    xs = range(len(rows))
    width = 0.38
    ax_acc.bar([x - width / 2 for x in xs], [r["knn_top1"] for r in rows], width, label="kNN top-1")
    ax_acc.bar([x + width / 2 for x in xs], [r["linear_top1"] for r in rows], width, label="linear top-1")
    ax_acc.set(ylabel="accuracy (%)", title="accuracy")
    ax_acc.legend(fontsize=8)
    ax_time.bar(list(xs), [r["train_seconds"] for r in rows], color="tab:green")
    ax_time.set(ylabel="seconds", title="training wall time")
    mem = [r.get("peak_memory_mb") or 0.0 for r in rows]
    kind = rows[0].get("memory_kind", "") if rows else ""
    ax_mem.bar(list(xs), mem, color="tab:red")
    ax_mem.set(ylabel="MB", title=f"peak memory ({kind})")
    for ax in (ax_acc, ax_time, ax_mem):
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, Path(path))
