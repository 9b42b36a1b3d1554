import math

import torch
import torch.nn.functional as F

from sslkit.contrastive.infonce import infonce_logits, infonce_loss


def _unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def test_infonce_matches_minus_log_softmax_of_eq1():
    torch.manual_seed(0)
    q, k, queue, tau = _unit(4, 8), _unit(4, 8), _unit(10, 8), 0.2
    expected = 0.0
    for i in range(4):  # -log( exp(q.k+/t) / (exp(q.k+/t) + sum exp(q.k-/t)) ), by hand
        pos = math.exp(float(q[i] @ k[i]) / tau)
        neg = sum(math.exp(float(q[i] @ queue[j]) / tau) for j in range(10))
        expected += -math.log(pos / (pos + neg))
    assert math.isclose(float(infonce_loss(q, k, queue, tau)[0]), expected / 4, rel_tol=1e-10)


def test_logits_layout_positive_first():
    q, k, queue = _unit(3, 5), _unit(3, 5), _unit(7, 5)
    logits = infonce_logits(q, k, queue, 0.5)
    assert logits.shape == (3, 8)
    torch.testing.assert_close(logits[:, 0], (q * k).sum(1) / 0.5)
    torch.testing.assert_close(logits[:, 1:], q @ queue.t() / 0.5)


def test_perfect_key_loss_in_closed_form():
    q = torch.eye(4, dtype=torch.float64)
    queue = -q  # per query: one negative at similarity -1, three orthogonal (similarity 0)
    t = 0.07
    expected = math.log(1 + (3 + math.exp(-1 / t)) / math.exp(1 / t))
    assert math.isclose(float(infonce_loss(q, q.clone(), queue, t)[0]), expected, rel_tol=1e-9)


def _reference_loss(q, k, queue, tau):
    """Eq. 1 written out: -(q.k+/t) + log(exp(q.k+/t) + sum_j exp(q.k_j/t)), averaged over queries."""
    pos = (q * k).sum(1) / tau
    neg = q @ queue.t() / tau
    return (torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1) - pos).mean()


def test_gradients_equal_the_reference_cross_entropy():
    """Through q, k and the queue: a detached positive (or negative) logit changes a gradient."""
    torch.manual_seed(1)
    leaves = [_unit(5, 6), _unit(5, 6), _unit(9, 6)]
    got = [t.clone().requires_grad_(True) for t in leaves]
    ref = [t.clone().requires_grad_(True) for t in leaves]
    infonce_loss(*got, 0.2)[0].backward()
    _reference_loss(*ref, 0.2).backward()
    for name, g, r in zip(("q", "k", "queue"), got, ref, strict=True):
        assert r.grad.abs().sum() > 0
        torch.testing.assert_close(g.grad, r.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_gradient_flows_only_into_query_when_keys_are_detached():
    q = _unit(2, 4).requires_grad_(True)
    k, queue = _unit(2, 4).requires_grad_(True), _unit(5, 4).requires_grad_(True)
    infonce_loss(q, k.detach(), queue.detach(), 0.1)[0].backward()
    assert q.grad is not None and k.grad is None and queue.grad is None
    ref = q.detach().clone().requires_grad_(True)
    _reference_loss(ref, k.detach(), queue.detach(), 0.1).backward()
    torch.testing.assert_close(q.grad, ref.grad, rtol=1e-10, atol=1e-12)


def test_accuracy_is_the_share_of_queries_whose_positive_wins():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # query 0's key is its twin; 1 and 2 are orthogonal
    queue = torch.tensor([[0.6, 0.8]])  # q.queue: 0.6, 0.8, 0.6 against positives 1, 0, 0
    _, acc = infonce_loss(q, k, queue, 0.1)
    assert math.isclose(float(acc), 1 / 3, rel_tol=1e-6)
