"""Linear probes: the fast mode learns, the protocol mode leaves the frozen backbone bit-identical."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslkit.data.base import TensorImageDataset
from sslkit.evaluation.features import backbone_features, load_features
from sslkit.evaluation.linear import (
    BackboneChangedError,
    FastSettings,
    ProtocolSettings,
    assert_unchanged,
    classifier_accuracy,
    fast_probe,
    snapshot,
    standardise,
    train_protocol,
)
from tests.conftest import TinyEncoder, needs_fashion

DATA = {"name": "toy", "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}


def blobs(n: int, classes: int = 4, dim: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = 8.0 * torch.randn(classes, dim, generator=g) + 50.0  # off-centre: needs standardising
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + torch.randn(n, dim, generator=g), y


def test_fast_probe_learns_a_linearly_separable_problem():
    x, y = blobs(3000)
    settings = FastSettings(epochs=10, lr=0.1, batch_size=256)
    out = fast_probe(x[:2400], y[:2400], x[2400:], y[2400:], 4, settings)
    assert out["top1"] > 95.0 and out["train_top1"] > 95.0
    assert out["top5"] == 100.0  # four classes: top-5 is everything


def test_fast_probe_is_at_chance_when_labels_are_shuffled():
    x, y = blobs(2000, seed=1)
    y_perm = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]
    out = fast_probe(x[:1600], y_perm[:1600], x[1600:], y_perm[1600:], 4, FastSettings(epochs=5))
    assert out["top1"] < 40.0  # nothing to learn: the probe is not leaking test labels


def test_standardise_uses_training_statistics_only():
    train, test = torch.randn(100, 3) * 5 + 2, torch.randn(10, 3) + 100
    tr, te = standardise(train, test)
    torch.testing.assert_close(tr.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(te, (test - train.mean(0)) / train.std(0))


@needs_fashion
def test_fast_probe_on_fashion_mnist_pixels_is_sane():
    data = {"name": "fashion_mnist", "root": None, "image_size": 28, "mean": [0.5] * 3, "std": [0.5] * 3}
    train = load_features("pixels", "train", 2000, data)
    test = load_features("pixels", "test", 500, data)
    out = fast_probe(train.feats, train.labels, test.feats, test.labels, 10, FastSettings(epochs=15))
    assert 72.0 < out["top1"] < 95.0  # logistic regression on pixels: ~80% with 2000 images


def toy_images(n: int = 48, seed: int = 0) -> TensorImageDataset:
    """Class = brightness level (3 classes): survives cropping, flipping and global pooling."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    noise = torch.randint(0, 40, (n, 3, 20, 20), generator=g, dtype=torch.uint8)
    return TensorImageDataset(noise + (y * 90).to(torch.uint8).view(-1, 1, 1, 1), y, 3)


def test_protocol_keeps_the_backbone_bit_identical_and_restores_its_mode():
    torch.manual_seed(0)
    backbone = TinyEncoder().train()
    before = snapshot(backbone)
    settings = ProtocolSettings(epochs=2, lr=1.0, milestones=(1,), batch_size=16)
    fc, loss = train_protocol(backbone, toy_images(), DATA, 3, settings, torch.device("cpu"))
    assert backbone.training  # mode restored
    assert all(p.requires_grad for p in backbone.parameters())
    assert all(p.grad is None for p in backbone.parameters())
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included
    assert fc.weight.shape == (3, 16) and loss == loss  # trained and finite


def test_protocol_initialises_fc_as_moco():
    torch.manual_seed(0)
    settings = ProtocolSettings(epochs=1, lr=1e-12, batch_size=16)  # (almost) no step: the initial fc
    fc, _ = train_protocol(TinyEncoder(), toy_images(), DATA, 3, settings, torch.device("cpu"))
    assert 0.006 < float(fc.weight.detach().std()) < 0.014  # N(0, 0.01)
    assert float(fc.bias.detach().abs().max()) < 1e-9


def test_protocol_learns_the_toy_task():
    torch.manual_seed(0)
    backbone, data = TinyEncoder(), toy_images(96)
    settings = ProtocolSettings(epochs=6, lr=3.0, milestones=(4,), batch_size=32)
    fc, _ = train_protocol(backbone, data, DATA, 3, settings, torch.device("cpu"))
    feats = backbone_features(backbone, toy_images(60, seed=1), DATA, torch.device("cpu"))
    top1, _ = classifier_accuracy(fc, feats, torch.arange(60) % 3)
    assert top1 > 80.0


class LeakyEncoder(TinyEncoder):
    """A backbone that (wrongly) switches itself to train mode: BN statistics move during the probe."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.train()
        return super().forward(x)


def test_protocol_raises_when_the_backbone_changes():
    torch.manual_seed(0)
    with pytest.raises(BackboneChangedError, match="net.1.running_mean"):
        train_protocol(LeakyEncoder(), toy_images(), DATA, 3, ProtocolSettings(epochs=1, batch_size=16),
                       torch.device("cpu"))


def test_assert_unchanged_detects_a_single_tampered_weight():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    before = snapshot(model)
    assert_unchanged(before, model)
    with torch.no_grad():
        model[0].weight[1, 2] += 1e-7
    with pytest.raises(BackboneChangedError, match="0.weight"):
        assert_unchanged(before, model)
