"""NT-Xent (SimCLR, Chen et al. 2020, arXiv 2002.05709, eq. 1):

    l(i, j) = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) )

averaged over all 2N anchors, so each anchor has 1 positive and 2N-2 negatives.
Above `block` anchors or candidates the loss is computed block by block (`ntxent_blockwise`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sslkit.contrastive.ntxent_blockwise import ntxent_loss_blockwise

BLOCK = 1024  # 2N above this: no 2N x 2N matrix (a 1024^2 fp32 block is 4 MiB)


def ntxent_loss(z1: Tensor, z2: Tensor, temperature: float, all_z1: Tensor | None = None,
                all_z2: Tensor | None = None, offset: int = 0, block: int | None = BLOCK) -> Tensor:
    """Mean NT-Xent over the 2B local anchors `z1`, `z2` (B, D; two views of the same images).

    Under data parallelism pass the gathered views `all_z1`, `all_z2` (W*B, D) and this rank's
    `offset` (rank * B): every anchor then contrasts against all 2*W*B - 1 other views.
    Inputs need not be normalised: sim is cosine similarity. With more than `block` anchors or
    candidates, the value and gradient are computed block by block in O(block^2) memory;
    `block=None` always builds the dense matrix.
    """
    n_cand = 2 * (z1.shape[0] if all_z1 is None else all_z1.shape[0])
    if block is not None and max(2 * z1.shape[0], n_cand) > block:
        return ntxent_loss_blockwise(z1, z2, temperature, all_z1, all_z2, offset, block)
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    all_z1 = z1 if all_z1 is None else F.normalize(all_z1, dim=1)
    all_z2 = z2 if all_z2 is None else F.normalize(all_z2, dim=1)
    b, total = z1.shape[0], all_z1.shape[0]
    candidates = torch.cat([all_z1, all_z2])                  # (2T, D)
    anchors = torch.cat([z1, z2])                             # (2B, D)
    logits = (anchors / temperature) @ candidates.t()         # (2B, 2T)
    local = torch.arange(b, device=z1.device) + offset
    self_idx = torch.cat([local, local + total])
    pos_idx = torch.cat([local + total, local])
    logits = logits.scatter(1, self_idx.unsqueeze(1), float("-inf"))  # no self-similarity
    return F.cross_entropy(logits, pos_idx)
