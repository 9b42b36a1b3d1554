"""Weighted kNN classification (Wu et al. 2018, arXiv 1805.01978, Sec. 3.4 / eq. 7).

Features are L2-normalised, so the inner product is cosine similarity s_i. Each of the k nearest
training features votes for its class with weight exp(s_i / T); the class scores are the sums of
the votes, top-1/top-5 come from ranking them. T = 0.1 and k = 200 are the paper's defaults (and
MoCo's kNN monitor's); solo-learn uses k = 20, T = 0.07.

One exact inner-product search (`faiss.IndexFlatIP`, on the GPU when FAISS was built with it) for
k_max = max(ks) serves every k: the k nearest are the first k of the k_max nearest.

Ties: neighbours with exactly equal similarity at the k-th place may be ordered differently by
FAISS and by `torch.topk`, and classes with exactly equal scores are ranked by class index (a stable
sort); with continuous features neither happens in practice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sslkit.errors import ConfigError

DEFAULT_K = 200
DEFAULT_TEMPERATURE = 0.1


def _check(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, ks: Sequence[int]) -> list[int]:
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {tuple(train_feats.shape)} and "
                         f"{tuple(test_feats.shape)}")
    if train_labels.shape != (train_feats.shape[0],):
        raise ValueError(f"{train_feats.shape[0]} training features but labels of shape "
                         f"{tuple(train_labels.shape)}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"eval.k must be a list of positive integers, got {list(ks)}")
    if ks[-1] > train_feats.shape[0]:
        raise ConfigError(f"eval.k={ks[-1]} exceeds the {train_feats.shape[0]} training images; "
                          "lower eval.k or raise eval.train_subset")
    return ks


def faiss_search(train_feats: Tensor, test_feats: Tensor, k: int, use_gpu: bool | None = None
                 ) -> tuple[Tensor, Tensor]:
    """Exact inner-product search: (M, k) similarities, descending, and (M, k) training indices."""
    import faiss

    train = np.ascontiguousarray(train_feats.detach().cpu().numpy(), dtype=np.float32)
    test = np.ascontiguousarray(test_feats.detach().cpu().numpy(), dtype=np.float32)
    index: Any = faiss.IndexFlatIP(train.shape[1])
    if use_gpu is None:
        use_gpu = hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available()
    if use_gpu:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, torch.cuda.current_device(), index)
    index.add(train)
    sims, idx = index.search(test, k)
    return torch.from_numpy(sims), torch.from_numpy(idx).long()


def nearest_neighbours(train_feats: Tensor, test_feats: Tensor, k: int, use_gpu: bool | None = None
                       ) -> tuple[Tensor, Tensor]:
    """The search kNN votes over: features L2-normalised, then `faiss_search` for the k nearest.
    Returns (M, k) cosine similarities, descending, and (M, k) training indices."""
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    return faiss_search(train, test, k, use_gpu)


def vote(sims: Tensor, neighbour_labels: Tensor, k: int, temperature: float, num_classes: int) -> Tensor:
    """(M, C) class scores: sum over the first k neighbours of exp(sim / T) into their class."""
    weights = (sims[:, :k].double() / temperature).exp()
    scores = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64)
    return scores.scatter_add_(1, neighbour_labels[:, :k], weights)


def knn_predict(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, ks: Sequence[int],
                temperature: float = DEFAULT_TEMPERATURE, num_classes: int | None = None,
                use_gpu: bool | None = None) -> dict[int, Tensor]:
    """{k: (M, C) float64 class scores} for every k in `ks`, from one FAISS search for max(ks)."""
    ks = _check(train_feats, train_labels, test_feats, ks)
    num_classes = int(num_classes if num_classes is not None else int(train_labels.max()) + 1)
    sims, idx = nearest_neighbours(train_feats, test_feats, ks[-1], use_gpu)
    neighbour_labels = train_labels.long().cpu()[idx]
    return {k: vote(sims, neighbour_labels, k, temperature, num_classes) for k in ks}


def knn_brute_force_torch(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, ks: Sequence[int],
                          temperature: float = DEFAULT_TEMPERATURE, num_classes: int | None = None
                          ) -> dict[int, Tensor]:
    """The reference: the full (M, N) similarity matrix, `torch.topk` per k and a one-hot weighted sum."""
    ks = _check(train_feats, train_labels, test_feats, ks)
    num_classes = int(num_classes if num_classes is not None else int(train_labels.max()) + 1)
    sim = F.normalize(test_feats.float(), dim=1) @ F.normalize(train_feats.float(), dim=1).t()
    out = {}
    for k in ks:
        top_sim, top_idx = sim.topk(k, dim=1)
        one_hot = F.one_hot(train_labels.long()[top_idx], num_classes).double()  # (M, k, C)
        out[k] = (one_hot * (top_sim.double() / temperature).exp().unsqueeze(-1)).sum(dim=1)
    return out


def predictions(scores: Tensor, top: int = 5) -> Tensor:
    """(M, top) classes by descending score; equal scores rank the lower class index first."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :top]


def topk_accuracy(scores: Tensor, labels: Tensor) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent (top-5 = top-C when there are fewer than 5 classes)."""
    if scores.shape[0] == 0:
        return 0.0, 0.0
    pred = predictions(scores, min(5, scores.shape[1]))
    hit = pred == labels.view(-1, 1).to(pred.device)
    return 100.0 * float(hit[:, 0].double().mean()), 100.0 * float(hit.any(dim=1).double().mean())


def knn_accuracy(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 ks: Sequence[int] = (DEFAULT_K,), temperature: float = DEFAULT_TEMPERATURE,
                 num_classes: int | None = None, use_gpu: bool | None = None) -> dict[int, dict[str, float]]:
    """{k: {"top1": %, "top5": %}} of weighted kNN for every k in `ks`."""
    scores = knn_predict(train_feats, train_labels, test_feats, ks, temperature, num_classes, use_gpu)
    out = {}
    for k, s in scores.items():
        top1, top5 = topk_accuracy(s, test_labels)
        out[k] = {"top1": top1, "top5": top5}
    return out


def as_ks(value: Any) -> list[int]:
    """`eval.k` as a list of ints: a single number or a list of them."""
    if isinstance(value, int | float | str):
        value = [value]
    try:
        return [int(k) for k in value]
    except (TypeError, ValueError):
        raise ConfigError(f"eval.k must be an integer or a list of integers, got {value!r}") from None


def reported_k(ks: Sequence[int]) -> int:
    """The k of the headline number: 200 (the paper's) when evaluated, else the largest."""
    ks = [int(k) for k in ks]
    return DEFAULT_K if DEFAULT_K in ks else max(ks)
