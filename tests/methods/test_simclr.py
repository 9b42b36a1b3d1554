import torch
from torch import nn

from sslkit.build import method_defaults
from sslkit.contrastive.ntxent import ntxent_loss
from sslkit.methods.simclr import SimCLR, paired_chunk_order

HEAD = {"kind": "mlp", "hidden_dim": 32, "out_dim": 8, "num_layers": 2}


def test_both_views_receive_gradient(tiny_encoder):
    m = SimCLR(tiny_encoder, 16, HEAD, **method_defaults("simclr", temperature=0.5))
    x1 = torch.randn(4, 3, 8, 8, requires_grad=True)
    x2 = torch.randn(4, 3, 8, 8, requires_grad=True)
    m([x1, x2]).loss.backward()
    assert x1.grad is not None and x1.grad.abs().sum() > 0
    assert x2.grad is not None and x2.grad.abs().sum() > 0


def test_loss_is_ntxent_of_the_projections(tiny_encoder):
    m = SimCLR(tiny_encoder, 16, HEAD, **method_defaults("simclr", temperature=0.5))
    x1, x2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    out = m([x1, x2])
    z = m.head(m.backbone(torch.cat([x1, x2])))
    torch.testing.assert_close(out.loss, ntxent_loss(z[:4], z[4:], 0.5))


def test_chunked_step_runs_backward_itself(tiny_encoder):
    m = SimCLR(tiny_encoder, 16, HEAD, **method_defaults("simclr", temperature=0.5, chunk_size=4))
    out = m([torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)])
    assert out.backward_done and m.custom_backward
    assert all(p.grad is not None for p in m.parameters())


def test_paired_chunk_order_puts_both_views_of_each_image_in_one_chunk():
    order = paired_chunk_order(5, 2)  # rows 0..4 are view 1 of images 0..4, rows 5..9 view 2
    assert order.tolist() == [0, 1, 5, 6, 2, 3, 7, 8, 4, 9]
    assert sorted(order.tolist()) == list(range(10))


class RecordingEncoder(nn.Module):
    """Records which rows reach the backbone together (each input row carries its id in pixel 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(1, 4)
        self.calls: list[list[int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x[:, 0, 0, 0].round().long().tolist())
        return self.bn(self.fc(x[:, :1, 0, 0]))


def test_chunks_hold_both_views_of_their_images_like_per_device_bn():
    enc = RecordingEncoder()
    m = SimCLR(enc, 4, HEAD, **method_defaults("simclr", temperature=0.5, chunk_size=3))
    ids = torch.arange(12, dtype=torch.float32).view(12, 1, 1, 1).expand(12, 3, 2, 2)
    m([ids[:6].clone(), ids[6:].clone()])  # image i: view 1 is row i, view 2 is row 6 + i
    chunks = [sorted(c) for c in enc.calls]
    assert chunks[:2] == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10, 11]]  # pass 1 (no graph)
    assert chunks[2:] == chunks[:2]  # pass 2 (with graph) sees the same chunks


def test_chunked_gradients_equal_per_chunk_bn_but_not_whole_batch_bn(tiny_encoder):
    """Gradient caching reproduces per-chunk BN exactly; with BN it is NOT the full-batch gradient."""
    import copy

    torch.manual_seed(0)
    chunked = SimCLR(tiny_encoder, 16, HEAD, **method_defaults("simclr", temperature=0.5, chunk_size=3)).double()
    direct = copy.deepcopy(chunked)
    direct.chunk_size, direct.custom_backward = None, False
    whole = copy.deepcopy(direct)
    v1, v2 = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randn(6, 3, 8, 8, dtype=torch.float64)
    chunked([v1, v2])
    # reference by hand: two "devices", each with BN over both views of its 3 images
    z = [direct._embed(torch.cat([v1[s:s + 3], v2[s:s + 3]])) for s in (0, 3)]
    z1, z2 = torch.cat([z[0][:3], z[1][:3]]), torch.cat([z[0][3:], z[1][3:]])
    ntxent_loss(z1, z2, 0.5).backward()
    whole([v1, v2]).loss.backward()
    for (name, p), q in zip(chunked.named_parameters(), direct.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)
    rel = (chunked.backbone.net[0].weight.grad - whole.backbone.net[0].weight.grad).norm() \
        / whole.backbone.net[0].weight.grad.norm()
    assert rel > 0.01  # per-chunk BN changes the gradient: "same gradients" holds only per chunk


def test_ntxent_logits_are_fp32_under_bf16_autocast(tiny_encoder, monkeypatch):
    import sslkit.methods.simclr as simclr_module

    seen = []

    def spy(z1, z2, tau, *args, **kwargs):
        seen.append((z1.dtype, torch.is_autocast_enabled("cpu")))
        return ntxent_loss(z1, z2, tau, *args, **kwargs)

    monkeypatch.setattr(simclr_module, "ntxent_loss", spy)
    m = SimCLR(tiny_encoder, 16, HEAD, **method_defaults("simclr", temperature=0.5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = m._embed(torch.randn(4, 3, 8, 8))
        assert z.dtype == torch.bfloat16  # the encoder runs in bf16 ...
        loss = m._loss(z)
    assert seen == [(torch.float32, False)] and loss.dtype == torch.float32  # ... the loss in fp32
