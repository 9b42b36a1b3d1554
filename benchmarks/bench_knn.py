"""Weighted kNN (k=200, T=0.1) on random L2-normalised features: FAISS vs scikit-learn vs brute-force torch.

Every method finds the k nearest training features of every test feature and then runs the same
exp(sim / T) vote, so the timings compare the neighbour searches. Defaults: 60k train x 10k test
(Fashion-MNIST/CIFAR sized) at 128, 512 and 2048 dimensions.

    .venv/bin/python benchmarks/bench_knn.py                      # the full grid (minutes)
    .venv/bin/python benchmarks/bench_knn.py --train 20000 --test 2000 --dims 128 512
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from sslkit.evaluation.knn import faiss_search, knn_brute_force_torch, predictions, vote

CLASSES = 10


def data(n_train: int, n_test: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    train = F.normalize(torch.randn(n_train, dim, generator=g), dim=1)
    test = F.normalize(torch.randn(n_test, dim, generator=g), dim=1)
    labels = torch.randint(0, CLASSES, (n_train,), generator=g)
    return train, test, labels


def run_faiss(train, test, labels, k, t):
    sims, idx = faiss_search(train, test, k)
    return vote(sims, labels[idx], k, t, CLASSES)


def run_sklearn(train, test, labels, k, t, jobs):
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine", n_jobs=jobs)
    clf.fit(train.numpy(), labels.numpy())
    dist, idx = clf.kneighbors(test.numpy(), k)
    sims = torch.from_numpy(1.0 - dist)
    return vote(sims, labels[torch.from_numpy(idx)], k, t, CLASSES)


def run_torch(train, test, labels, k, t, chunk):
    # the full similarity matrix per chunk of test rows (2.4 GB for 10k x 60k at once)
    return torch.cat([knn_brute_force_torch(train, labels, test[s:s + chunk], [k], t, CLASSES)[k]
                      for s in range(0, test.shape[0], chunk)])


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=60000)
    p.add_argument("--test", type=int, default=10000)
    p.add_argument("--dims", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--jobs", type=int, default=2, help="scikit-learn n_jobs")
    p.add_argument("--chunk", type=int, default=2000, help="test rows per torch similarity block")
    p.add_argument("--skip", nargs="*", default=[], choices=["faiss", "sklearn", "torch"])
    args = p.parse_args()
    import faiss

    print(f"kNN k={args.k} T={args.temperature}: {args.train} train x {args.test} test, {CLASSES} classes; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} threads), sklearn n_jobs={args.jobs}")
    print(f"{'dim':>5} {'method':>8} {'seconds':>9} {'vs sklearn':>11} {'same top-1 as faiss':>20}")
    for dim in args.dims:
        train, test, labels = data(args.train, args.test, dim)
        runs = {
            "faiss": (run_faiss, ()),
            "sklearn": (run_sklearn, (args.jobs,)),
            "torch": (run_torch, (args.chunk,)),
        }
        results = {name: timed(fn, train, test, labels, args.k, args.temperature, *extra)
                   for name, (fn, extra) in runs.items() if name not in args.skip}
        ref = predictions(results["faiss"][1], 1) if "faiss" in results else None
        base = results["sklearn"][0] if "sklearn" in results else None
        for name, (seconds, scores) in results.items():
            ratio = f"{base / seconds:10.1f}x" if base else f"{'-':>11}"
            same = (f"{100 * float(np.mean((predictions(scores, 1) == ref).numpy())):19.2f}%"
                    if ref is not None else f"{'-':>20}")
            print(f"{dim:>5} {name:>8} {seconds:9.2f} {ratio} {same}", flush=True)


if __name__ == "__main__":
    main()
