"""What `build_optimizer` and `build_scheduler` do when a key is missing, and which names they refuse.

The shipped YAML sets every key, so these fallbacks run only for a hand-written `optim` mapping (a
plug-in, a notebook). Each default is the paper's: SGD momentum 0.9 and weight decay 1e-4 (MoCo),
LARS weight decay 1e-6 and trust coefficient 0.001 (SimCLR), AdamW betas (0.9, 0.999), eps 1e-8 and
weight decay 0.04 (DINO); a cosine schedule without warm-up; step decay at 60% and 80% by 0.1.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslkit.engine.lars import LARS
from sslkit.engine.optim import build_optimizer, scaled_lr
from sslkit.engine.schedule import build_scheduler, lr_factor, warmup_steps
from sslkit.errors import ConfigError


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


@pytest.mark.parametrize(("name", "expected"), [
    ("sgd", {"momentum": 0.9, "weight_decay": 1e-4, "nesterov": False}),
    ("lars", {"momentum": 0.9, "weight_decay": 1e-6, "trust_coefficient": 0.001}),
    ("adamw", {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.04}),
])
def test_missing_keys_take_the_papers_defaults(name, expected):
    opt = build_optimizer(net(), {"name": name, "lr": 0.1}, 512)
    assert opt.defaults["lr"] == pytest.approx(0.2)  # linear scaling by default: 0.1 x 512/256
    for key, value in expected.items():
        assert opt.defaults[key] == pytest.approx(value), key
    decays = [g["weight_decay"] for g in opt.param_groups]
    if name == "sgd":  # MoCo's reference code decays every parameter
        assert decays == [pytest.approx(1e-4)]
    else:  # biases and norms without decay, the weight with the default
        assert sorted(decays) == [0.0, pytest.approx(expected["weight_decay"])]


def test_the_optimizer_class_follows_the_name_and_unknown_names_fail():
    assert type(build_optimizer(net(), {"name": "lars", "lr": 0.1}, 256)) is LARS
    assert type(build_optimizer(net(), {"name": "adamw", "lr": 0.1}, 256)) is torch.optim.AdamW
    assert type(build_optimizer(net(), {"name": "sgd", "lr": 0.1}, 256)) is torch.optim.SGD
    for bad in ("adam", "aaa", "zzz", "sgdd", "lar", ""):  # names sorting before, between and after the valid ones
        with pytest.raises(ConfigError, match=f"unknown optimizer '{bad}'; valid: sgd, lars, adamw"):
            build_optimizer(net(), {"name": bad, "lr": 0.1}, 256)


def test_exclusion_of_biases_and_norms_can_be_set_either_way():
    sgd = build_optimizer(net(), {"name": "sgd", "lr": 0.1, "exclude_bias_and_norm": True}, 256)
    assert sorted(g["weight_decay"] for g in sgd.param_groups) == [0.0, pytest.approx(1e-4)]
    lars = build_optimizer(net(), {"name": "lars", "lr": 0.1, "exclude_bias_and_norm": False}, 256)
    assert [g["weight_decay"] for g in lars.param_groups] == [pytest.approx(1e-6)]


@pytest.mark.parametrize("scaling", ["cubic", "a", "zzz", "lineaR", ""])
def test_unknown_lr_scaling_fails_whatever_its_sort_order(scaling):
    with pytest.raises(ConfigError, match=f"optim.lr_scaling='{scaling}' is invalid"):
        scaled_lr(0.1, 256, scaling)
    assert scaled_lr(0.3, 64, "sqrt") == pytest.approx(0.3 * 2)
    assert scaled_lr(0.3, 64, "none") == 0.3


@pytest.mark.parametrize("kind", ["linear", "a", "zzz", "cos", ""])
def test_unknown_schedule_fails_at_build_time(kind):
    opt = build_optimizer(net(), {"name": "sgd", "lr": 0.1}, 256)
    with pytest.raises(ConfigError, match=f"optim.schedule='{kind}' is invalid"):
        build_scheduler(opt, {"schedule": kind}, 10, 5)


def lrs(cfg: dict[str, object], total: int) -> list[float]:
    opt = build_optimizer(net(), {"name": "sgd", "lr": 1.0, "lr_scaling": "none"}, 256)
    sched = build_scheduler(opt, cfg, total, 10)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_a_scheduler_without_keys_is_a_cosine_to_zero_without_warmup():
    assert lrs({}, 10) == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)])


def test_step_decay_defaults_to_x0_1_at_60_and_80_percent():
    assert lrs({"schedule": "step"}, 10) == pytest.approx([1.0] * 6 + [0.1] * 2 + [0.01] * 2)
    assert lrs({"schedule": "step", "milestones": [0.5], "gamma": 0.5}, 4) == pytest.approx([1, 1, 0.5, 0.5])


def test_cosine_with_a_floor_ends_at_the_floor():
    values = lrs({"min_lr_ratio": 0.1}, 10)
    assert values[0] == pytest.approx(1.0) and min(values) > 0.1
    assert lr_factor(10, 10, 0, "cosine", min_ratio=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize(("cfg", "total", "per_epoch", "expected"), [
    ({}, 100, 10, 0),                                                       # no warm-up key: none
    ({"warmup_epochs": 2}, 100, 10, 20),                                    # no cap key: the whole run allowed
    ({"warmup_epochs": 2, "max_warmup_fraction": 0.0}, 100, 10, 0),         # a cap of 0 is allowed
    ({"warmup_epochs": 2, "max_warmup_fraction": 1.0}, 10, 10, 9),          # longer than the run: all but 1 step
    ({"warmup_epochs": 20}, 100, 10, 99),
    ({"warmup_epochs": 1, "max_warmup_fraction": 0.05}, 100, 10, 5),
    ({"warmup_fraction": 0.0, "warmup_epochs": 5}, 100, 10, 0),             # the fraction wins, even 0
    ({"warmup_fraction": 0.25}, 10, 10, 2),                                 # round(2.5) = 2
])
def test_warmup_steps_from_each_combination_of_keys(cfg, total, per_epoch, expected):
    assert warmup_steps(cfg, total, per_epoch) == expected


@pytest.mark.parametrize("cfg", [{"warmup_fraction": 1.0}, {"warmup_fraction": -0.1},
                                 {"max_warmup_fraction": 1.5}, {"max_warmup_fraction": -0.1},
                                 {"warmup_fraction": "half"}])
def test_warmup_keys_out_of_range_fail(cfg):
    with pytest.raises(ConfigError, match="optim.(max_)?warmup_fraction"):
        warmup_steps(cfg, 100, 10)


def test_an_unknown_schedule_fails_at_build_time_even_behind_a_warmup():
    """The warm-up's factor does not look at the schedule: the check must not wait until it ends."""
    opt = build_optimizer(net(), {"name": "sgd", "lr": 0.1}, 256)
    with pytest.raises(ConfigError, match="optim.schedule='cosin' is invalid"):
        build_scheduler(opt, {"schedule": "cosin", "warmup_epochs": 1}, 100, 10)


def test_a_first_rule_without_weight_decay_takes_its_parameters_out_of_decay():
    from sslkit.engine.optim import param_groups
    from sslkit.nn.param_groups import ParamRule

    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    groups = param_groups(model, 0.1, [ParamRule("0.", weight_decay=False)], exclude_bias_and_norm=False)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert [decay[id(p)] for p in model[0].parameters()] == [0.0, 0.0]
    assert [decay[id(p)] for p in model[1].parameters()] == [0.1, 0.1]


def test_a_weight_decay_schedule_on_hand_built_groups_leaves_undecayed_groups_at_zero():
    """Groups without sslkit's `no_decay` key (a plain torch optimizer): a group at weight decay 0 stays 0."""
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    opt = torch.optim.AdamW([{"params": a.parameters(), "weight_decay": 0.0},
                             {"params": b.parameters(), "weight_decay": 0.04}], lr=0.1)
    sched = build_scheduler(opt, {"weight_decay": 0.04, "weight_decay_end": 0.4}, 10, 10)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["weight_decay"] == 0.0
    assert 0.04 < opt.param_groups[1]["weight_decay"] < 0.4


def test_weight_decay_ends_may_be_zero_but_not_negative():
    opt = build_optimizer(net(), {"name": "adamw", "lr": 0.1}, 256)
    build_scheduler(opt, {"weight_decay": 0.0, "weight_decay_end": 0.0}, 10, 10)
    for start, end in ((-0.5, 0.4), (0.04, -0.5)):
        with pytest.raises(ConfigError, match="must be >= 0"):
            build_scheduler(opt, {"weight_decay": start, "weight_decay_end": end}, 10, 10)
