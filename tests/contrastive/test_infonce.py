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
    assert math.isclose(float(infonce_loss(q, k, queue, tau)), expected / 4, rel_tol=1e-10)


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
    assert math.isclose(float(infonce_loss(q, q.clone(), queue, t)), expected, rel_tol=1e-9)


def test_gradient_flows_only_into_query():
    q = _unit(2, 4).requires_grad_(True)
    k, queue = _unit(2, 4).requires_grad_(True), _unit(5, 4)
    infonce_loss(q, k.detach(), queue, 0.1).backward()
    assert q.grad is not None and k.grad is None
