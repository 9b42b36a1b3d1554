"""Collectives for the contrastive parts; each is the identity outside torch.distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def concat_all_gather(x: Tensor) -> Tensor:
    """All ranks' `x` concatenated along dim 0 in rank order; no gradient (MoCo's key gather)."""
    if world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient and returns this rank's slice."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        out = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # A copy: all_reduce works in place, and autograd may hand us a buffer that others still read.
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)  # sum over ranks: every rank's loss depends on this rank's rows
        return grad.chunk(world_size())[rank()]


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' `x` concatenated along dim 0, differentiable (SimCLR's global negatives)."""
    return x if world_size() == 1 else _GatherWithGrad.apply(x)


def broadcast_(x: Tensor, src: int = 0) -> Tensor:
    """Broadcast `x` in place from `src`."""
    if world_size() > 1:
        dist.broadcast(x, src)
    return x


def all_reduce_mean_(tensors: list[Tensor]) -> None:
    """Average tensors (e.g. gradients) over ranks in place, in one flat bucket."""
    if world_size() == 1 or not tensors:
        return
    flat = torch._utils._flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    flat /= world_size()
    for t, synced in zip(tensors, torch._utils._unflatten_dense_tensors(flat, tensors), strict=True):
        t.copy_(synced)
