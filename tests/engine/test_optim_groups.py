"""Parameter groups (no decay on biases and norms, per-prefix lr scale / fixed lr / no decay), AdamW and
the cosine weight-decay schedule: several steps against AdamW written out by hand (Loshchilov & Hutter,
arXiv 1711.05101, Algorithm 2) and against torch.optim.AdamW driven by hand; resume is exact."""

import math

import pytest
import torch
from torch import nn

from sslkit.engine.optim import build_optimizer, param_groups
from sslkit.engine.schedule import LrWdSchedule, build_scheduler, lr_factor, weight_decay_at
from sslkit.errors import ConfigError
from sslkit.nn.param_groups import ParamRule

ADAMW = {"name": "adamw", "lr": 0.004, "lr_scaling": "linear", "weight_decay": 0.04, "weight_decay_end": 0.4,
         "schedule": "cosine", "warmup_epochs": 2, "min_lr_ratio": 0.1}
RULES = (ParamRule("pred", fixed_lr=True), ParamRule("head", lr_scale=0.5), ParamRule("frozen_wd", weight_decay=False))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())
        self.head = nn.Linear(6, 3)
        self.pred = nn.Linear(3, 3)
        self.frozen_wd = nn.Linear(3, 2, bias=False)
        self.fixed = nn.Parameter(torch.ones(2), requires_grad=False)
        self.double()  # float64: a bias before BN has a ~0 gradient, where Adam's step amplifies rounding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen_wd(self.pred(self.head(self.body(x))))


def _names(model: nn.Module, group: dict) -> list[str]:
    ids = {id(p) for p in group["params"]}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def test_groups_split_biases_norms_and_rules():
    model = Net()
    groups = param_groups(model, 0.04, RULES)
    by_names = {tuple(_names(model, g)): g for g in groups}
    assert set(by_names) == {("body.0.weight",), ("body.0.bias", "body.1.weight", "body.1.bias"),
                             ("pred.weight",), ("pred.bias",), ("head.weight",), ("head.bias",),
                             ("frozen_wd.weight",)}
    assert by_names[("body.0.weight",)]["weight_decay"] == 0.04
    assert by_names[("body.0.bias", "body.1.weight", "body.1.bias")]["weight_decay"] == 0.0
    assert by_names[("frozen_wd.weight",)]["weight_decay"] == 0.0 and by_names[("frozen_wd.weight",)]["no_decay"]
    assert by_names[("head.weight",)]["lr_scale"] == 0.5 and by_names[("pred.weight",)]["fixed_lr"]
    assert all(g["lars_exclude"] == g["no_decay"] for g in groups)
    assert "fixed" not in sum((_names(model, g) for g in groups), [])  # frozen parameters are left out
    every = param_groups(model, 1e-4, exclude_bias_and_norm=False)  # MoCo's SGD: decay on everything
    assert len(every) == 1 and every[0]["weight_decay"] == 1e-4 and len(every[0]["params"]) == 9


def test_sgd_keeps_one_group_with_decay_on_every_parameter():
    opt = build_optimizer(Net(), {"name": "sgd", "lr": 0.03, "weight_decay": 1e-4}, 256)
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 1
    assert opt.param_groups[0]["weight_decay"] == 1e-4 and opt.param_groups[0]["lr"] == 0.03
    with pytest.raises(ConfigError, match="valid: sgd, lars, adamw"):
        build_optimizer(Net(), {"name": "adam", "lr": 0.1}, 256)


def _adamw_by_hand(model, steps, batches, lr_at, wd_at):
    """Algorithm 2 of Loshchilov & Hutter with torch's defaults (beta 0.9/0.999, eps 1e-8), the schedule's
    lr and wd per step and per group, written out for each parameter."""
    groups = param_groups(model, 0.04, RULES)
    state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for g in groups for p in g["params"]}
    for t in range(steps):
        model.zero_grad()
        model(batches[t]).square().mean().backward()
        with torch.no_grad():
            for g in groups:
                lr = 0.004 * 64 / 256 * g["lr_scale"] * (1.0 if g["fixed_lr"] else lr_at(t))
                wd = 0.0 if g["no_decay"] else wd_at(t)
                for p in g["params"]:
                    m, v = state[id(p)]
                    p.mul_(1 - lr * wd)
                    m.mul_(0.9).add_(p.grad, alpha=0.1)
                    v.mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
                    m_hat, v_hat = m / (1 - 0.9 ** (t + 1)), v / (1 - 0.999 ** (t + 1))
                    p.sub_(lr * m_hat / (v_hat.sqrt() + 1e-8))


def test_adamw_with_groups_and_schedules_equals_the_algorithm_by_hand_over_steps():
    steps, total, spe = 8, 12, 3
    batches = [torch.randn(64, 4, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
               for t in range(steps)]
    ours = Net()
    opt = build_optimizer(ours, ADAMW, 64, RULES)
    assert isinstance(opt, torch.optim.AdamW)
    sched = build_scheduler(opt, ADAMW, total, spe)
    assert isinstance(sched, LrWdSchedule)
    for t in range(steps):
        opt.zero_grad()
        ours(batches[t]).square().mean().backward()
        opt.step()
        sched.step()
    ref = Net()

    def lr_at(t):
        return lr_factor(t, total, 6, "cosine", min_ratio=0.1)

    def wd_at(t):
        return 0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi * t / total)) / 2  # DINO's cosine_scheduler

    _adamw_by_hand(ref, steps, batches, lr_at, wd_at)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    # and torch's AdamW, driven with the same values set by hand each step, agrees too
    manual = Net()
    groups = param_groups(manual, 0.04, RULES)
    torch_opt = torch.optim.AdamW(groups, lr=0.001, weight_decay=0.04)
    for t in range(steps):
        for g in torch_opt.param_groups:
            g["lr"] = 0.001 * g["lr_scale"] * (1.0 if g["fixed_lr"] else lr_at(t))
            g["weight_decay"] = 0.0 if g["no_decay"] else wd_at(t)
        torch_opt.zero_grad()
        manual(batches[t]).square().mean().backward()
        torch_opt.step()
    for a, b in zip(ours.parameters(), manual.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_weight_decay_and_lr_follow_their_schedules_at_every_step_and_resume_exactly():
    total = 10
    opt = build_optimizer(Net(), ADAMW, 256, RULES)
    sched = build_scheduler(opt, ADAMW, total, 2)
    seen = []
    for t in range(total):
        seen.append([v for g in opt.param_groups for v in (g["lr"], g["weight_decay"])])
        for g in opt.param_groups:
            expected_wd = 0.0 if g["no_decay"] else weight_decay_at(t, total, 0.04, 0.4)
            assert g["weight_decay"] == pytest.approx(expected_wd, abs=1e-15), t
            factor = 1.0 if g["fixed_lr"] else lr_factor(t, total, 4, "cosine", min_ratio=0.1)
            assert g["lr"] == pytest.approx(0.004 * g["lr_scale"] * factor, abs=1e-15), t
        opt.step()
        sched.step()
    assert seen[0][1] == pytest.approx(0.04) and seen[-1][1] > 0.39  # 0.04 -> 0.4
    # resume after step 4: a fresh optimizer and schedule loaded from the states continue identically
    opt2 = build_optimizer(Net(), ADAMW, 256, RULES)
    sched2 = build_scheduler(opt2, ADAMW, total, 2)
    for _ in range(4):
        opt2.step()
        sched2.step()
    opt3 = build_optimizer(Net(), ADAMW, 256, RULES)
    sched3 = build_scheduler(opt3, ADAMW, total, 2)
    opt3.load_state_dict(opt2.state_dict())
    sched3.load_state_dict(sched2.state_dict())
    for t in range(4, total):
        assert [v for g in opt3.param_groups for v in (g["lr"], g["weight_decay"])] == pytest.approx(seen[t])
        opt3.step()
        sched3.step()


def test_without_weight_decay_end_the_schedule_is_the_plain_lambda_and_bad_values_fail():
    opt = build_optimizer(Net(), {**ADAMW, "weight_decay_end": None}, 256)
    sched = build_scheduler(opt, {**ADAMW, "weight_decay_end": None}, 10, 2)
    assert not isinstance(sched, LrWdSchedule)
    with pytest.raises(ConfigError, match="weight_decay_end"):
        build_scheduler(opt, {**ADAMW, "weight_decay_end": "big"}, 10, 2)
    with pytest.raises(ConfigError, match=">= 0"):
        build_scheduler(opt, {**ADAMW, "weight_decay_end": -0.1}, 10, 2)


def test_the_shipped_adamw_config_is_dinos():
    from sslkit.config import as_dict, compose

    cfg = as_dict(compose(["optim=adamw"]).optim)
    opt = build_optimizer(Net(), cfg, 512)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0005 * 2)
    sched = build_scheduler(opt, cfg, 1000, 10)
    assert isinstance(sched, LrWdSchedule) and (sched.wd_start, sched.wd_end) == (0.04, 0.4)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == pytest.approx([0.0, 0.04])


def test_a_rule_is_a_frozen_declaration_with_neutral_defaults():
    """A bare rule changes nothing (scale 1, scheduled, decayed), and a method's rules cannot be edited
    after it declared them (they are hashable values)."""
    rule = ParamRule("head")
    assert (rule.lr_scale, rule.fixed_lr, rule.weight_decay) == (1.0, False, True)
    assert repr(ParamRule("predictor", fixed_lr=True)) == (
        "ParamRule(prefix='predictor', lr_scale=1.0, fixed_lr=True, weight_decay=True)")
    with pytest.raises(AttributeError):
        rule.lr_scale = 2.0  # type: ignore[misc]
    assert len({rule, ParamRule("head")}) == 1
