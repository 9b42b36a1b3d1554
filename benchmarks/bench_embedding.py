"""2-D embedding time at 10k points: scikit-learn t-SNE vs umap-learn, on Fashion-MNIST test images.

The features are the 10k test images as raw pixels (784-D, real data with real class structure),
standardised; t-SNE runs on a 50-D PCA of them, as `sslkit eval embedding` does. UMAP is timed twice:
its first call in a process includes numba's JIT compilation, which every fresh `sslkit` process pays.

    .venv/bin/python benchmarks/bench_embedding.py [--points 10000] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from _common import machine_info


def features(n: int) -> tuple[np.ndarray, np.ndarray]:
    from sslkit.data import build_dataset
    from sslkit.evaluation.features import labels_and_classes, pixel_features

    ds = build_dataset({"name": "fashion_mnist", "root": None}, "test", n)
    x = pixel_features(ds, 28).numpy()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x.astype(np.float32), labels_and_classes(ds)[0].numpy()


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def neighbour_agreement(xy: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Share of each point's k nearest 2-D neighbours in its class: how well the map separates classes."""
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy, return_distance=False)[:, 1:]
    return float((labels[idx] == labels[:, None]).mean())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=10000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    print(machine_info({"cpu capability": torch.backends.cpu.get_cpu_capability(), "points": args.points}))
    from sslkit.errors import ConfigError
    from sslkit.evaluation.embedding import tsne_2d, umap_2d

    x, labels = features(args.points)
    print(f"\n{'method':<36} {'seconds':>8} {'vs t-SNE':>9} {'10-NN same class':>17}", flush=True)
    base = None
    for name, fn, fargs in (("t-SNE (scikit-learn, PCA 50)", tsne_2d, (x, 30.0, 50, 0)),
                            ("UMAP, first call (incl. numba JIT)", umap_2d, (x, 0)),
                            ("UMAP, second call", umap_2d, (x, 0))):
        try:
            t, xy = timed(fn, *fargs)
        except ConfigError as exc:  # umap-learn is not a dependency of sslkit
            print(f"{name:<36} skipped: {exc}", flush=True)
            continue
        base = base or t
        print(f"{name:<36} {t:8.1f} {t / base:8.2f}x {100 * neighbour_agreement(xy, labels):16.1f}%", flush=True)


if __name__ == "__main__":
    main()
