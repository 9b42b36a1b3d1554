"""Sinkhorn-Knopp codes for SwAV (Caron et al., arXiv 2006.09882, Sec. 3.1, eq. 3 and Algorithm 1 of the
appendix): Q = Diag(u) exp(Cᵀ Z / ε) Diag(v), rescaled so that each of the K prototypes receives B/K of
the B samples' mass (rows) and each sample's code sums to 1 (columns, as returned: one row per sample).

ε = 0.05 and 3 iterations are the paper's defaults. The exponent is shifted by its global maximum
before `exp`: the first normalisation divides any common factor away, so the codes are the official
ones, without the overflow of exp(1 / 0.05) in low precision. Under torch.distributed the B columns
are every rank's (row sums and the total are all-reduced), as the official `distributed_sinkhorn`.
Usage:

    q = sinkhorn(scores.detach())  # (B, K) codes, no gradient
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from sslkit.devices import world_size

EPSILON = 0.05  # ε, Sec. 4 / appendix
ITERATIONS = 3


def _all_reduce_sum_(x: Tensor) -> Tensor:
    if world_size() > 1:
        dist.all_reduce(x)
    return x


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = EPSILON, iterations: int = ITERATIONS) -> Tensor:
    """(B, K) soft codes from (B, K) prototype scores; each row sums to 1 and, once converged, each
    column sums to B_total / K over all ranks. Computed in float32 at least; no gradient."""
    dtype = torch.promote_types(scores.dtype, torch.float32)
    logits = scores.to(dtype) / epsilon
    top = logits.max()
    if world_size() > 1:
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q = torch.exp(logits - top).T  # (K, B): prototypes x samples, as the official code
    k, b = q.shape[0], q.shape[1] * world_size()
    q /= _all_reduce_sum_(q.sum())
    for _ in range(iterations):
        q /= _all_reduce_sum_(q.sum(dim=1, keepdim=True))  # each prototype: total mass 1 ...
        q /= k  # ... then 1/K
        q /= q.sum(dim=0, keepdim=True)  # each sample: total mass 1 ...
        q /= b  # ... then 1/B
    q *= b  # each sample's code sums to 1
    return q.T.to(scores.dtype)
