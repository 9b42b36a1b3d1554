import pytest
import torch
from torch import nn

from sslkit.build import method_defaults
from sslkit.contrastive.ntxent import ntxent_loss
from sslkit.errors import ConfigError
from sslkit.methods.simclr import SimCLR, bn_chunks

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


def test_bn_chunks_never_hold_both_views_of_an_image():
    n = 10  # rows 0..9 are view 1 of images 0..9, rows 10..19 view 2
    chunks = [c.tolist() for c in bn_chunks(n, 3)]
    assert chunks == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9], [10, 14, 18], [11, 15, 19], [12, 16], [13, 17]]
    assert sorted(r for c in chunks for r in c) == list(range(2 * n))
    for c in chunks:
        assert len({r % n for r in c}) == len(c) <= 3  # at most C views, never two of one image


def test_a_positive_shares_its_bn_chunk_with_no_more_negatives_than_any_view():
    """Batch 8192 in chunks of 256 (Table 2): the positive's chunk holds one view of 256 images, and
    only 8 of them are also in the anchor's chunk, as for every other view-2 chunk (no signature)."""
    n = 8192
    chunks = bn_chunks(n, 256)
    assert len(chunks) == 64 and {len(c) for c in chunks} == {256}
    images = [set((c % n).tolist()) for c in chunks]
    first, second = images[:32], images[32:]
    overlaps = {len(a & b) for a in first for b in second}
    assert overlaps == {8}  # every view-1 chunk meets every view-2 chunk in n / m^2 images
    assert all(not (set(c.tolist()) & {r + n for r in c.tolist()}) for c in chunks)


def test_batch_of_one_chunk_size_still_splits_the_views():
    """Batch 256 at chunk 256 uses the same regime as batch 8192: BN over 256 views of one kind."""
    assert [c.tolist() for c in bn_chunks(4, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [c.tolist() for c in bn_chunks(3, 4)] == [[0, 1, 2], [3, 4, 5]]


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


@pytest.mark.parametrize("batch", [6, 3])  # above the chunk (gradient caching) and within it (direct)
def test_bn_never_sees_both_views_of_an_image_in_one_pass(batch):
    enc = RecordingEncoder()
    m = SimCLR(enc, 4, HEAD, **method_defaults("simclr", temperature=0.5, chunk_size=3))
    ids = torch.arange(2 * batch, dtype=torch.float32).view(2 * batch, 1, 1, 1).expand(2 * batch, 3, 2, 2)
    m([ids[:batch].clone(), ids[batch:].clone()])  # image i: view 1 is row i, view 2 is row batch + i
    calls = [sorted(c) for c in enc.calls]
    expected = [c.tolist() for c in bn_chunks(batch, 3)]
    assert all(len({r % batch for r in c}) == len(c) <= 3 for c in calls)  # never both views of an image
    if batch == 6:
        assert calls[:4] == expected == [[0, 1, 2], [3, 4, 5], [6, 8, 10], [7, 9, 11]]  # pass 1 (no graph)
        assert calls[4:] == calls[:4]  # pass 2 (with graph) sees the same chunks
    else:
        assert calls == expected == [[0, 1, 2], [3, 4, 5]]


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
    # reference by hand: BN over view 1 of images 0-2, of 3-5, view 2 of images 0,2,4 and of 1,3,5
    e = direct._embed
    z1 = torch.cat([e(v1[:3]), e(v1[3:])])
    za, zb = e(v2[0::2]), e(v2[1::2])
    z2 = torch.stack([za[0], zb[0], za[1], zb[1], za[2], zb[2]])
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


def test_check_params_bounds_chunks_and_temperature():
    SimCLR.check_params({"chunk_size": 1})  # one image per chunk is allowed (a batch of one pair)
    SimCLR.check_params({"chunk_size": None, "temperature": 0.01})
    with pytest.raises(ConfigError, match="method.chunk_size=0 is invalid"):
        SimCLR.check_params({"chunk_size": 0})
    for t in (0.0, -0.5):
        with pytest.raises(ConfigError, match=f"method.temperature={t} is invalid"):
            SimCLR.check_params({"temperature": t})
