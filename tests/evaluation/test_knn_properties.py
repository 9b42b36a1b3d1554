"""Property test (hypothesis): weighted kNN (Wu et al. 2018, eq. 7) through FAISS equals brute force
written out per test image: cosine similarity to every training feature, the k largest, and each
votes exp(s / T) for its class. Random sizes, dimensions, classes, k's and temperatures; continuous
features (no ties)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sslkit.evaluation.knn import knn_accuracy, knn_predict


@given(n=st.integers(1, 30), m=st.integers(1, 8), d=st.integers(2, 6), c=st.integers(1, 6),
       t=st.floats(0.05, 1.0), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_knn_equals_brute_force(n, m, d, c, t, seed, data):
    ks = sorted(data.draw(st.sets(st.integers(1, n), min_size=1, max_size=3)))
    g = torch.Generator().manual_seed(seed)
    train, test = torch.randn(n, d, generator=g) * 2, torch.randn(m, d, generator=g)
    labels, test_labels = torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (m,), generator=g)
    got = knn_predict(train, labels, test, ks, t, num_classes=c, use_gpu=False)
    a, b = F.normalize(train.double(), dim=1), F.normalize(test.double(), dim=1)
    want, hits = {}, {k: 0 for k in ks}
    for k in ks:
        scores = torch.zeros(m, c, dtype=torch.float64)
        for i in range(m):
            sims = sorted(((float(b[i] @ a[j]), j) for j in range(n)), reverse=True)[:k]
            for s, j in sims:
                scores[i, int(labels[j])] += math.exp(s / t)
            hits[k] += int(scores[i].argmax()) == int(test_labels[i])
        want[k] = scores
    assert sorted(got) == ks
    for k in ks:
        torch.testing.assert_close(got[k], want[k], rtol=2e-4, atol=1e-9)
    top1 = knn_accuracy(train, labels, test, test_labels, ks, t, num_classes=c, use_gpu=False)
    for k in ks:
        assert top1[k]["top1"] == pytest.approx(100.0 * hits[k] / m)
