"""MoCo's queue of negative keys: a FIFO with exact wrap-around, saved in checkpoints."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslkit.devices import concat_all_gather


def queue_cap(n_images: int) -> int:
    """The largest power of two <= n_images / 4 (at least 1): a queue that rarely holds a stale key of
    the query's own image (about K^2 / 2N^2 of the queries meet one)."""
    return 1 << max(0, int(math.floor(math.log2(max(1, n_images // 4)))))


def queue_notice(queue_size: int, n_images: int) -> str | None:
    """One line when MoCo's queue K is at least the number of pretraining images N: the queue then
    holds a key of every image, so every query meets stale keys of its own image among its negatives."""
    if queue_size < n_images:
        return None
    return (f"sslkit: notice: method.queue_size={queue_size} >= the {n_images} pretraining images: every query "
            f"meets stale keys of its own image among its negatives; e.g. method.queue_size={queue_cap(n_images)} "
            f"(a quarter of the data or less, as batch-compare caps it)")


class KeyQueue(nn.Module):
    """K keys of dimension D kept as buffers, so `state_dict()` (and every checkpoint) holds them.

    Unlike the reference code, K need not be a multiple of the batch: a push that runs past the end
    wraps around, and a push larger than K keeps its last K keys. Under torch.distributed every rank
    pushes the keys gathered from all ranks, so all ranks hold the same queue.
    """

    keys: Tensor
    ptr: Tensor
    filled: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        # Random unit vectors until real keys arrive, as in MoCo's reference implementation.
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        # How many entries hold real keys (the rest are the random initial vectors), capped at K.
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if prefix + "keys" in state_dict and prefix + "filled" not in state_dict:
            # a checkpoint from before the counter: assume a full queue
            state_dict[prefix + "filled"] = torch.tensor(state_dict[prefix + "keys"].shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def push(self, keys: Tensor, gather: bool = True) -> None:
        """Enqueue `keys` (N, D) oldest-first, overwriting the oldest entries."""
        if gather:
            keys = concat_all_gather(keys)
        keys = keys.detach().to(self.keys.dtype)
        n, start = keys.shape[0], int(self.ptr)
        if n > self.size:  # only the newest K survive; they land where a key-by-key push would put them
            start, keys, n = (start + n - self.size) % self.size, keys[-self.size:], self.size
        idx = (torch.arange(n, device=self.keys.device) + start) % self.size
        self.keys.index_copy_(0, idx, keys.to(self.keys.device))
        self.ptr.fill_((start + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))
