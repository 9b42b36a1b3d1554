"""Per-step learning-rate schedules: linear warm-up (Goyal et al. 2017), then cosine (SGDR,
arXiv 1608.03983 eq. 5, without restarts), step decay at fractions of training, or constant; and
optionally a cosine weight-decay schedule stepped with it (DINO, arXiv 2104.14294 appendix: 0.04 -> 0.4)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from sslkit.contrastive.momentum import cosine_between
from sslkit.errors import ConfigError


def lr_factor(step: int, total: int, warmup: int, kind: str, milestones: tuple[float, ...] = (0.6, 0.8),
              gamma: float = 0.1, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimizer step `step` of `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if kind == "step":
        return gamma ** sum(step >= m * total for m in milestones)
    raise ConfigError(f"optim.schedule='{kind}' is invalid; valid: cosine, step, constant")


def _number(value: Any, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"optim.{key} must be a number, got {value!r}") from None


def warmup_steps(cfg: Mapping[str, Any], total_steps: int, steps_per_epoch: int) -> int:
    """Warm-up length in optimizer steps.

    `optim.warmup_fraction` (a fraction of the run) wins when set, so a short run keeps the whole
    schedule shape. Otherwise `optim.warmup_epochs` x steps per epoch, capped at
    `optim.max_warmup_fraction` of the run: a 10-epoch warm-up (SimCLR, arXiv 2002.05709 Sec. B.1)
    in a 1-epoch run would otherwise be all warm-up and end at the peak rate, never decaying.
    """
    fraction = cfg.get("warmup_fraction")
    if fraction is not None:
        fraction = _number(fraction, "warmup_fraction")
        if not 0.0 <= fraction < 1.0:
            raise ConfigError(f"optim.warmup_fraction must be in [0, 1), got {fraction}")
        return int(round(fraction * total_steps))
    cap = _number(cfg.get("max_warmup_fraction", 1.0), "max_warmup_fraction")
    if not 0.0 <= cap <= 1.0:
        raise ConfigError(f"optim.max_warmup_fraction must be in [0, 1], got {cap}")
    warmup = int(round(float(cfg.get("warmup_epochs", 0.0)) * steps_per_epoch))
    return min(warmup, int(cap * total_steps), max(0, total_steps - 1))


class LrWdSchedule(LambdaLR):
    """LambdaLR that also sets the weight decay of every decaying group at each step:
    `cosine_between(step, total_steps, wd_start, wd_end)` (DINO's `wd_schedule`, applied per iteration).

    Groups built with `no_decay` (biases, norms) keep 0. Its state is LambdaLR's plus the schedule's
    numbers, so a checkpoint resumes the weight decay exactly where the learning rate resumes.
    """

    def __init__(self, optimizer: Optimizer, lr_lambdas: list[Any], total_steps: int, wd_start: float,
                 wd_end: float) -> None:
        self.total_steps, self.wd_start, self.wd_end = total_steps, wd_start, wd_end
        self.decaying = [not g.get("no_decay", g.get("weight_decay", 0.0) == 0.0) for g in optimizer.param_groups]
        super().__init__(optimizer, lr_lambdas)

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        wd = weight_decay_at(self.last_epoch, self.total_steps, self.wd_start, self.wd_end)
        for group, decays in zip(self.optimizer.param_groups, self.decaying, strict=True):
            if decays:
                group["weight_decay"] = wd


def weight_decay_at(step: int, total_steps: int, start: float, end: float) -> float:
    """The weight decay at optimizer step `step`: cosine from `start` to `end` over the run."""
    return cosine_between(step, total_steps, start, end)


def build_scheduler(optimizer: Optimizer, cfg: Mapping[str, Any], total_steps: int, steps_per_epoch: int) -> LambdaLR:
    """A LambdaLR stepped once per optimizer step (warm-up: `warmup_steps`). A group with `fixed_lr`
    keeps its starting rate (SimSiam's predictor); with `optim.weight_decay_end` set, the weight decay
    follows a cosine from `optim.weight_decay` to it (`LrWdSchedule`)."""
    warmup = warmup_steps(cfg, total_steps, steps_per_epoch)
    kind = str(cfg.get("schedule", "cosine"))
    milestones = tuple(float(m) for m in cfg.get("milestones", (0.6, 0.8)))
    gamma, min_ratio = float(cfg.get("gamma", 0.1)), float(cfg.get("min_lr_ratio", 0.0))
    lr_factor(total_steps, total_steps, 0, kind, milestones, gamma, min_ratio)  # validate now (past any warm-up)

    def factor(s: int) -> float:
        return lr_factor(s, total_steps, warmup, kind, milestones, gamma, min_ratio)

    def constant(s: int) -> float:
        return 1.0

    lambdas: list[Callable[[int], float]] = [constant if g.get("fixed_lr") else factor for g in optimizer.param_groups]
    wd_end = cfg.get("weight_decay_end")
    if wd_end is None:
        return LambdaLR(optimizer, lambdas)
    wd_start, wd_end = _number(cfg.get("weight_decay", 0.0), "weight_decay"), _number(wd_end, "weight_decay_end")
    if wd_start < 0 or wd_end < 0:
        raise ConfigError(f"optim.weight_decay and optim.weight_decay_end must be >= 0, got {wd_start}, {wd_end}")
    return LrWdSchedule(optimizer, lambdas, total_steps, wd_start, wd_end)
