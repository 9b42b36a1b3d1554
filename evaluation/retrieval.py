"""`sslkit eval retrieval`: test queries and their nearest training images, trained vs random encoder.

The neighbours come from `knn.nearest_neighbours`, the very search weighted kNN votes over, on the
same (cached) features `sslkit eval knn` uses. The random-init encoder is the checkpoint's
architecture built afresh with `seed`, so the grid shows what pretraining changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sslkit.config import as_dict
from sslkit.data import build_dataset
from sslkit.errors import ConfigError

from .context import EvalContext, as_subset, common_record, split_features
from .features import Features, load_features
from .knn import nearest_neighbours
from .plots import save_figure


def random_backbone(ctx: EvalContext) -> nn.Module:
    """The checkpoint's backbone architecture with fresh random weights (seeded by `seed`)."""
    from sslkit.nn.backbones import build_backbone

    torch.manual_seed(int(ctx.cfg.seed))
    backbone, _ = build_backbone(as_dict(ctx.cfg.backbone))
    return backbone


def random_features(ctx: EvalContext, backbone: nn.Module, split: str, subset: int | None) -> Features:
    """Features of a random-init backbone (never cached: the cache is keyed by checkpoint)."""
    return load_features("backbone", split, subset, ctx.data, backbone=backbone, device=ctx.device,
                         batch_size=int(ctx.cfg.eval.batch_size), cache_dir=None)


def choose_queries(labels: Tensor, n: int) -> list[int]:
    """`n` test indices, round-robin over the classes: the first image of each class, then the second..."""
    by_class = [torch.nonzero(labels == c).flatten().tolist() for c in sorted(set(labels.tolist()))]
    out: list[int] = []
    for rank in range(max((len(c) for c in by_class), default=0)):
        for members in by_class:
            if rank < len(members) and len(out) < n:
                out.append(members[rank])
    return out


def class_names(dataset: Dataset, num_classes: int) -> list[str]:
    names = list(getattr(dataset, "classes", None) or [])
    return names if len(names) >= num_classes else [str(i) for i in range(num_classes)]


def image(dataset: Dataset, index: int) -> np.ndarray:
    """One image as HxWx3 uint8 (gray images arrive with 3 equal channels)."""
    x = dataset[int(index)][0]
    assert isinstance(x, Tensor)
    return x.permute(1, 2, 0).numpy()


def plot_grid(panels: Sequence[tuple[str, Tensor]], queries: Sequence[int], train_ds: Dataset, test_ds: Dataset,
              train_labels: Tensor, test_labels: Tensor, names: Sequence[str], path: Path) -> Path:
    """One panel per encoder: a row per query (first column), then its neighbours in order. Each
    neighbour is titled with its class; a red frame and an x mark a class unlike the query's."""
    from matplotlib.figure import Figure

    k = int(panels[0][1].shape[1])
    rows, cols = len(queries), k + 1
    fig = Figure(figsize=(len(panels) * cols * 0.78 + 0.3 * (len(panels) - 1), rows * 0.92 + 0.5),
                 layout="constrained")
    subfigs = fig.subfigures(1, len(panels), wspace=0.04)
    subs = list(subfigs.flat) if isinstance(subfigs, np.ndarray) else [subfigs]
    for sub, (title, idx) in zip(subs, panels, strict=True):
        axes = sub.subplots(rows, cols, squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.3})
        hits = 0
        for r, q in enumerate(queries):
            q_label = int(test_labels[q])
            ax = axes[r, 0]
            ax.imshow(image(test_ds, q))
            ax.set_title(names[q_label], fontsize=6, color="tab:blue", pad=2)
            frame_axes(ax, "tab:blue")
            for c in range(k):
                n = int(idx[r, c])
                label = int(train_labels[n])
                ax = axes[r, c + 1]
                ax.imshow(image(train_ds, n))
                same = label == q_label
                hits += same
                ax.set_title(names[label], fontsize=6, color="black" if same else "tab:red", pad=2)
                frame_axes(ax, "tab:green" if same else "tab:red")
                if not same:
                    ax.text(0.97, 0.97, "x", transform=ax.transAxes, ha="right", va="top", fontsize=8,
                            color="white", fontweight="bold",
                            bbox={"boxstyle": "square,pad=0.1", "fc": "tab:red", "ec": "none"})
        sub.suptitle(f"{title}: {hits}/{rows * k} neighbours share the query's class", fontsize=9)
    return save_figure(fig, path, dpi=100)


def frame_axes(ax: Any, color: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(1.6)


def precision_at_k(neighbour_idx: Tensor, train_labels: Tensor, test_labels: Tensor) -> float:
    """The share (%) of neighbours whose class is the query's, over every test image."""
    return 100.0 * float((train_labels[neighbour_idx] == test_labels.view(-1, 1)).double().mean())


def run_retrieval(ctx: EvalContext) -> dict[str, Any]:
    """Write `<out>/retrieval.png` and return the record for `retrieval.json`."""

    e = ctx.cfg.eval
    k, n_queries = int(e.neighbours), int(e.queries)
    if k < 1 or n_queries < 1:
        raise ConfigError(f"eval.neighbours and eval.queries must be >= 1, got {k} and {n_queries}")
    train_subset, test_subset = as_subset(e.train_subset), as_subset(e.test_subset)
    train = split_features(ctx, "backbone", "train", train_subset, int(e.batch_size))
    test = split_features(ctx, "backbone", "test", test_subset, int(e.batch_size))
    if k > len(train):
        raise ConfigError(f"eval.neighbours={k} exceeds the {len(train)} training images")
    encoders = {"trained": (train, test)}
    if bool(e.random_baseline):
        rand = random_backbone(ctx)
        encoders["random"] = (random_features(ctx, rand, "train", train_subset),
                              random_features(ctx, rand, "test", test_subset))
    queries = choose_queries(test.labels, n_queries)
    neighbours: dict[str, Tensor] = {}
    similarities: dict[str, Tensor] = {}
    precision: dict[str, float] = {}
    for name, (tr, te) in encoders.items():
        sims, idx = nearest_neighbours(tr.feats, te.feats, k)  # every test image: precision@k too
        neighbours[name], similarities[name] = idx[queries], sims[queries]
        precision[name] = precision_at_k(idx, tr.labels, te.labels)
    train_ds = build_dataset(ctx.data, "train", train_subset)
    test_ds = build_dataset(ctx.data, "test", test_subset)
    names = class_names(train_ds, max(train.num_classes, test.num_classes))
    titles = {"trained": f"trained ({ctx.trained.name if ctx.trained else 'encoder'})", "random": "random init"}
    path = ctx.out_dir / "retrieval.png"
    plot_grid([(titles[n], neighbours[n]) for n in encoders], queries, train_ds, test_ds, train.labels,
              test.labels, names, path)
    record = {
        "evaluation": "retrieval", "image": str(path), "k": k, "queries": queries,
        "query_labels": [int(test.labels[q]) for q in queries],
        "neighbours": {n: v.tolist() for n, v in neighbours.items()},
        "neighbour_labels": {n: train.labels[v].tolist() for n, v in neighbours.items()},
        "similarities": {n: [[round(float(s), 5) for s in row] for row in v] for n, v in similarities.items()},
        f"precision_at_{k}": precision, "classes": names,
        **common_record(ctx, len(train), test, train.cached),
    }
    sizes = f"{len(train)} train / {len(test)} test"
    vs = f" vs random {precision['random']:.1f}%" if "random" in precision else ""
    record["headline"] = (f"retrieval precision@{k}={precision['trained']:.1f}%{vs} ({len(queries)} queries in "
                          f"{path}, {sizes}")
    return record
