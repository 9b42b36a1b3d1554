"""VICReg (Bardes et al., arXiv 2105.04906, eq. 1-6):

    l(Z, Z') = λ s(Z, Z') + μ [v(Z) + v(Z')] + ν [c(Z) + c(Z')],   λ = μ = 25, ν = 1
    s = mean_b ||z_b - z'_b||² / d (the official `F.mse_loss`),
    v(Z) = mean_j max(0, γ - sqrt(Var(z_j) + ε)),  γ = 1, ε = 1e-4 (unbiased variance),
    c(Z) = sum_{i != j} Cov(Z)_ij² / d,  Cov(Z) = (Z - mean)ᵀ (Z - mean) / (N - 1).

As the official code (and lightly), the variance term is halved: μ [v(Z) + v(Z')] / 2. Under
torch.distributed the variance and covariance use every rank's rows (`gather_with_grad`, the
official `FullGatherLayer`); the invariance term stays on this rank's rows. Usage:

    loss = vicreg_loss(expander(f(x1)), expander(f(x2)))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sslkit.devices import gather_with_grad

INVARIANCE = 25.0  # λ, Sec. 4.1
VARIANCE = 25.0  # μ
COVARIANCE = 1.0  # ν
GAMMA = 1.0  # target standard deviation γ, eq. 1
EPS = 1e-4  # ε, eq. 1


def variance_term(z: Tensor, gamma: float = GAMMA, eps: float = EPS) -> Tensor:
    """v(Z), eq. 1: the hinge on each feature's standard deviation over the batch, averaged over features."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def covariance_term(z: Tensor) -> Tensor:
    """c(Z), eq. 3-4: the squared off-diagonal entries of the batch covariance, summed, divided by d."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


def vicreg_loss(z_a: Tensor, z_b: Tensor, invariance: float = INVARIANCE, variance: float = VARIANCE,
                covariance: float = COVARIANCE, gamma: float = GAMMA, eps: float = EPS) -> Tensor:
    """Eq. 6 on two (N, D) batches of embeddings (N >= 2 over all ranks)."""
    sim = F.mse_loss(z_a, z_b)
    z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
    if z_a.shape[0] < 2:
        raise ValueError(f"VICReg needs a batch of at least 2 to estimate variances, got {z_a.shape[0]}")
    var = 0.5 * (variance_term(z_a, gamma, eps) + variance_term(z_b, gamma, eps))
    cov = covariance_term(z_a) + covariance_term(z_b)
    return invariance * sim + variance * var + covariance * cov
