"""Negative cosine similarity between a prediction and a (stopped) target: SimSiam and BYOL.

SimSiam (Chen & He, arXiv 2011.10566, eq. 1-2): D(p, z) = -p/||p|| . z/||z||, and the symmetrised
L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2.
BYOL (Grill et al., arXiv 2006.07733, eq. 2): L = ||p̄ - z̄'||² = 2 - 2 cos(p, z'), summed over the two
directions (L + L~, Sec. 3.1): `byol_loss` = 4 + 4 x `symmetrized_negative_cosine`.

The stop-gradient is the caller's: pass `z.detach()` (SimSiam) or the target network's output
computed under `torch.no_grad()` (BYOL). Usage:

    p1, p2 = predictor(projector(f(x1))), predictor(projector(f(x2)))
    loss = symmetrized_negative_cosine(p1, p2, z1.detach(), z2.detach())
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def negative_cosine_similarity(p: Tensor, z: Tensor) -> Tensor:
    """D(p, z) of SimSiam eq. 1: the mean over the N rows of -cos(p_i, z_i); `p`, `z` are (N, D)."""
    return -(F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(dim=-1).mean()


def symmetrized_negative_cosine(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """SimSiam eq. 2: D(p1, z2) / 2 + D(p2, z1) / 2, in [-1, 1] (z1, z2 detached by the caller)."""
    return 0.5 * (negative_cosine_similarity(p1, z2) + negative_cosine_similarity(p2, z1))


def byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """BYOL's L + L~ (eq. 2 and Sec. 3.1): mean over the batch of ||p̄1 - z̄2||² + ||p̄2 - z̄1||², in [0, 8]."""
    return 4.0 + 4.0 * symmetrized_negative_cosine(p1, p2, z1, z2)
