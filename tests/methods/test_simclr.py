import torch

from sslkit.contrastive.ntxent import ntxent_loss
from sslkit.methods.simclr import SimCLR

HEAD = {"kind": "mlp", "hidden_dim": 32, "out_dim": 8, "num_layers": 2}


def test_both_views_receive_gradient(tiny_encoder):
    m = SimCLR(tiny_encoder, 16, HEAD, temperature=0.5)
    x1 = torch.randn(4, 3, 8, 8, requires_grad=True)
    x2 = torch.randn(4, 3, 8, 8, requires_grad=True)
    m([x1, x2]).loss.backward()
    assert x1.grad is not None and x1.grad.abs().sum() > 0
    assert x2.grad is not None and x2.grad.abs().sum() > 0


def test_loss_is_ntxent_of_the_projections(tiny_encoder):
    m = SimCLR(tiny_encoder, 16, HEAD, temperature=0.5)
    x1, x2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    out = m([x1, x2])
    z = m.head(m.backbone(torch.cat([x1, x2])))
    torch.testing.assert_close(out.loss, ntxent_loss(z[:4], z[4:], 0.5))


def test_chunked_step_runs_backward_itself(tiny_encoder):
    m = SimCLR(tiny_encoder, 16, HEAD, temperature=0.5, chunk_size=4)
    out = m([torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)])
    assert out.backward_done and m.custom_backward
    assert all(p.grad is not None for p in m.parameters())
