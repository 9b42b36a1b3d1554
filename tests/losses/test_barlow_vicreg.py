"""Barlow Twins and VICReg against lightly's BarlowTwinsLoss / VICRegLoss (value and gradient), by hand,
and across a 2-rank world: the distributed loss is the one-process loss on the global batch."""

import pytest
import torch
from lightly.loss import BarlowTwinsLoss, VICRegLoss

from sslkit.losses import barlow_twins_loss, cross_correlation, vicreg_loss
from tests.threaded_world import ThreadedWorld


def _z(seed: int, n: int = 16, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = a + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)  # correlated views
    return a.requires_grad_(), b.requires_grad_()


def _same_value_and_grad(ours, ref, inputs, rtol=1e-9):
    torch.testing.assert_close(ours, ref.reshape(ours.shape), rtol=rtol, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(ref, inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-12)


def test_barlow_twins_equals_lightly():
    za, zb = _z(0)
    _same_value_and_grad(barlow_twins_loss(za, zb), BarlowTwinsLoss(lambda_param=5e-3)(za, zb), (za, zb))
    _same_value_and_grad(barlow_twins_loss(za, zb, lambda_=0.1), BarlowTwinsLoss(lambda_param=0.1)(za, zb),
                         (za, zb))


def test_barlow_twins_by_hand():
    za, zb = _z(1, n=10, d=4)
    std = lambda z: (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)  # noqa: E731
    c = std(za).T @ std(zb) / 10
    expected = sum((1 - c[i, i]) ** 2 for i in range(4)) + 5e-3 * sum(
        c[i, j] ** 2 for i in range(4) for j in range(4) if i != j)
    torch.testing.assert_close(barlow_twins_loss(za, zb), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.diagonal(cross_correlation(za, za)), torch.ones(4, dtype=za.dtype),
                               rtol=1e-4, atol=1e-4)  # a view against itself: C_ii = 1 (up to eps)


def test_barlow_twins_on_two_ranks_is_the_global_batch_loss(monkeypatch):
    za, zb = _z(2, n=16)
    full = barlow_twins_loss(za, zb)
    g_full = torch.autograd.grad(full, (za, zb))

    def rank_loss(rank: int):
        a = za.detach()[rank * 8:(rank + 1) * 8].clone().requires_grad_()
        b = zb.detach()[rank * 8:(rank + 1) * 8].clone().requires_grad_()
        loss = barlow_twins_loss(a, b)
        return loss.detach(), torch.autograd.grad(loss, (a, b))

    (l0, g0), (l1, g1) = ThreadedWorld(2).run(rank_loss, monkeypatch)
    torch.testing.assert_close(l0, full.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(l1, full.detach(), rtol=1e-10, atol=1e-12)
    # each rank's gradient is world_size x its rows' share; DDP's mean over ranks gives the full gradient
    for k in range(2):
        torch.testing.assert_close(torch.cat([g0[k], g1[k]]) / 2, g_full[k], rtol=1e-9, atol=1e-12)


def test_vicreg_equals_lightly():
    za, zb = _z(3)
    _same_value_and_grad(vicreg_loss(za, zb), VICRegLoss()(za, zb), (za, zb))
    kw = dict(lambda_param=2.0, mu_param=3.0, nu_param=0.5, eps=1e-3)
    _same_value_and_grad(vicreg_loss(za, zb, invariance=2.0, variance=3.0, covariance=0.5, eps=1e-3),
                         VICRegLoss(**kw)(za, zb), (za, zb))


def test_vicreg_by_hand():
    za, zb = _z(4, n=9, d=5)
    inv = ((za - zb) ** 2).mean()

    def var(z):
        return torch.clamp(1 - torch.sqrt(z.var(0) + 1e-4), min=0).mean()

    def cov(z):
        c = torch.cov(z.T)  # unbiased, (d, d)
        return (c ** 2).sum().sub((c.diagonal() ** 2).sum()) / 5

    expected = 25 * inv + 25 * (var(za) + var(zb)) / 2 + (cov(za) + cov(zb))
    torch.testing.assert_close(vicreg_loss(za, zb), expected, rtol=1e-12, atol=1e-12)


def test_vicreg_on_two_ranks_uses_the_global_batch_for_variance_and_covariance(monkeypatch):
    za, zb = _z(5, n=16)
    global_terms = vicreg_loss(za, zb, invariance=0.0)

    def rank_loss(rank: int):
        a, b = za.detach()[rank * 8:(rank + 1) * 8], zb.detach()[rank * 8:(rank + 1) * 8]
        return vicreg_loss(a, b), vicreg_loss(a, b, invariance=0.0), 25 * ((a - b) ** 2).mean()

    for loss, reg, inv in ThreadedWorld(2).run(rank_loss, monkeypatch):
        torch.testing.assert_close(reg, global_terms.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(loss, reg + inv, rtol=1e-10, atol=1e-12)


def test_vicreg_needs_two_rows_and_takes_any_width():
    """The variance needs N >= 2 (an unbiased estimate): one row is a one-line error naming the batch;
    two rows, or embeddings one feature wide, are fine and equal lightly."""
    with pytest.raises(ValueError, match="VICReg needs a batch of at least 2 to estimate variances, got 1"):
        vicreg_loss(torch.randn(1, 8), torch.randn(1, 8))
    for shape in ((2, 8), (5, 1)):
        g = torch.Generator().manual_seed(3)
        a, b = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
        torch.testing.assert_close(vicreg_loss(a, b), VICRegLoss()(a, b), rtol=1e-5, atol=1e-6)
