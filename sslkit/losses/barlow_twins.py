"""Barlow Twins (Zbontar et al., arXiv 2103.03230, eq. 1 and Algorithm 1):

    C_ij = sum_b zA_bi zB_bj / N,   L = sum_i (1 - C_ii)² + λ sum_i sum_{j != i} C_ij²,   λ = 5e-3

with zA, zB each standardised along the batch by a BatchNorm without affine parameters (the official
`nn.BatchNorm1d(affine=False)` in training mode: biased variance, eps 1e-5). Under torch.distributed
the batch is every rank's: mean, variance and C are sums over ranks (`all_reduce_sum_with_grad`), so
the loss equals the one-process loss on the global batch, value and gradient (the official code
all-reduces C outside autograd; see docs/deviations.md). Usage:

    loss = barlow_twins_loss(projector(f(x1)), projector(f(x2)))
"""

from __future__ import annotations

import torch
from torch import Tensor

from sslkit.devices import all_reduce_sum_with_grad, world_size

LAMBDA = 5e-3  # Sec. 4 / Algorithm 1, `lambd`
BN_EPS = 1e-5  # torch BatchNorm1d's default, as the official projector's last BN


def batch_standardize(z: Tensor, eps: float = BN_EPS) -> Tensor:
    """(z - mean) / sqrt(var + eps) per feature over the (global) batch, biased variance: BN(affine=False)."""
    n = z.shape[0] * world_size()
    mean = all_reduce_sum_with_grad(z.sum(dim=0)) / n
    centred = z - mean
    var = all_reduce_sum_with_grad(centred.pow(2).sum(dim=0)) / n
    return centred * torch.rsqrt(var + eps)


def cross_correlation(z_a: Tensor, z_b: Tensor, eps: float = BN_EPS) -> Tensor:
    """The (D, D) matrix C of eq. 2 between the batch-standardised `z_a` and `z_b` (N, D) of all ranks."""
    n = z_a.shape[0] * world_size()
    return all_reduce_sum_with_grad(batch_standardize(z_a, eps).T @ batch_standardize(z_b, eps)) / n


def barlow_twins_loss(z_a: Tensor, z_b: Tensor, lambda_: float = LAMBDA, eps: float = BN_EPS) -> Tensor:
    """Eq. 1: invariance sum_i (1 - C_ii)² plus `lambda_` x redundancy sum_{i != j} C_ij²."""
    c = cross_correlation(z_a, z_b, eps)
    on_diag = torch.diagonal(c)
    invariance = (1.0 - on_diag).pow(2).sum()
    redundancy = c.pow(2).sum() - on_diag.pow(2).sum()
    return invariance + lambda_ * redundancy
