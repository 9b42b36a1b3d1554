"""Gradient caching (Gao et al. 2021): the same parameter gradients and BN statistics as embedding the
same chunks with a graph and backpropagating the loss directly."""

from __future__ import annotations

import copy

import torch
from torch import nn

from sslkit.build import method_defaults
from sslkit.contrastive.grad_cache import cached_backward, embed_chunks
from sslkit.contrastive.ntxent import ntxent_loss
from sslkit.methods.simclr import SimCLR

TAU = 0.2
HEAD = {"kind": "mlp", "hidden_dim": 32, "out_dim": 8, "num_layers": 2, "batch_norm": True}


class SmallResNet(nn.Module):
    """conv-BN-ReLU stem, one residual block with BN, pooling, a dropout projection (RNG in the graph)."""

    def __init__(self, width: int = 8, out: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(width))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(width, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        return self.head(h.mean(dim=(2, 3)))


def loss_fn(z: torch.Tensor) -> torch.Tensor:
    z1, z2 = z.chunk(2)
    return ntxent_loss(z1, z2, TAU)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()}


def test_cached_backward_equals_direct_backward_with_the_same_chunks():
    torch.manual_seed(0)
    direct = SmallResNet().double().train()
    cached = copy.deepcopy(direct)
    initial = buffers(direct)
    x = torch.randn(24, 3, 8, 8, dtype=torch.float64)  # 2 views x 12 images, chunks of 5 (uneven)

    torch.manual_seed(1)
    loss_direct = loss_fn(embed_chunks(direct, x, 5))
    loss_direct.backward()
    torch.manual_seed(1)
    loss_cached = cached_backward(cached, cached, x, 5, loss_fn)

    torch.testing.assert_close(loss_cached, loss_direct.detach(), rtol=1e-12, atol=0)
    g_direct, g_cached = grads(direct), grads(cached)
    assert all(g.abs().sum() > 0 for g in g_direct.values())
    for name in g_direct:
        torch.testing.assert_close(g_cached[name], g_direct[name], rtol=1e-9, atol=1e-12, msg=name)
    # BN running statistics: updated once per chunk, exactly as the direct path (not twice)
    b_direct, b_cached = buffers(direct), buffers(cached)
    for name in b_direct:
        assert torch.equal(b_cached[name], b_direct[name]), name
    assert int(b_direct["stem.1.num_batches_tracked"]) == 5  # ceil(24 / 5) chunks, counted once
    assert not torch.equal(b_direct["stem.1.running_mean"], initial["stem.1.running_mean"])


def test_simclr_chunked_step_equals_direct_computation_with_the_same_chunks():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    chunked = SimCLR(backbone, 16, HEAD, **method_defaults("simclr", temperature=TAU, chunk_size=4)).double().train()
    direct = copy.deepcopy(chunked)
    direct.chunk_size, direct.custom_backward = None, False
    v1, v2 = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randn(6, 3, 8, 8, dtype=torch.float64)

    out = chunked([v1, v2])
    assert out.backward_done
    order = torch.tensor([0, 1, 2, 3, 4, 5, 6, 8, 10, 7, 9, 11])  # chunks: view 1 of images 0-2, 3-5; view 2 of
    # images 0, 2, 4 and 1, 3, 5 (never both views of an image in one BN chunk)
    loss = direct._loss(embed_chunks(direct._embed, torch.cat([v1, v2])[order], 3)[torch.argsort(order)])
    loss.backward()

    torch.testing.assert_close(out.loss, loss.detach(), rtol=1e-12, atol=0)
    g_direct, g_chunked = grads(direct), grads(chunked)
    assert g_direct.keys() == g_chunked.keys() and len(g_direct) > 4
    for name in g_direct:
        torch.testing.assert_close(g_chunked[name], g_direct[name], rtol=1e-9, atol=1e-12, msg=name)
    for name, value in buffers(direct).items():
        assert torch.equal(buffers(chunked)[name], value), name

    # and the direct computation differs from the unchunked one (BN sees other batches): the test
    # compares like with like rather than something trivially equal
    whole = copy.deepcopy(direct)
    whole.zero_grad()
    whole._loss(whole._embed(torch.cat([v1, v2]))).backward()
    assert not torch.allclose(grads(whole)["backbone.0.weight"], g_direct["backbone.0.weight"])
