"""The training learning rate at every optimizer step, for every schedule, against the schedule
written out by hand: linear warm-up (Goyal et al. 2017) counted in steps from an epoch count, then
cosine (SGDR eq. 5, one period to the last step), step decay at fractions of the run, or constant;
and once through `engine.fit`, which must step the schedule exactly once per optimizer step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslkit.engine.optim import build_optimizer
from sslkit.engine.schedule import build_scheduler


def cosine(t: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * t))


# (optim config, total steps, steps per epoch, the factor of the base lr at each step)
CASES = [
    pytest.param({"schedule": "cosine", "warmup_epochs": 1}, 12, 3,
                 [1 / 3, 2 / 3, 1.0] + [cosine(t / 9) for t in range(9)], id="cosine-warmup"),
    pytest.param({"schedule": "cosine", "min_lr_ratio": 0.1}, 10, 5,
                 [0.1 + 0.9 * cosine(t / 10) for t in range(10)], id="cosine-floor"),
    pytest.param({"schedule": "step", "milestones": [0.5, 0.75], "gamma": 0.2}, 8, 4,
                 [1, 1, 1, 1, 0.2, 0.2, 0.04, 0.04], id="step"),
    pytest.param({"schedule": "step", "milestones": [0.5], "gamma": 0.1, "warmup_epochs": 0.5}, 8, 4,
                 [0.5, 1, 1, 1, 0.1, 0.1, 0.1, 0.1], id="step-warmup"),
    pytest.param({"schedule": "constant", "warmup_fraction": 0.25}, 8, 2,
                 [0.5, 1, 1, 1, 1, 1, 1, 1], id="constant-warmup-fraction"),
    pytest.param({"schedule": "cosine", "warmup_epochs": 10, "max_warmup_fraction": 0.25}, 8, 2,
                 [0.5, 1.0] + [cosine(t / 6) for t in range(6)], id="cosine-warmup-capped"),
]


@pytest.mark.parametrize(("cfg", "total", "per_epoch", "factors"), CASES)
@pytest.mark.parametrize("optimiser", ["sgd", "lars"])
def test_lr_at_every_step(cfg, total, per_epoch, factors, optimiser):
    net = nn.Linear(3, 2)
    opt = build_optimizer(net, {"name": optimiser, "lr": 0.3, "lr_scaling": "sqrt"}, 64)  # 0.3 * sqrt(64/16)
    sched = build_scheduler(opt, cfg, total, per_epoch)
    seen = []
    for _ in range(total):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen == [pytest.approx([0.6 * f] * len(opt.param_groups), abs=1e-12) for f in factors]


def test_fit_steps_the_schedule_once_per_optimizer_step(tmp_path, one_torch_thread, monkeypatch):
    from tests.engine.test_loop_wiring import STEPS, parts, run

    seen: list[float] = []
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    method, opt, sched = parts()  # lr 0.05, cosine with half an epoch (2 steps) of warm-up, 8 steps
    run(tmp_path, method, opt, sched)
    assert seen == pytest.approx([0.025, 0.05] + [0.05 * cosine(t / (STEPS - 2)) for t in range(STEPS - 2)],
                                 abs=1e-12)
