"""`sslkit eval embedding`: a 2-D map of test features coloured by class, its coordinates, and
optionally the features for TensorBoard's projector.

t-SNE (van der Maaten & Hinton 2008, scikit-learn) on a PCA of the features is the default; UMAP
(McInnes et al. 2018, umap-learn) is `eval.reducer=umap`. docs/benchmarks.md times both at 10k points.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sslkit.errors import ConfigError

from .context import EvalContext, as_subset, common_record, split_features
from .plots import save_figure

REDUCERS = ("tsne", "umap")


def _pca(x: np.ndarray, dim: int | None, seed: int) -> np.ndarray:
    if dim is None or dim >= min(x.shape):
        return x
    from sklearn.decomposition import PCA

    return PCA(dim, random_state=seed).fit_transform(x)


def tsne_2d(x: np.ndarray, perplexity: float = 30.0, pca_dim: int | None = 50, seed: int = 0) -> np.ndarray:
    """(N, 2) t-SNE coordinates of (N, D) features; the perplexity is capped below N."""
    from sklearn.manifold import TSNE

    if x.shape[0] < 3:
        raise ConfigError(f"an embedding map needs at least 3 points, got {x.shape[0]}")
    perplexity = min(float(perplexity), (x.shape[0] - 1) / 3.0)
    tsne = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    return tsne.fit_transform(_pca(x, pca_dim, seed)).astype(np.float32)


def umap_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 2) UMAP coordinates (umap-learn's defaults: 15 neighbours, min_dist 0.1)."""
    try:
        import umap
    except ImportError:
        raise ConfigError("eval.reducer=umap needs umap-learn: pip install umap-learn") from None
    return umap.UMAP(n_components=2, random_state=seed).fit_transform(x).astype(np.float32)


def plot_map(xy: np.ndarray, labels: np.ndarray, names: Sequence[str], title: str, path: Path) -> Path:
    """A scatter of the points coloured by class, with a legend of class names."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    classes = sorted(set(labels.tolist()))
    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    fig = Figure(figsize=(7.2, 5.4), layout="constrained")
    ax = fig.subplots()
    size = max(1.5, min(12.0, 6000 / max(len(xy), 1)))
    for i, c in enumerate(classes):
        sel = labels == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=cmap(i % cmap.N), label=names[c], alpha=0.8,
                   linewidths=0)
    if len(classes) <= 40:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=max(1.0, 6 / size),
                  frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path, dpi=100)


def save_coordinates(xy: np.ndarray, labels: np.ndarray, names: Sequence[str], out_dir: Path) -> list[Path]:
    """`embedding.npz` (xy, labels, index, classes) and `embedding.csv` (index,label,class,x,y)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    npz = out_dir / "embedding.npz"
    np.savez_compressed(npz, xy=xy, labels=labels, index=np.arange(len(xy)), classes=np.array(list(names)))
    path = out_dir / "embedding.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "class", "x", "y"])
        for i, ((x, y), c) in enumerate(zip(xy.tolist(), labels.tolist(), strict=True)):
            w.writerow([i, c, names[c], f"{x:.5f}", f"{y:.5f}"])
    return [npz, path]


def sprite_images(dataset: Any, n: int, size: int = 32) -> Tensor:
    """(n, 3, s, s) float images in [0, 1] for the projector's sprite (at most 32 px each)."""
    import torch.nn.functional as F

    from .retrieval import image

    x = torch.stack([torch.from_numpy(image(dataset, i).copy()).permute(2, 0, 1) for i in range(n)]).float() / 255
    if x.shape[-1] > size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def write_projector(feats: Tensor, labels: np.ndarray, names: Sequence[str], images: Tensor, log_dir: Path) -> Path:
    """TensorBoard projector files: the features, a class-name label per point and a sprite."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    try:
        writer.add_embedding(feats, metadata=[names[c] for c in labels.tolist()], label_img=images,
                             tag="test_features")
    finally:
        writer.close()
    return log_dir


def run_embedding(ctx: EvalContext) -> dict[str, Any]:
    """Write `<out>/embedding.{png,npz,csv}` (and `<out>/projector/`); return the JSON record."""
    from sslkit.data import build_dataset

    from .retrieval import class_names

    e = ctx.cfg.eval
    reducer = str(e.reducer)
    if reducer not in REDUCERS:
        raise ConfigError(f"unknown eval.reducer '{reducer}'; valid: {', '.join(REDUCERS)}")
    test = split_features(ctx, "backbone", "test", as_subset(e.test_subset), int(e.batch_size))
    dataset = build_dataset(ctx.data, "test", as_subset(e.test_subset))
    names = class_names(dataset, test.num_classes)
    x = test.feats.numpy().astype(np.float32)
    seed = int(ctx.cfg.seed)
    start = time.perf_counter()
    pca = None if e.get("pca_dim") is None else int(e.pca_dim)
    xy = tsne_2d(x, float(e.perplexity), pca, seed) if reducer == "tsne" else umap_2d(x, seed)
    seconds = time.perf_counter() - start
    labels = test.labels.numpy()
    backbone = ctx.trained.name if ctx.trained else "encoder"
    png = plot_map(xy, labels, names, f"{'t-SNE' if reducer == 'tsne' else 'UMAP'} of {len(x)} {ctx.data['name']} "
                   f"test features ({backbone})", ctx.out_dir / "embedding.png")
    files = [png, *save_coordinates(xy, labels, names, ctx.out_dir)]
    record: dict[str, Any] = {"evaluation": "embedding", "reducer": reducer, "points": len(x),
                              "perplexity": float(e.perplexity) if reducer == "tsne" else None, "pca_dim": pca,
                              "files": [str(f) for f in files], "classes": names,
                              **common_record(ctx, 0, test, None),
                              "timing": {"test_features": round(test.seconds, 3), "reduce": round(seconds, 3)}}
    if bool(e.tensorboard):
        log_dir = write_projector(test.feats, labels, names, sprite_images(dataset, len(x)), ctx.out_dir / "projector")
        record["tensorboard"] = str(log_dir)
    hint = f"; tensorboard --logdir {record['tensorboard']}" if "tensorboard" in record else ""
    record["headline"] = f"embedding {reducer} of {len(x)} test images in {png}{hint} (reduce {seconds:.1f}s"
    return record
