"""Running a network on multi-crop views: one forward per run of same-size views, as the official
DINO `MultiCropWrapper` and SwAV's multi-resolution forward do (the views of one size share BN
statistics, and the network sees few, large batches)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def forward_by_size(views: Sequence[Tensor], net: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """`net` on each view, in order; consecutive views of one size go through it as one batch.

    >>> outs = forward_by_size([torch.zeros(2, 3, 8, 8)] * 2 + [torch.zeros(2, 3, 4, 4)], lambda x: x.mean((1, 2, 3)))
    >>> [tuple(o.shape) for o in outs]
    [(2,), (2,), (2,)]
    """
    out: list[Tensor] = []
    start = 0
    while start < len(views):
        end = start
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        out.extend(net(torch.cat(list(views[start:end]))).chunk(end - start))
        start = end
    return out
