"""The evaluation and gradient-caching paths on a CUDA device (skipped without one)."""

from __future__ import annotations

import copy

import pytest
import torch

from sslkit.contrastive.grad_cache import cached_backward, embed_chunks
from sslkit.data.base import TensorImageDataset
from sslkit.evaluation.features import backbone_features
from sslkit.evaluation.linear import FastSettings, ProtocolSettings, fast_probe, snapshot, train_protocol
from tests.conftest import TinyEncoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")
DATA = {"name": "toy", "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}


def images(n: int = 64) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = torch.randint(0, 40, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    x += (y * 90).to(torch.uint8).view(-1, 1, 1, 1)
    return TensorImageDataset(x, y, 3)


def test_features_on_cuda_match_the_cpu():
    torch.manual_seed(0)
    encoder = TinyEncoder()
    cpu = backbone_features(encoder, images(), DATA, torch.device("cpu"), 16)
    gpu = backbone_features(copy.deepcopy(encoder).to(CUDA), images(), DATA, CUDA, 16)
    assert gpu.device.type == "cpu"  # features come back to the CPU for FAISS and the cache
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-4)


def test_fast_probe_and_protocol_on_cuda():
    g = torch.Generator().manual_seed(0)
    centers = 5 * torch.randn(4, 32, generator=g)
    y = torch.randint(0, 4, (2000,), generator=g)
    x = centers[y] + torch.randn(2000, 32, generator=g)
    out = fast_probe(x[:1600], y[:1600], x[1600:], y[1600:], 4, FastSettings(epochs=10), CUDA)
    assert out["top1"] > 95.0

    torch.manual_seed(0)
    encoder = TinyEncoder().to(CUDA)
    before = snapshot(encoder)
    settings = ProtocolSettings(epochs=2, lr=1.0, batch_size=16)
    fc, loss = train_protocol(encoder, images(), DATA, 3, settings, CUDA)
    assert fc.weight.device.type == "cuda" and loss == loss
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def test_cached_backward_with_cuda_dropout_equals_direct():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(0.3),
                              torch.nn.Linear(8, 8)).double().to(CUDA)
    other = copy.deepcopy(net)
    x = torch.randn(16, 3, 8, 8, dtype=torch.float64, device=CUDA)

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        from sslkit.contrastive.ntxent import ntxent_loss

        return ntxent_loss(*z.chunk(2), 0.2)

    torch.cuda.manual_seed(1)
    loss_fn(embed_chunks(net, x, 3)).backward()
    torch.cuda.manual_seed(1)
    cached_backward(other, other, x, 3, loss_fn)
    for (name, a), b in zip(net.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-12, msg=name)
    for a, b in zip(net.buffers(), other.buffers(), strict=True):
        assert torch.equal(a, b)
