"""Devices, ranks and collectives: the one place engine, methods and evaluation take them from.

A bottom module: it imports nothing from sslkit but `sslkit.errors`. Every collective is the
identity outside torch.distributed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from sslkit.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes, and its device."""

    rank: int
    local_rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(spec: str, local_rank: int = 0) -> torch.device:
    """`auto`: this rank's GPU when CUDA is present, else the CPU."""
    if spec == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device='{spec}' is invalid; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device='{spec}' but CUDA is not available; use device=cpu or device=auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


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
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        out = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        # A copy: all_reduce works in place, and autograd may hand us a buffer that others still read.
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)  # sum over ranks: every rank's loss depends on this rank's rows
        return grad.chunk(world_size())[rank()]


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' `x` concatenated along dim 0, differentiable (SimCLR's global negatives)."""
    if world_size() == 1:
        return x
    out: Tensor = _GatherWithGrad.apply(x)
    return out


class _AllReduceSumWithGrad(torch.autograd.Function):
    """all_reduce(SUM) whose backward is the all_reduce(SUM) of the incoming gradient: every rank's
    loss depends on every rank's summand."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def all_reduce_sum_with_grad(x: Tensor) -> Tensor:
    """The sum of `x` over ranks, differentiable (Barlow Twins' cross-correlation, batch statistics).

    Every rank computes the same loss from the sum, so rank r's gradient is `world_size` times its
    share; DistributedDataParallel's average over ranks turns that into the gradient of the loss.
    """
    if world_size() == 1:
        return x
    out: Tensor = _AllReduceSumWithGrad.apply(x)
    return out


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


def all_reduce_max(value: int, device: torch.device) -> int:
    """The largest `value` over ranks (e.g. the signal that asked one rank to stop)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
