"""Both linear probes' learning rate at every optimizer step, against the schedule written out:
the fast probe's cosine spans all its batches (one period, no restart), the protocol's steps drop x0.1
at milestone epochs whatever the number of batches per epoch (a short last batch included)."""

from __future__ import annotations

import math

import pytest
import torch

from sslkit.data.base import TensorImageDataset
from sslkit.evaluation.linear import FastSettings, ProtocolSettings, train_fast, train_protocol
from tests.conftest import TinyEncoder

DATA = {"name": "toy", "image_size": 12, "mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.fixture
def steps(monkeypatch) -> list[dict[str, float]]:
    """The settings of every SGD step taken: lr, momentum, nesterov, weight decay."""
    seen: list[dict[str, float]] = []
    original = torch.optim.SGD.step

    def record(self, *args, **kwargs):
        g = self.param_groups[0]
        seen.append({k: g[k] for k in ("lr", "momentum", "nesterov", "weight_decay")})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", record)
    return seen


@pytest.mark.parametrize(("n", "batch", "epochs"), [(50, 16, 3), (40, 64, 5)])
def test_fast_probe_lr_is_one_cosine_over_every_batch(steps, n, batch, epochs):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 6, generator=g), torch.arange(n) % 3
    train_fast(x, y, 3, FastSettings(epochs=epochs, lr=0.4, batch_size=batch, weight_decay=1e-3))
    per_epoch = math.ceil(n / batch)  # 4 batches (the last one short) or a single batch capped at n
    total = epochs * per_epoch
    expected = [0.4 * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    assert [s["lr"] for s in steps] == pytest.approx(expected, abs=1e-12)
    assert all(s["momentum"] == 0.9 and s["nesterov"] and s["weight_decay"] == 1e-3 for s in steps)


def test_protocol_lr_steps_by_epoch_with_a_short_last_batch(steps):
    g = torch.Generator().manual_seed(0)
    data = TensorImageDataset(torch.randint(0, 255, (40, 3, 14, 14), generator=g, dtype=torch.uint8),
                              torch.arange(40) % 4, 4)
    torch.manual_seed(0)
    settings = ProtocolSettings(epochs=5, lr=3.0, momentum=0.8, weight_decay=1e-4, milestones=(2, 4), batch_size=16)
    train_protocol(TinyEncoder(4), data, DATA, 4, settings, torch.device("cpu"))
    expected = [3.0] * 6 + [0.3] * 6 + [0.03] * 3  # 3 batches per epoch (16, 16, 8)
    assert [s["lr"] for s in steps] == pytest.approx(expected, abs=1e-12)
    assert all(s["momentum"] == 0.8 and not s["nesterov"] and s["weight_decay"] == 1e-4 for s in steps)
