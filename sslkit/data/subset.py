"""Seeded, stratified subsets: the one rule behind every subset option (`data.subset`,
`eval.train_subset`, `eval.test_subset`, `trainer.monitor_subset`) on every dataset kind.

Datasets are often stored sorted by class (ImageFolder: class by class), so "the first N" can miss
whole classes. Instead each class keeps its share of N (largest-remainder rounding), drawn uniformly
with a seeded generator; unlabeled items (label -1) count as one more class. The kept indices are
returned in dataset order, so a subset of a subset draws from the same items.
"""

from __future__ import annotations

import torch
from torch import Tensor


def stratified_indices(labels: Tensor, n: int, seed: int = 0) -> Tensor:
    """Sorted indices of `n` items whose class counts are proportional to those of `labels`."""
    labels = labels.long().reshape(-1)
    total = labels.numel()
    if n >= total:
        return torch.arange(total)
    if n <= 0:
        return torch.zeros(0, dtype=torch.long)
    classes, counts = torch.unique(labels, return_counts=True)
    quota, remainder = counts * n // total, counts * n % total  # integers: equal remainders tie exactly
    short = n - int(quota.sum())
    if short:  # the classes with the largest remainders get one more (ties: the smaller label)
        order = torch.argsort(-remainder, stable=True)
        quota[order[:short]] += 1
    g = torch.Generator().manual_seed(int(seed))
    kept = []
    for cls, k in zip(classes.tolist(), quota.tolist(), strict=True):
        members = (labels == cls).nonzero().squeeze(1)
        kept.append(members[torch.randperm(members.numel(), generator=g)[:k]])
    return torch.cat(kept).sort().values
