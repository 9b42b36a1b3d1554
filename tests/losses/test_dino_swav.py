"""DINO and SwAV against lightly's DINOLoss / SwaVLoss / sinkhorn (value and gradient), by hand, and
Sinkhorn's marginals."""

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss, SwaVLoss
from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn

from sslkit.losses import dino_loss, sinkhorn, swapped_prediction, swav_loss, teacher_temperature, update_center
from tests.threaded_world import ThreadedWorld

K = 10


def _crops(seed: int, n_crops: int, n: int = 6, k: int = K) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, k, generator=g, dtype=torch.float64).requires_grad_() for _ in range(n_crops)]


def _same_grad(ours, ref, inputs, rtol=1e-9):
    for a, b in zip(torch.autograd.grad(ours, inputs, retain_graph=True),
                    torch.autograd.grad(ref, inputs, retain_graph=True), strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("n_local", [0, 4])
def test_dino_loss_and_center_equal_lightly(n_local):
    teacher = [t.detach() for t in _crops(0, 2)]
    student = _crops(1, 2 + n_local)
    center = torch.randn(K, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref_fn = DINOLoss(output_dim=K, warmup_teacher_temp=0.0625, teacher_temp=0.0625, student_temp=0.1,
                      center_momentum=0.9).double()
    ref_fn.center.copy_(center.view(1, 1, K))
    ref = ref_fn(teacher, student, teacher_temp=0.0625)
    ours = dino_loss(teacher, student, center, teacher_temp=0.0625)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    _same_grad(ours, ref, student)
    new = update_center(center, teacher)  # lightly updated its center inside forward
    torch.testing.assert_close(new, ref_fn.center.view(K), rtol=1e-12, atol=1e-12)
    assert not torch.equal(new, center)
    torch.testing.assert_close(update_center(new, teacher), 0.9 * new + 0.1 * torch.cat(teacher).mean(0))


def test_dino_loss_by_hand_skips_same_view_pairs():
    teacher = [t.detach() for t in _crops(3, 2)]
    student = _crops(4, 5)
    center, tt = torch.zeros(K, dtype=torch.float64), 0.04
    total, terms = 0.0, 0
    for i, t in enumerate(teacher):
        p_t = F.softmax((t - center) / tt, dim=1)
        for v, s in enumerate(student):
            if v == i:
                continue
            total = total + (-(p_t * F.log_softmax(s / 0.1, dim=1)).sum(1)).mean()
            terms += 1
    assert terms == 2 * 5 - 2
    torch.testing.assert_close(dino_loss(teacher, student, center, tt), total / terms, rtol=1e-12, atol=1e-12)


def test_dino_teacher_gets_no_gradient_and_center_is_distributed_mean(monkeypatch):
    teacher, student = _crops(5, 2), _crops(6, 2)
    dino_loss(teacher, student, torch.zeros(K, dtype=torch.float64)).backward()
    assert all(t.grad is None for t in teacher)
    rows = [t.detach() for t in _crops(7, 2, n=8)]
    expected = update_center(torch.zeros(K, dtype=torch.float64), rows)

    def rank_center(rank: int) -> torch.Tensor:
        return update_center(torch.zeros(K, dtype=torch.float64), [t[rank * 4:(rank + 1) * 4] for t in rows])

    for c in ThreadedWorld(2).run(rank_center, monkeypatch):
        torch.testing.assert_close(c, expected, rtol=1e-12, atol=1e-12)


def test_teacher_temperature_warmup_equals_lightly_schedule():
    ref = DINOLoss(output_dim=4, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30)
    for epoch in range(40):
        expected = float(ref.teacher_temp_schedule[epoch]) if epoch < 30 else 0.07
        assert teacher_temperature(epoch, 30) == pytest.approx(expected, rel=1e-6)
    assert teacher_temperature(0, 0) == 0.07 and teacher_temperature(0, 1) == 0.04


def test_sinkhorn_equals_lightly_and_its_marginals_hold():
    scores = F.normalize(torch.randn(32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8)), dim=1)
    q = sinkhorn(scores)
    torch.testing.assert_close(q, lightly_sinkhorn(scores, iterations=3, epsilon=0.05), rtol=1e-10, atol=1e-12)
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(32, dtype=q.dtype), rtol=1e-12, atol=1e-12)  # per sample
    # per prototype: B/K once converged; each iteration brings the row sums closer to it
    imbalance = [float((sinkhorn(scores, iterations=i).sum(dim=0) - 32 / 8).abs().max()) for i in range(4)]
    assert imbalance[0] > imbalance[1] > imbalance[2] > imbalance[3]
    q_conv = sinkhorn(scores, iterations=200)
    torch.testing.assert_close(q_conv.sum(dim=0), torch.full((8,), 32 / 8, dtype=q.dtype), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(q.sum(dim=0), q_conv.sum(dim=0))  # 3 iterations are not the fixed point


def test_sinkhorn_is_stable_where_exp_overflows_and_float16_input_is_fine():
    scores = F.normalize(torch.randn(16, 5, generator=torch.Generator().manual_seed(9)), dim=1).half()
    assert not torch.isfinite(torch.exp(scores / 0.05)).all()  # exp(1 / eps) overflows float16
    q = sinkhorn(scores)
    assert q.dtype == torch.float16 and torch.isfinite(q).all()
    torch.testing.assert_close(q.float(), sinkhorn(scores.double()).float(), rtol=2e-3, atol=2e-3)


def test_sinkhorn_on_two_ranks_balances_the_global_batch(monkeypatch):
    scores = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    full = sinkhorn(scores)
    halves = ThreadedWorld(2).run(lambda r: sinkhorn(scores[r * 8:(r + 1) * 8]), monkeypatch)
    torch.testing.assert_close(torch.cat(halves), full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("n_low", "queue"), [(0, False), (4, False), (2, True)])
def test_swav_loss_equals_lightly(n_low, queue):
    crops = [F.normalize(c, dim=1) for c in _crops(11, 2 + n_low)]  # scores: cosine similarities
    leaves = crops
    queue_scores = [F.normalize(q, dim=1).detach() for q in _crops(12, 2, n=12)] if queue else None
    ours = swav_loss(crops[:2], crops[2:], queue_scores)
    ref = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)(crops[:2], crops[2:], queue_scores)
    torch.testing.assert_close(ours, ref.reshape(()), rtol=1e-10, atol=1e-12)
    _same_grad(ours, ref.sum(), leaves)


def test_swav_loss_by_hand():
    crops = [c.detach() for c in _crops(13, 3)]
    codes = [sinkhorn(c) for c in crops[:2]]

    def ce(z, q):
        return -(q * F.log_softmax(z / 0.1, dim=1)).sum(1).mean()

    expected = ((ce(crops[1], codes[0]) + ce(crops[2], codes[0])) / 2
                + (ce(crops[0], codes[1]) + ce(crops[2], codes[1])) / 2) / 2
    torch.testing.assert_close(swav_loss(crops[:2], crops[2:]), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(swapped_prediction(crops[1], codes[0]), ce(crops[1], codes[0]))


def test_sinkhorn_codes_carry_no_graph_whatever_the_caller_passes():
    """The codes are targets: no gradient flows through them even if the scores have one (Caron et al.
    2020, Sec. 3.1: the codes are computed without back-propagating)."""
    scores = torch.randn(6, 4, requires_grad=True)
    codes = sinkhorn(scores @ torch.eye(4))
    assert not codes.requires_grad and codes.grad_fn is None


def test_swav_loss_takes_one_high_resolution_crop_and_refuses_fewer_crops_or_mismatched_queues():
    crops = [c.detach() for c in _crops(14, 3)]
    one_high = swav_loss(crops[:1], crops[1:2])  # one code crop, predicted from the other crop only
    torch.testing.assert_close(one_high, swapped_prediction(crops[1], sinkhorn(crops[0])), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="at least 1 high-resolution crop and 2 crops, got 0 and 2"):
        swav_loss([], crops[:2])
    with pytest.raises(ValueError, match="at least 1 high-resolution crop and 2 crops, got 1 and 1"):
        swav_loss(crops[:1])
    for n_queues in (1, 3):
        with pytest.raises(ValueError, match=f"one queue per high-resolution crop: {n_queues} queues for 2 crops"):
            swav_loss(crops[:2], crops[2:], [crops[0]] * n_queues)
