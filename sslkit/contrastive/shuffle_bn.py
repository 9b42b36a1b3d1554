"""Shuffle-BN (MoCo, arXiv 1911.05722 Sec. 3.3): shuffle the key batch before the key encoder so BN
statistics of a query and its key come from different samples, then restore the order.

- DDP: gather keys from all ranks, permute with a permutation broadcast from rank 0, encode this
  rank's shard, and undo it (the paper's version).
- One device: permute locally; with SplitBatchNorm2d in the encoders the G groups play the GPUs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sslkit.devices import broadcast_, concat_all_gather, rank, world_size


@torch.no_grad()
def shuffle_local(x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(x permuted, inverse permutation) on one device."""
    perm = torch.randperm(x.shape[0], device="cpu", generator=generator).to(x.device)
    return x[perm], torch.argsort(perm)


@torch.no_grad()
def unshuffle_local(x: Tensor, inverse: Tensor) -> Tensor:
    return x[inverse]


@torch.no_grad()
def shuffle_ddp(x: Tensor) -> tuple[Tensor, Tensor]:
    """This rank's shard of the globally shuffled batch, and the global inverse permutation."""
    gathered = concat_all_gather(x)
    perm = torch.randperm(gathered.shape[0], device=gathered.device)
    broadcast_(perm, src=0)
    inverse = torch.argsort(perm)
    local = perm.view(world_size(), -1)[rank()]
    return gathered[local], inverse


@torch.no_grad()
def unshuffle_ddp(x: Tensor, inverse: Tensor) -> Tensor:
    """Undo `shuffle_ddp` on the encoded shard: gather, reorder, keep this rank's rows."""
    gathered = concat_all_gather(x)
    local = inverse.view(world_size(), -1)[rank()]
    return gathered[local]
