"""InfoNCE with a queue of negatives (MoCo, He et al. 2019, arXiv 1911.05722, eq. 1):

    L_q = -log( exp(q.k+ / tau) / ( exp(q.k+ / tau) + sum_{k- in queue} exp(q.k- / tau) ) )

computed as cross-entropy over K+1 logits whose positive sits at index 0 (Algorithm 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def infonce_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """(N, 1+K) logits: column 0 is q.k+ and columns 1.. are q against every queued key.

    `q`, `k` are (N, D) and `queue` is (K, D); all are expected L2-normalised.
    """
    q = q / temperature  # scale the N x D queries, not the N x (1+K) logits
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.t()
    return torch.cat([pos, neg], dim=1)


def infonce_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Mean InfoNCE loss over the N queries (eq. 1 of MoCo), and the share of queries whose positive
    is the largest logit (no gradient). Gradients flow into `q` only if `k` and `queue` are detached."""
    logits = infonce_logits(q, k, queue, temperature)
    loss = F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
    return loss, (logits.detach().argmax(1) == 0).float().mean()
