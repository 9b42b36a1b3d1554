"""SimCLR's gradient caching gives the same parameter gradients, by value, as embedding the same chunks
with a graph and calling backward on the NT-Xent loss directly."""

from __future__ import annotations

import copy

import torch

from sslkit.build import method_defaults
from sslkit.contrastive.ntxent import ntxent_loss
from sslkit.methods.simclr import SimCLR
from tests.conftest import TinyEncoder

HEAD = {"kind": "mlp", "hidden_dim": 32, "out_dim": 8, "num_layers": 2}


def test_chunked_gradients_equal_the_direct_computation():
    torch.manual_seed(0)
    cached = SimCLR(TinyEncoder(), 16, HEAD, **method_defaults("simclr", temperature=0.5, chunk_size=4)).double()
    direct = copy.deepcopy(cached)
    g = torch.Generator().manual_seed(1)
    x1, x2 = (torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    out = cached([x1, x2])
    assert out.backward_done

    # the chunks the cached step embeds (chunk 4, batch 6: two chunks per view, one view per image):
    # view 1 of images 0-2 and 3-5, view 2 of images 0, 2, 4 and of 1, 3, 5
    emb = direct.head(direct.backbone(x1[:3])), direct.head(direct.backbone(x1[3:]))
    even, odd = direct.head(direct.backbone(x2[0::2])), direct.head(direct.backbone(x2[1::2]))
    z1s = list(emb)
    z2s = [torch.stack([even[0], odd[0], even[1], odd[1], even[2], odd[2]])]
    loss = ntxent_loss(torch.cat(z1s), torch.cat(z2s), direct.temperature)
    loss.backward()
    torch.testing.assert_close(out.loss, loss.detach(), rtol=1e-12, atol=1e-12)
    grads = dict(direct.named_parameters())
    for name, p in cached.named_parameters():
        assert grads[name].grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-9, atol=1e-12, msg=name)
    for name, buf in cached.named_buffers():  # BN statistics updated once per chunk, not twice
        torch.testing.assert_close(buf, dict(direct.named_buffers())[name], rtol=1e-12, atol=0, msg=name)
