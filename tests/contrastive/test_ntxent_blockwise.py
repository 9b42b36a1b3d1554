"""Blockwise NT-Xent: the same loss and gradient as autograd through the dense `ntxent_loss`."""

import copy

import pytest
import torch
from torch import nn

from sslkit.contrastive.grad_cache import cached_backward
from sslkit.contrastive.ntxent import ntxent_loss
from sslkit.contrastive.ntxent_blockwise import ntxent_loss_and_grad

TIGHT = {"rtol": 1e-10, "atol": 1e-13}


def _leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, dtype=torch.float64, generator=g).requires_grad_(True) for s in shapes]


def _dense(z1, z2, tau, all_z1=None, all_z2=None, offset=0):
    inputs = [t for t in (z1, z2, all_z1, all_z2) if t is not None]
    loss = ntxent_loss(z1, z2, tau, all_z1, all_z2, offset, block=None)
    return loss, torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize(("n", "dim", "block", "tau"), [
    (2, 3, 1, 0.5),     # one candidate per block
    (5, 4, 3, 0.1),     # block divides neither 2N = 10 nor anything else
    (37, 6, 10, 0.3),
    (16, 8, 32, 1.0),   # one block holds everything
    (24, 5, 7, 0.07),   # MoCo's temperature: large logits
])
def test_blockwise_loss_and_grad_equal_autograd_through_dense(n, dim, block, tau):
    z1, z2 = _leaves((n, dim), (n, dim), seed=n)
    loss, (g1, g2) = _dense(z1, z2, tau)
    res = ntxent_loss_and_grad(z1.detach(), z2.detach(), tau, block=block)
    torch.testing.assert_close(res.loss, loss.detach(), **TIGHT)
    torch.testing.assert_close(res.z1, g1, **TIGHT)
    torch.testing.assert_close(res.z2, g2, **TIGHT)
    assert res.all_z1 is None and res.all_z2 is None
    assert g1.abs().max() > 1e-3  # a real gradient, not zeros compared with zeros


@pytest.mark.parametrize("block", [2, 5, 100])
def test_gathered_form_with_offset_equals_autograd(block):
    world, b, dim, tau = 3, 4, 5, 0.2
    z1, z2, all_z1, all_z2 = _leaves((b, dim), (b, dim), (world * b, dim), (world * b, dim), seed=7)
    with torch.no_grad():  # this rank (1) is a slice of the gathered views, as after all_gather
        all_z1[b:2 * b] = z1
        all_z2[b:2 * b] = z2
    loss, grads = _dense(z1, z2, tau, all_z1, all_z2, offset=b)
    res = ntxent_loss_and_grad(*(t.detach() for t in (z1, z2)), tau, all_z1.detach(), all_z2.detach(),
                               offset=b, block=block)
    torch.testing.assert_close(res.loss, loss.detach(), **TIGHT)
    for got, want in zip(res[1:], grads, strict=True):
        torch.testing.assert_close(got, want, **TIGHT)


def test_differentiable_form_and_size_dispatch():
    z1, z2 = _leaves((9, 4), (9, 4), seed=3)
    loss, grads = _dense(z1, z2, 0.5)
    blockwise = ntxent_loss(z1, z2, 0.5, block=4)  # 2N = 18 > 4: the blockwise path
    assert blockwise.grad_fn is not None and "Blockwise" in type(blockwise.grad_fn).__name__
    assert "Blockwise" not in type(ntxent_loss(z1, z2, 0.5, block=18).grad_fn).__name__
    torch.testing.assert_close(blockwise, loss, **TIGHT)
    for got, want in zip(torch.autograd.grad(3.0 * blockwise, [z1, z2]), grads, strict=True):
        torch.testing.assert_close(got, 3.0 * want, **TIGHT)
    with torch.no_grad():
        torch.testing.assert_close(ntxent_loss(z1, z2, 0.5, block=4), loss.detach(), **TIGHT)


def test_zero_embedding_follows_normalize_eps():
    z1, z2 = _leaves((4, 3), (4, 3), seed=5)
    with torch.no_grad():
        z1[2] = 0.0  # F.normalize clamps its norm to eps: a different gradient formula
    _, (g1, g2) = _dense(z1, z2, 0.4)
    res = ntxent_loss_and_grad(z1.detach(), z2.detach(), 0.4, block=3)
    torch.testing.assert_close(res.z1, g1, rtol=1e-9, atol=0)
    torch.testing.assert_close(res.z2, g2, **TIGHT)


def test_cached_backward_with_blockwise_loss_equals_dense_loss():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6)).double().train()
    blockwise = copy.deepcopy(dense)
    x = torch.randn(26, 3, 6, 6, dtype=torch.float64)  # 2 views x 13 images, chunks of 5

    def loss_fn(block):
        return lambda z: ntxent_loss(*z.chunk(2), 0.2, block=block)

    loss_dense = cached_backward(dense, dense, x, 5, loss_fn(None))
    loss_block = cached_backward(blockwise, blockwise, x, 5, loss_fn(4))
    torch.testing.assert_close(loss_block, loss_dense, **TIGHT)
    for (name, p), q in zip(dense.named_parameters(), blockwise.parameters(), strict=True):
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)
