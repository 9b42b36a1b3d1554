"""Gradient edits between backward and the optimizer step, as pure functions a method's hook calls:
clipping (DINO clips each parameter's gradient norm at 3.0, Caron et al. arXiv 2104.14294 appendix,
official `utils.clip_gradients`), and cancelling the gradients of a part for the first epoch(s) (DINO's
last layer, `cancel_gradients_last_layer`; SwAV's prototypes, `freeze_prototypes_niters`).

Under AMP loss scaling the gradients must be unscaled before clipping (the engine's job).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

CLIP_MODES = ("per_parameter", "global")


@torch.no_grad()
def clip_gradients_(parameters: Iterable[nn.Parameter], max_norm: float, mode: str = "per_parameter") -> Tensor:
    """Clip gradients in place; returns the norms before clipping (one per parameter, or one global).

    `per_parameter` (DINO): each gradient g with ||g|| > max_norm is scaled by max_norm / (||g|| + 1e-6).
    `global`: `torch.nn.utils.clip_grad_norm_`, one factor for all gradients together.
    """
    params = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in params if p.grad is not None]
    if mode == "global":
        return torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
    if mode != "per_parameter":
        raise ValueError(f"unknown clipping mode '{mode}'; valid: {', '.join(CLIP_MODES)}")
    if not grads:
        return torch.zeros(0)
    norms = torch.stack(torch._foreach_norm(grads))
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, [c.to(g.dtype) for c, g in zip(coef.unbind(), grads, strict=True)])
    return norms


def cancel_gradients_(parameters: Iterable[nn.Parameter], now: float, until: float) -> bool:
    """While `now < until` (epochs or steps, the caller's unit), drop the gradients (`grad = None`): the
    optimizer then leaves these parameters untouched, weight decay and momentum included, as DINO and
    SwAV do. Returns whether it cancelled."""
    if now >= until:
        return False
    for p in parameters:
        p.grad = None
    return True
