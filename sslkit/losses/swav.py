"""SwAV's swapped prediction (Caron et al., arXiv 2006.09882, eq. 1-2):

    L(z_t, z_s) = ℓ(z_t, q_s) + ℓ(z_s, q_t),   ℓ(z, q) = -sum_k q_k log softmax(zᵀC / τ)_k,   τ = 0.1

over multi-crop (Sec. 3.2): the codes q come from the high-resolution crops only (`sinkhorn`, no
gradient), and each is predicted from every other crop, low-resolution ones included. As the official
`main_swav.py`: for each code crop i, the mean over the N rows and over the other crops, then the
mean over code crops. With a queue (Sec. 3.1, small batches), the stored scores of past batches join
Sinkhorn's columns and are dropped from the codes. Usage:

    scores = [prototypes(projector(f(v))) for v in views]  # 2 global + 6 local
    loss = swav_loss(scores[:2], scores[2:])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sslkit.losses.sinkhorn import EPSILON, ITERATIONS, sinkhorn

TEMPERATURE = 0.1  # τ, Sec. 4


def swapped_prediction(scores: Tensor, codes: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """ℓ of eq. 2, averaged over the N rows: cross-entropy between `codes` (N, K) and softmax(scores / τ)."""
    return -(codes * F.log_softmax(scores / temperature, dim=-1)).sum(dim=-1).mean()


def swav_loss(high_res: Sequence[Tensor], low_res: Sequence[Tensor] = (),
              queue: Sequence[Tensor] | None = None, temperature: float = TEMPERATURE,
              epsilon: float = EPSILON, iterations: int = ITERATIONS) -> Tensor:
    """Swapped prediction over all crops; each tensor is (N, K) prototype scores of one crop.

    `high_res`: the crops whose codes are computed (the official `crops_for_assign`, the 2 global
    crops); `low_res`: the other crops, predictors only; `queue`: for each high-res crop, (Q, K) scores
    of stored embeddings against the current prototypes, or None.
    """
    crops = [*high_res, *low_res]
    if len(high_res) < 1 or len(crops) < 2:
        raise ValueError(f"SwAV needs at least 1 high-resolution crop and 2 crops, got {len(high_res)} "
                         f"and {len(crops)}")
    if queue is not None and len(queue) != len(high_res):
        raise ValueError(f"one queue per high-resolution crop: {len(queue)} queues for {len(high_res)} crops")
    total = crops[0].new_zeros(())
    for i, scores in enumerate(high_res):
        with torch.no_grad():
            columns = scores.detach()
            if queue is not None:
                columns = torch.cat([columns, queue[i].detach()])
            codes = sinkhorn(columns, epsilon, iterations)[: scores.shape[0]]
        sub = sum(swapped_prediction(x, codes, temperature) for v, x in enumerate(crops) if v != i)
        total = total + sub / (len(crops) - 1)
    return total / len(high_res)
