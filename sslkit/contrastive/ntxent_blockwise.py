"""NT-Xent (SimCLR, Chen et al. 2020, arXiv 2002.05709, eq. 1) and its gradient, block by block.

The dense loss builds the 2N x 2N similarity matrix (several copies of it for the softmax and its
gradient: about 4 GiB at N = 8192 in fp32). Here the matrix is never built: pass 1 streams the
log-sum-exp of each anchor over blocks of candidates, pass 2 recomputes each block's logits and
accumulates the exact gradient with respect to anchors and candidates. Memory is O(block^2 + N*D);
the value and gradient equal the dense computation's up to floating-point summation order.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-12  # F.normalize's default


class NTXentGrads(NamedTuple):
    """The loss and its gradient with respect to each input (None for inputs not given)."""

    loss: Tensor
    z1: Tensor
    z2: Tensor
    all_z1: Tensor | None
    all_z2: Tensor | None


def _normalize_backward(grad: Tensor, z: Tensor) -> Tensor:
    """Gradient through u = z / max(|z|, eps) (F.normalize), given d loss / d u."""
    norm = z.norm(dim=1, keepdim=True)
    denom = norm.clamp_min(_EPS)
    u = z / denom
    radial = (u * grad).sum(1, keepdim=True) * (norm > _EPS)  # a clamped norm is a constant
    return (grad - u * radial) / denom


def _mask_self(logits: Tensor, self_idx: Tensor, start: int) -> None:
    """Set each anchor's own column to -inf, where it falls in this block of candidates."""
    cols = self_idx - start
    rows = ((cols >= 0) & (cols < logits.shape[1])).nonzero().squeeze(1)
    logits[rows, cols[rows]] = float("-inf")


def ntxent_loss_and_grad(z1: Tensor, z2: Tensor, temperature: float, all_z1: Tensor | None = None,
                         all_z2: Tensor | None = None, offset: int = 0, *, block: int = 1024,
                         need_grad: bool = True) -> NTXentGrads:
    """`ntxent_loss` (same arguments and value) and its gradient, never holding more than
    `block` x `block` logits. Computed in at least fp32 (autocast off); gradients in the input dtypes.

    Without `all_z1`/`all_z2` the gradients of z1, z2 include their use as candidates; with them
    (data parallel) the candidates' part is returned separately as all_z1, all_z2.
    """
    if (all_z1 is None) != (all_z2 is None):
        raise ValueError("pass both all_z1 and all_z2, or neither")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    gathered = all_z1 is not None and all_z2 is not None
    dtype = torch.promote_types(z1.dtype, torch.float32)
    with torch.no_grad(), torch.autocast(z1.device.type, enabled=False):
        raw = [t.to(dtype) for t in (z1, z2)]
        raw_all = [t.to(dtype) for t in (all_z1, all_z2)] if gathered else raw  # type: ignore[union-attr]
        anchors = F.normalize(torch.cat(raw), dim=1)                            # (2B, D)
        cands = F.normalize(torch.cat(raw_all), dim=1) if gathered else anchors  # (2T, D)
        b, t = z1.shape[0], cands.shape[0] // 2
        local = torch.arange(b, device=z1.device) + offset
        self_idx = torch.cat([local, local + t])
        pos_idx = torch.cat([local + t, local])
        queries = anchors / temperature
        rows = [(i, min(i + block, 2 * b)) for i in range(0, 2 * b, block)]
        cols = [(k, min(k + block, 2 * t)) for k in range(0, 2 * t, block)]

        def tile(i: tuple[int, int], k: tuple[int, int]) -> Tensor:
            logits = queries[i[0]:i[1]] @ cands[k[0]:k[1]].t()
            _mask_self(logits, self_idx[i[0]:i[1]], k[0])
            return logits

        # pass 1: streaming log-sum-exp over candidate blocks
        lse = torch.cat([torch.logsumexp(torch.stack([torch.logsumexp(tile(i, k), 1) for k in cols], 1), 1)
                         for i in rows])
        positive = (queries * cands[pos_idx]).sum(1)
        loss = (lse - positive).mean()
        if not need_grad:
            return NTXentGrads(loss, torch.zeros_like(z1), torch.zeros_like(z2), None, None)

        # pass 2: d loss / d logit = (softmax - one-hot(positive)) / 2B, folded into both operands
        g_anchor, g_cand = torch.zeros_like(anchors), torch.zeros_like(cands)
        for i in rows:
            for k in cols:
                p = tile(i, k).sub_(lse[i[0]:i[1], None]).exp_()
                g_anchor[i[0]:i[1]].addmm_(p, cands[k[0]:k[1]])
                g_cand[k[0]:k[1]].addmm_(p.t(), anchors[i[0]:i[1]])
        g_anchor.sub_(cands[pos_idx])
        g_cand.index_add_(0, pos_idx, anchors, alpha=-1.0)
        scale = 1.0 / (2 * b * temperature)
        g_anchor.mul_(scale)
        g_cand.mul_(scale)
        if not gathered:
            g_anchor.add_(g_cand)
        g1, g2 = g_anchor.split(b)
        grads = [_normalize_backward(g, z).to(src.dtype) for g, z, src in zip((g1, g2), raw, (z1, z2), strict=True)]
        if not gathered:
            return NTXentGrads(loss, grads[0], grads[1], None, None)
        a1, a2 = g_cand.split(t)
        ga1, ga2 = (_normalize_backward(g, z).to(src.dtype)  # type: ignore[union-attr]
                    for g, z, src in zip((a1, a2), raw_all, (all_z1, all_z2), strict=True))
        return NTXentGrads(loss, grads[0], grads[1], ga1, ga2)


class _BlockwiseNTXent(torch.autograd.Function):
    """Loss and gradient computed together in forward; backward only scales the stored gradient."""

    @staticmethod
    def forward(ctx: Any, z1: Tensor, z2: Tensor,
                all_z1: Tensor | None, all_z2: Tensor | None, temperature: float, offset: int,
                block: int) -> Tensor:
        res = ntxent_loss_and_grad(z1, z2, temperature, all_z1, all_z2, offset, block=block,
                                   need_grad=any(ctx.needs_input_grad[:4]))
        ctx.grads = res[1:]
        return res.loss  # at least fp32, as cross_entropy under autocast

    @staticmethod
    def backward(ctx: Any,
                 grad: Tensor) -> tuple[Tensor | None, ...]:
        grads = [None if g is None else g * grad.to(g.dtype) for g in ctx.grads]
        return (*grads, None, None, None)


def ntxent_loss_blockwise(z1: Tensor, z2: Tensor, temperature: float, all_z1: Tensor | None = None,
                          all_z2: Tensor | None = None, offset: int = 0, block: int = 1024) -> Tensor:
    """`ntxent_loss`, differentiable, in O(block^2 + N*D) memory (see `ntxent_loss_and_grad`)."""
    return _BlockwiseNTXent.apply(z1, z2, all_z1, all_z2, temperature, offset, block)
