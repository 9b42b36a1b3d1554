import math

import pytest
import torch
from torch import nn

from sslkit.engine.lars import LARS
from sslkit.engine.optim import build_optimizer, scaled_lr
from sslkit.engine.schedule import build_scheduler, lr_factor
from sslkit.errors import ConfigError


def test_lr_scaling():
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    for b in (256, 1024, 4096):  # SimCLR appendix B.1: 0.3 x B/256 and 0.075 x sqrt(B) from the same base lr
        assert scaled_lr(0.3, b, "linear") == pytest.approx(0.3 * b / 256)
        assert scaled_lr(0.3, b, "sqrt") == pytest.approx(0.075 * math.sqrt(b))
    assert scaled_lr(0.3, 1024, "none") == 0.3
    with pytest.raises(ConfigError):
        scaled_lr(0.3, 1, "cubic")


def test_schedules():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert [lr_factor(s, 200, 0, "step") for s in (0, 119, 120, 159, 160)] == pytest.approx([1, 1, .1, .1, .01])


def test_scheduler_steps_per_optimizer_step():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sch = build_scheduler(opt, {"schedule": "cosine", "warmup_epochs": 1}, total_steps=20, steps_per_epoch=5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[-1] < 0.02


def test_lars_step_matches_eq6_and_excludes_1d_params():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    model.weight.grad = torch.randn(3, 4)
    model.bias.grad = torch.randn(3)
    w, gw, b, gb = model.weight.clone(), model.weight.grad.clone(), model.bias.clone(), model.bias.grad.clone()
    opt = build_optimizer(model, {"name": "lars", "lr": 0.3, "lr_scaling": "none", "weight_decay": 1e-2,
                                  "momentum": 0.9, "trust_coefficient": 0.001}, 256)
    assert isinstance(opt, LARS)
    opt.step()
    g = gw + 1e-2 * w
    trust = 0.001 * w.norm() / (g.norm() + 1e-8)
    torch.testing.assert_close(model.weight, w - 0.3 * trust * g)
    torch.testing.assert_close(model.bias, b - 0.3 * gb)  # bias: plain SGD, no decay


def test_warmup_longer_than_the_run_is_capped_so_the_run_still_decays():
    from sslkit.engine.schedule import warmup_steps

    # SimCLR's 10 warm-up epochs in a 2-epoch run of 7 steps per epoch: 14 steps
    cfg = {"warmup_epochs": 10.0, "max_warmup_fraction": 0.2}
    assert warmup_steps(cfg, 14, 7) == 2  # was clipped to total - 1 = 13: all warm-up, ending at peak lr
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sch = build_scheduler(opt, {"schedule": "cosine", **cfg}, total_steps=14, steps_per_epoch=7)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[:2] == pytest.approx([0.5, 1.0]) and max(lrs) == 1.0
    assert lrs[-1] < 0.05  # the cosine reaches (nearly) zero by the end
    assert warmup_steps({"warmup_epochs": 10.0, "max_warmup_fraction": 0.2}, 10000, 100) == 1000  # long runs unchanged


def test_warmup_fraction_gives_every_run_the_same_shape():
    from sslkit.engine.schedule import warmup_steps

    for total in (36, 1171, 30000):
        assert warmup_steps({"warmup_epochs": 10.0, "warmup_fraction": 0.05}, total, 7) == round(0.05 * total)
    for bad in ({"warmup_fraction": 1.5}, {"warmup_fraction": "half"}, {"max_warmup_fraction": "x"}):
        with pytest.raises(ConfigError):
            warmup_steps(bad, 10, 1)
