"""BYOL / SimSiam negative cosine: lightly's NegativeCosineSimilarity and the formulas, value and gradient."""

import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity

from sslkit.losses import byol_loss, negative_cosine_similarity, symmetrized_negative_cosine


def _pairs(seed: int, n: int = 12, d: int = 7) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4)]


def test_equals_lightly_by_value_and_gradient():
    p, z, _, _ = _pairs(0)
    ours = negative_cosine_similarity(p, z)
    ref = NegativeCosineSimilarity()(p, z)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    g_ours = torch.autograd.grad(ours, (p, z))
    g_ref = torch.autograd.grad(ref, (p, z))
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_symmetrized_is_simsiam_eq2_and_stop_gradient_is_the_callers():
    p1, p2, z1, z2 = _pairs(1)
    loss = symmetrized_negative_cosine(p1, p2, z1.detach(), z2.detach())
    ref_fn = NegativeCosineSimilarity()
    ref = 0.5 * ref_fn(p1, z2.detach()) + 0.5 * ref_fn(p2, z1.detach())
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    loss.backward()
    assert z1.grad is None and z2.grad is None  # the detached targets receive nothing
    assert p1.grad is not None and p1.grad.abs().sum() > 0


def test_byol_loss_is_the_sum_of_normalised_squared_errors():
    p1, p2, z1, z2 = _pairs(2)
    by_hand = ((F.normalize(p1, dim=1) - F.normalize(z2, dim=1)).pow(2).sum(1)
               + (F.normalize(p2, dim=1) - F.normalize(z1, dim=1)).pow(2).sum(1)).mean()
    ours = byol_loss(p1, p2, z1, z2)
    torch.testing.assert_close(ours, by_hand, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(ours, (p1, p2))
    g2 = torch.autograd.grad(by_hand, (p1, p2))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert float(byol_loss(p1, p2, p2, p1).detach()) < 1e-12  # perfect predictions: zero loss
