"""The linear protocol's optimiser wiring: MoCo's lincls steps its lr schedule once per epoch
(x0.1 at each milestone epoch), never per batch."""

from __future__ import annotations

import torch

from sslkit.data.base import TensorImageDataset
from sslkit.evaluation.linear import ProtocolSettings, train_protocol
from tests.conftest import TinyEncoder

DATA = {"name": "toy", "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}


def test_protocol_lr_drops_by_epoch_at_the_milestones(monkeypatch):
    lrs: list[float] = []
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    g = torch.Generator().manual_seed(0)
    data = TensorImageDataset(torch.randint(0, 255, (48, 3, 20, 20), generator=g, dtype=torch.uint8),
                              torch.arange(48) % 3, 3)
    torch.manual_seed(0)
    settings = ProtocolSettings(epochs=4, lr=2.0, milestones=(1, 3), batch_size=16)  # 3 batches per epoch
    train_protocol(TinyEncoder(), data, DATA, 3, settings, torch.device("cpu"))
    expected = [2.0] * 3 + [0.2] * 6 + [0.02] * 3
    assert len(lrs) == len(expected)
    for got, want in zip(lrs, expected, strict=True):
        assert abs(got - want) < 1e-12, lrs
