"""Momentum (EMA) encoders: theta_k <- m * theta_k + (1 - m) * theta_q (MoCo, arXiv 1911.05722, eq. 2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SCHEDULES = ("constant", "cosine")


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """Move `target`'s parameters towards `online`'s; buffers (BN statistics) are left alone."""
    t_params: list[Tensor] = list(target.parameters())
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("target and online modules have different parameters")
    torch._foreach_mul_(t_params, m)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - m)


def momentum_at(base: float, progress: float, schedule: str = "constant") -> float:
    """The momentum at `progress` in [0, 1]: constant, or cosine from `base` to 1.

    Cosine: BYOL, arXiv 2006.07733 Sec. 3.1.
    """
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return 1.0 - (1.0 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1.0) / 2.0
    raise ValueError(f"unknown momentum schedule '{schedule}'; valid: {', '.join(SCHEDULES)}")


def cosine_between(step: int, total_steps: int, start: float, end: float) -> float:
    """`start` at step 0 to `end` at step `total_steps` on a half cosine, clamped outside [0, total]:
    end + (start - end) (1 + cos(pi k / K)) / 2, the value of DINO's `utils.cosine_scheduler` at step k."""
    k = min(max(step, 0), total_steps)
    return end + (start - end) * (1.0 + math.cos(math.pi * k / max(total_steps, 1))) / 2.0


def ema_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """The target network's momentum at optimizer step `step` of `total_steps` (BYOL, arXiv 2006.07733,
    Sec. 3.2: tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, tau_base = 0.996; DINO's teacher the same)."""
    return cosine_between(step, total_steps, base, final)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` that receives no gradients (a momentum encoder's start)."""
    import copy

    clone = copy.deepcopy(module)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone
