"""Figures: a run's training curves and the batch-size comparison (matplotlib, Agg, no pyplot state)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of `<run dir>/metrics.jsonl` (a torn last line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_training(run_dir: str | Path) -> Path:
    """`<run dir>/training.png`: the loss over steps and the kNN monitor's top-1 over epochs."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r and "step" in r]
    knn = [(r["epoch"], r["knn_top1"]) for r in records if "knn_top1" in r and "epoch" in r]
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_knn = fig.subplots(1, 2)
    if losses:
        ax_loss.plot(*zip(*losses, strict=True), lw=1.2)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    if knn:
        ax_knn.plot(*zip(*knn, strict=True), marker="o")
    else:
        ax_knn.text(0.5, 0.5, "no kNN monitor records", ha="center", va="center", transform=ax_knn.transAxes)
    ax_knn.set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN monitor (weighted kNN)")
    for ax in (ax_loss, ax_knn):
        ax.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    return _save(fig, run_dir / "training.png")


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
    return _save(fig, Path(path))
