"""Weighted kNN: FAISS against an independent brute-force torch reference and a hand-computed vote."""

from __future__ import annotations

import math

import pytest
import torch

from sslkit.errors import ConfigError
from sslkit.evaluation.features import load_features
from sslkit.evaluation.knn import (
    faiss_search,
    knn_accuracy,
    knn_brute_force_torch,
    knn_predict,
    predictions,
    reported_k,
    topk_accuracy,
)
from tests.conftest import needs_fashion

KS = [1, 5, 20, 200]


def random_problem(n_train: int = 3000, n_test: int = 300, dim: int = 32, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    train_y = torch.randint(0, classes, (n_train,), generator=g)
    test_y = torch.randint(0, classes, (n_test,), generator=g)
    train = centers[train_y] + 1.5 * torch.randn(n_train, dim, generator=g)
    test = centers[test_y] + 1.5 * torch.randn(n_test, dim, generator=g)
    return train, train_y, test, test_y


def assert_same(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor], swaps: float = 0.0) -> None:
    """Same predictions and class scores; `swaps`: the fraction of scores allowed to differ because a
    near-tie at rank k (float32 FAISS vs float64 torch) swapped the k-th neighbour."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(predictions(a[k]), predictions(b[k])), f"k={k}: predictions differ"
        if swaps:
            assert torch.isclose(a[k], b[k], rtol=1e-5, atol=1e-6).float().mean() >= 1 - swaps, f"k={k}"
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_faiss_equals_brute_force_on_random_features():
    train, train_y, test, _ = random_problem()
    faiss_scores = knn_predict(train, train_y, test, KS, 0.1, 10)
    assert_same(faiss_scores, knn_brute_force_torch(train, train_y, test, KS, 0.1, 10))
    # the scores are not degenerate: different k give different rankings somewhere
    assert not torch.equal(predictions(faiss_scores[1]), predictions(faiss_scores[200]))


def test_several_k_from_one_search_equal_separate_searches():
    train, train_y, test, _ = random_problem(seed=1)
    together = knn_predict(train, train_y, test, [200, 10, 50], 0.07, 10)
    assert sorted(together) == [10, 50, 200]
    for k in (10, 50, 200):
        alone = knn_predict(train, train_y, test, [k], 0.07, 10)
        assert_same({k: together[k]}, alone)


def test_faiss_search_returns_descending_exact_neighbours():
    train, _, test, _ = random_problem(n_train=500, n_test=20, seed=2)
    train = torch.nn.functional.normalize(train, dim=1)
    test = torch.nn.functional.normalize(test, dim=1)
    sims, idx = faiss_search(train, test, 7, use_gpu=False)
    ref_sims, ref_idx = (test @ train.t()).topk(7, dim=1)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(sims, ref_sims, rtol=1e-5, atol=1e-6)
    assert bool((sims[:, :-1] >= sims[:, 1:]).all())


def test_hand_computed_weighted_vote():
    # Five training points in 2-D (scaled on purpose: only their direction counts), three classes.
    train = torch.tensor([[3.0, 0.0],     # class 0, cos 1.0 with the test point
                          [0.6, 0.8],     # class 1, cos 0.6
                          [1.2, -1.6],    # class 1, cos 0.6
                          [0.0, 5.0],     # class 2, cos 0.0
                          [-0.8, 0.6]])   # class 2, cos -0.8
    labels = torch.tensor([0, 1, 1, 2, 2])
    test = torch.tensor([[2.0, 0.0]])
    e = math.exp
    # k=3, T=0.1: class 0 gets e^(1/0.1), class 1 gets 2 e^(0.6/0.1): weighting beats the 2:1 majority.
    expected = {
        (3, 0.1): [e(10.0), 2 * e(6.0), 0.0],
        (5, 0.1): [e(10.0), 2 * e(6.0), e(0.0) + e(-8.0)],
        (3, 1.0): [e(1.0), 2 * e(0.6), 0.0],  # a hot temperature lets the majority win
    }
    for (k, t), want in expected.items():
        want_t = torch.tensor([want], dtype=torch.float64)
        for fn in (knn_predict, knn_brute_force_torch):
            got = fn(train, labels, test, [k], t, 3)[k]
            torch.testing.assert_close(got, want_t, rtol=1e-5, atol=0.0)
    assert int(predictions(knn_predict(train, labels, test, [3], 0.1, 3)[3])[0, 0]) == 0
    assert int(predictions(knn_predict(train, labels, test, [3], 1.0, 3)[3])[0, 0]) == 1


def test_topk_accuracy_and_stable_ties():
    scores = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                           [0.0, 0.5, 0.9, 0.1, 0.2, 0.3]], dtype=torch.float64)
    assert predictions(scores, 2)[0].tolist() == [0, 1]  # equal scores: lower class index first
    top1, top5 = topk_accuracy(scores, torch.tensor([1, 0]))
    assert top1 == 0.0 and top5 == 50.0  # row 2's class 0 is ranked last of six
    top1, top5 = topk_accuracy(scores, torch.tensor([0, 2]))
    assert top1 == 100.0 and top5 == 100.0


def test_k_larger_than_the_memory_bank_is_a_config_error():
    train, train_y, test, _ = random_problem(n_train=50, n_test=5)
    with pytest.raises(ConfigError, match="exceeds the 50 training images"):
        knn_predict(train, train_y, test, [10, 200])
    assert reported_k([10, 20, 200]) == 200 and reported_k([10, 20]) == 20


@needs_fashion
def test_faiss_equals_brute_force_on_fashion_mnist_pixels():
    data = {"name": "fashion_mnist", "root": None, "image_size": 28, "mean": [0.5] * 3, "std": [0.5] * 3}
    train = load_features("pixels", "train", 2000, data)
    test = load_features("pixels", "test", 500, data)
    assert train.feats.shape == (2000, 784) and test.feats.shape == (500, 784)
    ks = [1, 20, 200]
    faiss_scores = knn_predict(train.feats, train.labels, test.feats, ks, 0.1, 10)
    # real images have near-ties at rank k (2 of 5000 scores for the stratified 2000-image bank)
    assert_same(faiss_scores, knn_brute_force_torch(train.feats, train.labels, test.feats, ks, 0.1, 10), 1e-3)
    acc = knn_accuracy(train.feats, train.labels, test.feats, test.labels, ks, 0.1, 10)
    assert 65.0 < acc[20]["top1"] < 95.0  # raw-pixel kNN on Fashion-MNIST: ~75% with 2000 images
    assert acc[20]["top5"] > acc[20]["top1"]
