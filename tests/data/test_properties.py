"""Property test (hypothesis): the stratified subset over random label sets, sizes and seeds keeps
each class's share by largest-remainder rounding (Hamilton's method, ties to the smaller label),
draws distinct items of that class, returns them in dataset order, and is a function of the seed."""

from __future__ import annotations

from fractions import Fraction

import torch
from hypothesis import given
from hypothesis import strategies as st

from sslkit.data.subset import stratified_indices


def quotas(labels: list[int], n: int) -> dict[int, int]:
    """Hamilton's method in exact arithmetic: floor of each share, then +1 for the largest remainders."""
    classes = sorted(set(labels))
    exact = {c: Fraction(labels.count(c) * n, len(labels)) for c in classes}
    quota = {c: int(exact[c]) for c in classes}
    for c in sorted(classes, key=lambda c: (-(exact[c] - quota[c]), c))[:n - sum(quota.values())]:
        quota[c] += 1
    return quota


@given(labels=st.lists(st.integers(-1, 5), min_size=1, max_size=60), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_stratified_subset_keeps_each_class_share(labels, data, seed):
    n = data.draw(st.integers(-2, len(labels) + 3))
    got = stratified_indices(torch.tensor(labels), n, seed)
    if n >= len(labels):
        assert got.tolist() == list(range(len(labels)))
        return
    if n <= 0:
        assert got.numel() == 0
        return
    kept = got.tolist()
    assert kept == sorted(set(kept)) and len(kept) == n and all(0 <= i < len(labels) for i in kept)
    counts = {c: 0 for c in set(labels)}
    for i in kept:
        counts[labels[i]] += 1
    assert counts == quotas(labels, n)
    assert torch.equal(stratified_indices(torch.tensor(labels), n, seed), got)  # the seed decides


def test_equal_remainders_go_to_the_smaller_label_exactly():
    """Found by the property above: 1, 4 and 1 items, n=4 give remainders 2/3 each; in floating point
    2.666.. - 2 came out below 0.666.., and class 2 took the place that belongs to class 1."""
    labels = torch.tensor([0, 1, 1, 1, 1, 2])
    kept = labels[stratified_indices(labels, 4)]
    assert torch.bincount(kept, minlength=3).tolist() == [1, 3, 0]


def test_many_tied_classes_still_go_to_the_smaller_labels():
    """40 classes of one item, 10 to keep: every remainder is 1/4, so the 10 smallest labels. (torch's
    unstable sort orders ties differently above 16 elements; the sort must be the stable one.)"""
    labels = torch.arange(40).flip(0)  # stored in descending label order
    assert sorted(labels[stratified_indices(labels, 10)].tolist()) == list(range(10))


def test_the_default_seed_is_0():
    labels = torch.arange(50) % 3
    assert torch.equal(stratified_indices(labels, 20), stratified_indices(labels, 20, 0))
    assert not torch.equal(stratified_indices(labels, 20, 0), stratified_indices(labels, 20, 1))
