"""Split BatchNorm: BN statistics over G groups of a batch, as G GPUs would compute them.

With a shuffled key batch this emulates MoCo's shuffle-BN on one device (MoCo CIFAR-10 demo):
queries and keys of the same image fall in different groups, so BN cannot leak the positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are per group; running stats average the groups.

    A subclass with the same parameters and buffers, so its state_dict loads into nn.BatchNorm2d.
    """

    def __init__(self, num_features: int, num_splits: int, **kw: object) -> None:
        super().__init__(num_features, **kw)  # type: ignore[arg-type]
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:
        g = self.num_splits
        if not self.training or g <= 1 or x.shape[0] < 2 * g:
            return super().forward(x)
        n, c, h, w = x.shape
        # Group b holds samples b, b+G, b+2G, ... (as the MoCo CIFAR demo's view does); the key batch
        # is shuffled before it gets here, so which samples share a group is random either way.
        if n % g == 0:  # fold the groups into channels: one batch_norm call computes G sets of statistics
            mean, var = self.running_mean.repeat(g), self.running_var.repeat(g)
            out = F.batch_norm(x.reshape(n // g, c * g, h, w), mean, var, self.weight.repeat(g),
                               self.bias.repeat(g), True, self.momentum, self.eps).view(n, c, h, w)
            means, vars_ = mean.view(g, c), var.view(g, c)
        else:  # a short batch: uneven groups, one call each
            out = torch.empty_like(x)
            means = self.running_mean.repeat(g, 1)
            vars_ = self.running_var.repeat(g, 1)
            for b in range(g):
                out[b::g] = F.batch_norm(x[b::g], means[b], vars_[b], self.weight, self.bias, True,
                                         self.momentum, self.eps)
        self.running_mean.copy_(means.mean(0))
        self.running_var.copy_(vars_.mean(0))
        self.num_batches_tracked.add_(1)
        return out


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d in `module` (in place) by a SplitBatchNorm2d with the same state."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            new = SplitBatchNorm2d(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                   affine=child.affine, track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(child.weight.device if child.weight is not None else "cpu")
            setattr(module, name, new)
        else:
            convert_split_bn(child, num_splits)
    return module
