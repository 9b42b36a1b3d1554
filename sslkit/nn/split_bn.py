"""Split BatchNorm: BN statistics over G groups of a batch, as G GPUs would compute them.

With a shuffled key batch this emulates MoCo's shuffle-BN on one device (MoCo CIFAR-10 demo):
queries and keys of the same image fall in different groups, so BN cannot leak the positive.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _cl_groups(t: Tensor, groups: int) -> Tensor:
    """A channels_last (N, C, H, W) tensor as the view (N/G, G, H*W, C): group b is samples b, b+G, ..."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).view(n // groups, groups, h * w, c)


class _SplitBatchNorm(torch.autograd.Function):
    """Per-group batch norm in training mode. The output is a new tensor in x's memory format, not a view
    of one: an in-place op after it (ResNet's ReLU(inplace=True)) then costs nothing extra, whereas on a
    view autograd would copy the whole activation back into its base (CopySlices) in every backward.

    NCHW: the groups folded into channels, a view, through the native batch-norm kernels.
    channels_last: statistics reduced over the view (N/G, G, H*W, C); no copy of the input either.

    Reduced precision (bf16/fp16 activations under autocast, fp32 parameters and running stats): the
    statistics and the gradient sums are kept in fp32, as the native kernel's mixed-type path keeps them.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor,
                weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, groups: int, momentum: float, eps: float) -> Tensor:
        n, c, h, w = x.shape
        ctx.groups, ctx.eps, ctx.folded = groups, eps, x.is_contiguous()
        if not ctx.folded and not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        out = torch.empty_like(x)
        if ctx.folded:
            fold = (n // groups, c * groups, h, w)
            means = None if running_mean is None else running_mean.repeat(groups)
            vars_ = None if running_var is None else running_var.repeat(groups)
            stats = _stat_dtype(x, weight, bias, running_mean, running_var)
            save_mean = x.new_empty(c * groups, dtype=stats)
            save_invstd = x.new_empty(c * groups, dtype=stats)
            torch.ops.aten.native_batch_norm.out(
                x.view(fold), _repeat(weight, groups), _repeat(bias, groups), means, vars_, True, momentum,
                eps, out=out.view(fold), save_mean=save_mean, save_invstd=save_invstd)
            if running_mean is not None and means is not None and running_var is not None and vars_ is not None:
                running_mean.copy_(means.view(groups, c).mean(0))
                running_var.copy_(vars_.view(groups, c).mean(0))
            ctx.save_for_backward(x, weight, save_mean, save_invstd)
            return out
        xg = _cl_groups(x, groups)
        var, mean = torch.var_mean(_acc(xg), dim=(0, 2), correction=0)  # (G, C), fp32 for bf16/fp16 input
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        torch.addcmul(shift.unsqueeze(1), xg, scale.unsqueeze(1), out=_cl_groups(out, groups))
        if running_mean is not None and running_var is not None:  # as the native kernel, per group
            count = xg.shape[0] * xg.shape[2]
            unbiased = var * (count / max(count - 1, 1))
            running_mean.copy_((momentum * mean + (1 - momentum) * running_mean).mean(0))
            running_var.copy_((momentum * unbiased + (1 - momentum) * running_var).mean(0))
        ctx.save_for_backward(x, weight, mean, invstd)
        return out

    @staticmethod
    def backward(ctx: Any,
                 grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        groups, eps = ctx.groups, ctx.eps
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        n, c, h, w = x.shape
        if ctx.folded:
            fold = (n // groups, c * groups, h, w)
            dx, dw, db = torch.ops.aten.native_batch_norm_backward(
                grad.contiguous().view(fold), x.view(fold), _repeat(weight, groups), None, None, mean, invstd,
                True, eps, [need_x, need_w and weight is not None, need_b])
            return (dx.view(n, c, h, w) if need_x else None,
                    dw.view(groups, c).sum(0) if need_w and weight is not None else None,
                    db.view(groups, c).sum(0) if need_b else None, None, None, None, None, None)
        dy = _acc(_cl_groups(grad.contiguous(memory_format=torch.channels_last), groups))
        xg = _acc(_cl_groups(x, groups))
        count = xg.shape[0] * xg.shape[2]
        sum_dy = dy.sum((0, 2))                                              # (G, C)
        sum_dy_xhat = ((dy * xg).sum((0, 2)) - mean * sum_dy) * invstd
        dx = None
        if need_x:
            a = invstd if weight is None else invstd * weight
            k = sum_dy_xhat / count
            dx = torch.empty_like(x, dtype=xg.dtype)  # fp32 for bf16/fp16 input, cast once at the end
            dxg = _cl_groups(dx, groups)  # a * (dy - mean(dy) - xhat * mean(dy * xhat)), per group
            torch.addcmul((a * (mean * invstd * k - sum_dy / count)).unsqueeze(1), dy, a.unsqueeze(1), out=dxg)
            dxg.addcmul_(xg, (-a * invstd * k).unsqueeze(1))
            dx = dx.to(x.dtype)
        dw = sum_dy_xhat.sum(0) if need_w and weight is not None else None
        db = sum_dy.sum(0) if need_b else None
        return dx, dw, db, None, None, None, None, None


def _acc(t: Tensor) -> Tensor:
    """t in fp32 where it is bf16/fp16 (statistics accumulate in fp32), else t itself (no copy)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _stat_dtype(x: Tensor, *params: Tensor | None) -> torch.dtype:
    """The dtype of the native kernel's saved mean/invstd: the parameters' (mixed type) or x's own."""
    return next((p.dtype for p in params if p is not None), x.dtype)


def _repeat(t: Tensor | None, groups: int) -> Tensor | None:
    return None if t is None else t.repeat(groups)


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
        momentum = self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        momentum = 0.0 if momentum is None else momentum
        n = x.shape[0]
        # Group b holds samples b, b+G, b+2G, ... (as the MoCo CIFAR demo's view does); the key batch
        # is shuffled before it gets here, so which samples share a group is random either way.
        if n % g == 0:
            return _SplitBatchNorm.apply(x, self.weight, self.bias, self.running_mean, self.running_var, g,
                                         momentum, self.eps)
        # a short batch: uneven groups, one call each
        out = torch.empty_like(x)
        means = None if self.running_mean is None else self.running_mean.repeat(g, 1)
        vars_ = None if self.running_var is None else self.running_var.repeat(g, 1)
        for b in range(g):
            out[b::g] = F.batch_norm(x[b::g], None if means is None else means[b],
                                     None if vars_ is None else vars_[b], self.weight, self.bias, True,
                                     momentum, self.eps)
        if self.running_mean is not None and means is not None and self.running_var is not None \
                and vars_ is not None:
            self.running_mean.copy_(means.mean(0))
            self.running_var.copy_(vars_.mean(0))
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
