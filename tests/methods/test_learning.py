"""Does it learn? A tiny encoder on fixed images with noisy views: the loss starts at ln(K+1), the
value for uninformative embeddings (all K+1 logits equal), and falls within a few dozen SGD steps.
Each run takes well under a second."""

from __future__ import annotations

import math

import pytest
import torch

from sslkit.build import method_defaults
from sslkit.methods.mocov2 import MoCoV2
from sslkit.methods.simclr import SimCLR
from tests.conftest import TinyEncoder

HEAD = {"kind": "mlp", "hidden_dim": 32, "out_dim": 16}
STEPS, TAU = 40, 0.2


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def views(x: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
    return [x + 0.1 * torch.randn(x.shape, generator=g) for _ in range(2)]


def train(method, batches: torch.Tensor, lr: float) -> list[float]:
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(2)
    losses = []
    for step in range(STEPS):
        out = method(views(batches[step % len(batches)], g))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step((step + 1) / STEPS)
        losses.append(float(out.loss.detach()))
    return losses


def test_simclr_starts_at_ln_2n_minus_1_and_learns_a_fixed_batch():
    torch.manual_seed(0)
    n = 32
    m = SimCLR(TinyEncoder(16), 16, HEAD, **method_defaults("simclr", temperature=TAU))
    losses = train(m, torch.rand(1, n, 3, 8, 8, generator=torch.Generator().manual_seed(1)), lr=0.03)
    chance = math.log(2 * n - 1)  # 1 positive and 2N-2 negatives
    assert abs(losses[0] - chance) < 0.05 * chance, (losses[0], chance)
    assert sum(losses[-5:]) / 5 < 0.75 * losses[0], losses


def test_moco_starts_at_ln_k_plus_1_and_learns_fixed_images():
    """4 fixed batches in turn with a queue of 2 batches: the queue never holds the positives' own keys."""
    torch.manual_seed(0)
    n, k = 16, 32
    m = MoCoV2(TinyEncoder(16), 16, HEAD,
               **method_defaults("mocov2", temperature=TAU, queue_size=k, momentum=0.9, split_bn_groups=4))
    batches = torch.rand(4, n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # fill the queue with real keys (of the last 2 batches) instead of random vectors
        for x in batches[-(k // n):]:
            m([x, x])
            m.after_step(0.0)
    losses = train(m, batches, lr=0.1)
    chance = math.log(k + 1)
    assert abs(losses[0] - chance) < 0.05 * chance, (losses[0], chance)
    assert min(losses) < 0.6 * chance, losses
