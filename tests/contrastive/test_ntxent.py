import math

import pytest
import torch
import torch.nn.functional as F

from sslkit.contrastive.ntxent import ntxent_loss


def _by_hand(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        num = math.exp(float(z[i] @ z[j]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(num / den)
    return total / (2 * n)


def test_ntxent_equals_eq1_by_hand():
    torch.manual_seed(1)
    z1, z2 = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    assert math.isclose(float(ntxent_loss(z1, z2, 0.5)), _by_hand(z1, z2, 0.5), rel_tol=1e-10)


def test_ntxent_has_2n_minus_2_negatives():
    # identical views and mutually orthogonal samples: loss = -log(e^{1/t} / (e^{1/t} + (2N-2) e^0))
    n, tau = 4, 0.5
    z = torch.eye(n, dtype=torch.float64)
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + (2 * n - 2)))
    assert math.isclose(float(ntxent_loss(z, z.clone(), tau)), expected, rel_tol=1e-12)


def test_ntxent_matches_lightly_reference():
    from lightly.loss import NTXentLoss

    torch.manual_seed(2)
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    ref = NTXentLoss(temperature=0.2)(z1, z2)
    torch.testing.assert_close(ntxent_loss(z1, z2, 0.2), ref, rtol=1e-5, atol=1e-6)


def test_gathered_form_with_offset_equals_full_batch():
    torch.manual_seed(3)
    z1, z2 = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    full = ntxent_loss(z1, z2, 0.3)
    halves = [ntxent_loss(z1[r * 3:(r + 1) * 3], z2[r * 3:(r + 1) * 3], 0.3, z1, z2, offset=r * 3) for r in range(2)]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, full)


@pytest.mark.parametrize(("n", "gathered", "block", "blockwise"), [
    (4, None, 8, False),   # 2N = 8 anchors and candidates: dense
    (5, None, 8, True),    # 2N = 10 > 8
    (4, None, 7, True),
    (4, None, None, False),
    (2, 6, 8, True),       # 4 anchors, but 2 x 6 = 12 gathered candidates > 8
    (2, 4, 8, False),      # 4 anchors, 8 candidates
    (3, 3, 5, True),
])
def test_the_block_path_runs_exactly_when_anchors_or_candidates_exceed_the_block(monkeypatch, n, gathered, block,
                                                                                  blockwise):
    """Memory is the point of `block`: above it the (2N x 2N) matrix must not be built."""
    import sslkit.contrastive.ntxent as module

    calls = []
    monkeypatch.setattr(module, "ntxent_loss_blockwise", lambda *a, **k: calls.append(a) or torch.zeros(()))
    z1, z2 = torch.randn(n, 16), torch.randn(n, 16)  # D > N: a dimension mix-up shows
    all_z = (None, None) if gathered is None else (torch.randn(gathered, 16), torch.randn(gathered, 16))
    ntxent_loss(z1, z2, 0.5, *all_z, block=block)
    assert len(calls) == int(blockwise)


@pytest.mark.parametrize(("n", "blockwise"), [(512, False), (513, True)])
def test_the_default_block_is_1024_anchors(monkeypatch, n, blockwise):
    """A 1024 x 1024 fp32 block is 4 MiB: batches up to 512 pairs stay dense (and fast)."""
    import sslkit.contrastive.ntxent as module

    calls = []
    monkeypatch.setattr(module, "ntxent_loss_blockwise", lambda *a, **k: calls.append(a) or torch.zeros(()))
    ntxent_loss(torch.randn(n, 4), torch.randn(n, 4), 0.5)
    assert len(calls) == int(blockwise)
