import math

import pytest
import torch
from torch import nn

from sslkit.contrastive.momentum import ema_update, frozen_copy, momentum_at


def test_ema_formula():
    torch.manual_seed(0)
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)


def test_ema_leaves_buffers_alone():
    online, target = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    online.running_mean.fill_(5.0)
    ema_update(target, online, 0.5)
    assert torch.all(target.running_mean == 0)


def test_frozen_copy_gets_no_gradients():
    online = nn.Linear(2, 2)
    target = frozen_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    x = torch.randn(1, 2)
    (online(x) + target(x)).sum().backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None for p in online.parameters())


def test_momentum_schedules():
    assert momentum_at(0.99, 0.3, "constant") == 0.99
    assert momentum_at(0.99, 0.0, "cosine") == pytest.approx(0.99)
    assert momentum_at(0.99, 1.0, "cosine") == pytest.approx(1.0)
    assert momentum_at(0.99, 0.5, "cosine") == pytest.approx(1 - 0.01 * (math.cos(math.pi / 2) + 1) / 2)
    with pytest.raises(ValueError):
        momentum_at(0.99, 0.5, "linear")


def test_cosine_schedule_clamps_progress_to_0_1():
    assert momentum_at(0.99, -0.5, "cosine") == pytest.approx(0.99)  # before the start: the base
    assert momentum_at(0.99, 1.5, "cosine") == pytest.approx(1.0)  # after the end: 1


@pytest.mark.parametrize("name", ["anneal", "linear", "Cosine"])  # sorting before and after "cosine"
def test_unknown_schedules_are_rejected(name):
    with pytest.raises(ValueError, match="unknown momentum schedule"):
        momentum_at(0.99, 0.5, name)


def test_ema_rejects_modules_with_different_parameters():
    small, big = nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    for target, online in ((small, big), (big, small)):
        with pytest.raises(ValueError, match="different parameters"):
            ema_update(target, online, 0.9)


def test_ema_momentum_follows_byols_cosine_at_every_step():
    from sslkit.contrastive.momentum import ema_momentum

    total = 37
    for k in range(total + 3):
        expected = 1 - (1 - 0.996) * (math.cos(math.pi * min(k, total) / total) + 1) / 2  # BYOL Sec. 3.2
        assert ema_momentum(k, total) == pytest.approx(expected, abs=1e-15), k
    # DINO's utils.cosine_scheduler(0.996, 1, epochs, niter_per_ep): the same values for its K steps
    import numpy as np

    dino = 1 + 0.5 * (0.996 - 1) * (1 + np.cos(np.pi * np.arange(total) / total))
    assert [ema_momentum(k, total) for k in range(total)] == pytest.approx(dino.tolist(), abs=1e-15)
    assert ema_momentum(0, total) == pytest.approx(0.996) and ema_momentum(total, total) == 1.0
    values = [ema_momentum(k, total) for k in range(total + 1)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))  # rises every step
    assert ema_momentum(5, 10, base=0.99, final=0.999) == pytest.approx(0.99 + 0.009 / 2)
