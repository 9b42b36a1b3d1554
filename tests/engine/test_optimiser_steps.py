"""The training optimisers over several steps, against `torch.optim.SGD` with LARS's trust ratio
applied by hand (You et al. 2017, eq. 6), with the learning-rate schedule running.

Momentum only matters from the second step, so every case takes STEPS steps on a loss whose gradient
depends on the weights, and compares every parameter after every step. Each case is one row of
CASES: an optimiser config for `build_optimizer`, and the reference that must take the same steps.
A new optimiser adds its reference function to REFERENCES and its rows to CASES.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from sslkit.engine.optim import build_optimizer, scaled_lr
from sslkit.engine.schedule import build_scheduler

STEPS, BATCH = 6, 512  # batch 512 with linear scaling: lr x 2
SCHEDULE = {"schedule": "cosine", "warmup_epochs": 1}  # 2 warm-up steps of 6, then cosine


def model() -> nn.Module:
    """A conv weight, a linear weight, biases and BatchNorm's affine parameters (float64)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 5))
    return net.double()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 5, (8,), generator=g)


def backward(net: nn.Module, step: int) -> None:
    x, y = batch(step)
    net.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(net(x), y).backward()


def excluded(net: nn.Module) -> set[int]:
    """SimCLR's exclusion, by module rather than by shape: biases and every normalisation layer's parameters."""
    out = set()
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
                out.add(id(p))
    return out


# A reference returns (the optimiser it steps, a hook that rewrites the gradients before each step).
Reference = tuple[torch.optim.Optimizer, Callable[[], None]]


def sgd_reference(net: nn.Module, cfg: dict[str, Any], lr: float) -> Reference:
    """MoCo's SGD: weight decay on every parameter, biases and BN included (as the official code)."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=cfg["momentum"], dampening=0.0,
                          weight_decay=cfg["weight_decay"], nesterov=cfg.get("nesterov", False))
    return opt, lambda: None


def lars_reference(net: nn.Module, cfg: dict[str, Any], lr: float) -> Reference:
    """Plain momentum SGD (no dampening, no nesterov) on g' = trust * (g + wd * w) with
    trust = eta * ||w|| / ||g + wd * w||; biases and norm parameters take g unchanged."""
    skip = excluded(net)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=cfg["momentum"], dampening=0.0, weight_decay=0.0)

    def trust_ratio() -> None:
        with torch.no_grad():
            for p in net.parameters():
                if id(p) in skip:
                    continue
                g = p.grad + cfg["weight_decay"] * p
                trust = cfg["trust_coefficient"] * p.norm() / (g.norm() + 1e-8)
                p.grad.copy_(trust * g)

    return opt, trust_ratio


REFERENCES: dict[str, Callable[[nn.Module, dict[str, Any], float], Reference]] = {
    "sgd": sgd_reference, "lars": lars_reference}
CASES = [
    pytest.param({"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2}, id="sgd-momentum"),
    pytest.param({"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2, "nesterov": True},
                 id="sgd-nesterov"),
    pytest.param({"name": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0}, id="sgd-plain"),
    pytest.param({"name": "lars", "lr": 0.3, "momentum": 0.9, "weight_decay": 1e-2, "trust_coefficient": 0.02},
                 id="lars-momentum"),
    pytest.param({"name": "lars", "lr": 0.3, "momentum": 0.5, "weight_decay": 0.0, "trust_coefficient": 1.0},
                 id="lars-no-decay"),
]


@pytest.mark.parametrize("cfg", CASES)
def test_several_steps_equal_the_reference_with_the_schedule_running(cfg):
    cfg = {**cfg, "lr_scaling": "linear"}
    net = model()
    ref = copy.deepcopy(net)
    opt = build_optimizer(net, cfg, BATCH)
    lr = scaled_lr(cfg["lr"], BATCH, "linear")
    ref_opt, rewrite = REFERENCES[cfg["name"]](ref, cfg, lr)
    sched = build_scheduler(opt, SCHEDULE, STEPS, 2)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(  # written out: 2 linear warm-up steps, then cosine over 4
        ref_opt, lambda s: (s + 1) / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * (s - 2) / 4)))
    start = [p.detach().clone() for p in net.parameters()]
    for step in range(STEPS):
        backward(net, step)
        backward(ref, step)
        rewrite()
        opt.step()
        ref_opt.step()
        sched.step()
        ref_sched.step()
        for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=f"step {step + 1}: {name}")
    assert all(not torch.equal(p, s) for p, s in zip(net.parameters(), start, strict=True))  # every one moved


def test_the_momentum_buffer_is_not_a_running_average():
    """Constant gradient g, momentum m, no trust scaling: the k-th step is lr * g * (1 + m + ... + m^(k-1))."""
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = build_optimizer(nn.ParameterList([p]), {"name": "lars", "lr": 0.1, "lr_scaling": "none",
                                                   "momentum": 0.9}, 256)  # 1-d: excluded, plain steps
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    before = p.detach().clone()
    for k in range(1, 5):
        p.grad = g.clone()
        opt.step()
        step = before - p.detach()
        torch.testing.assert_close(step, 0.1 * g * sum(0.9**i for i in range(k)))
        before = p.detach().clone()


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_a_resumed_optimiser_continues_its_momentum(name):
    """Three steps, state_dict, a new optimiser loading it, three more: equal to six straight steps."""
    cfg = {"name": name, "lr": 0.1, "lr_scaling": "none", "momentum": 0.9, "weight_decay": 1e-3,
           "trust_coefficient": 0.02}
    straight = model()
    opt = build_optimizer(straight, cfg, 256)
    for step in range(STEPS):
        backward(straight, step)
        opt.step()
    resumed = model()
    opt = build_optimizer(resumed, cfg, 256)
    for step in range(3):
        backward(resumed, step)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    opt = build_optimizer(resumed, cfg, 256)
    opt.load_state_dict(saved)
    for step in range(3, STEPS):
        backward(resumed, step)
        opt.step()
    for p, q in zip(resumed.parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_lars_defaults_are_simclrs():
    """SimCLR (arXiv 2002.05709, Sec. B.1): momentum 0.9, weight decay 1e-6, trust coefficient 0.001."""
    from sslkit.engine.lars import LARS

    defaults = LARS([nn.Parameter(torch.zeros(2))], lr=0.1).defaults
    assert {k: defaults[k] for k in ("momentum", "weight_decay", "trust_coefficient", "eps", "lars_exclude")} == {
        "momentum": 0.9, "weight_decay": 1e-6, "trust_coefficient": 0.001, "eps": 1e-8, "lars_exclude": False}


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_a_parameter_without_gradient_leaves_the_others_stepping(name):
    """A frozen or unused parameter (grad None) first in its group: the parameters after it still step."""
    first, second = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2, 2))
    opt = build_optimizer(nn.ParameterList([first, second]), {"name": name, "lr": 0.1, "lr_scaling": "none"}, 256)
    second.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(first, torch.ones(2, 2)) and bool((second < 1).all())


def test_lars_gives_a_zero_weight_the_plain_step():
    """||w|| = 0 (a zero-initialised layer): trust 1, not 0, or the layer could never move."""
    w = nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))
    opt = build_optimizer(nn.ParameterList([w]), {"name": "lars", "lr": 0.5, "lr_scaling": "none",
                                                   "weight_decay": 0.1}, 256)
    g = torch.arange(6, dtype=torch.float64).reshape(3, 2) - 2.5
    w.grad = g.clone()
    opt.step()
    torch.testing.assert_close(w.detach(), -0.5 * g)
