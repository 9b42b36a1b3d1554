"""Property tests (hypothesis) over random shapes, temperatures and batch sizes, each against a
formula written out element by element in float64:

* InfoNCE (MoCo eq. 1) and its positive-is-top accuracy;
* NT-Xent (SimCLR eq. 1), dense and block by block, one process and one rank of a gathered batch,
  value and gradient;
* the key queue's pointer, fill count and contents against pushing the keys one at a time into a
  ring of K slots.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sslkit.contrastive.infonce import infonce_loss
from sslkit.contrastive.ntxent import ntxent_loss
from sslkit.contrastive.ntxent_blockwise import ntxent_loss_blockwise
from sslkit.contrastive.queue import KeyQueue

temperatures = st.floats(0.05, 2.0)
seeds = st.integers(0, 2**31 - 1)


def unit(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


@given(n=st.integers(1, 5), k=st.integers(1, 7), d=st.integers(1, 6), t=temperatures, seed=seeds)
def test_infonce_equals_eq1_written_out(n, k, d, t, seed):
    g = torch.Generator().manual_seed(seed)
    q, key, queue = unit(n, d, g), unit(n, d, g), unit(k, d, g)
    loss, acc = infonce_loss(q, key, queue, t)
    terms, top = [], 0
    for i in range(n):
        pos = dot(q[i], key[i]) / t
        negs = [dot(q[i], queue[j]) / t for j in range(k)]
        terms.append(-(pos - math.log(math.exp(pos) + sum(math.exp(v) for v in negs))))
        top += pos >= max(negs)  # argmax: a tie goes to the first column, the positive
    assert float(loss) == pytest.approx(sum(terms) / n, rel=1e-9, abs=1e-12)
    assert float(acc) == pytest.approx(top / n)  # a float32 share


def ntxent_reference(a1: torch.Tensor, a2: torch.Tensor, t: float, rank: int, b: int) -> torch.Tensor:
    """SimCLR eq. 1 over the anchors of `rank` (b per view) against every gathered view, as a sum of terms."""
    z = F.normalize(torch.cat([a1, a2]), dim=1)  # candidates: all views of every rank
    total = a1.shape[0]
    terms = []
    for view in (0, 1):
        for j in range(rank * b, rank * b + b):
            i = view * total + j
            pos = (1 - view) * total + j
            logits = torch.stack([z[i] @ z[c] / t for c in range(2 * total) if c != i])
            own = z[i] @ z[pos] / t
            terms.append(torch.logsumexp(logits, 0) - own)
    return torch.stack(terms).mean()


@given(b=st.integers(1, 4), world=st.integers(1, 3), d=st.integers(1, 5), t=temperatures, block=st.integers(1, 5),
       seed=seeds, data=st.data())
def test_ntxent_dense_and_blockwise_equal_eq1_with_equal_gradients(b, world, d, t, block, seed, data):
    rank = data.draw(st.integers(0, world - 1))
    g = torch.Generator().manual_seed(seed)
    all_z1 = (torch.randn(world * b, d, generator=g, dtype=torch.float64) * 3).requires_grad_()
    all_z2 = (torch.randn(world * b, d, generator=g, dtype=torch.float64) * 3).requires_grad_()
    want = ntxent_reference(all_z1, all_z2, t, rank, b)
    want_grads = torch.autograd.grad(want, [all_z1, all_z2])
    for loss_fn in (lambda *a, **kw: ntxent_loss(*a, **kw, block=None),
                    lambda *a, **kw: ntxent_loss_blockwise(*a, **kw, block=block)):
        z1, z2 = all_z1[rank * b:(rank + 1) * b], all_z2[rank * b:(rank + 1) * b]
        if world == 1:
            got = loss_fn(z1, z2, t)
        else:
            got = loss_fn(z1, z2, t, all_z1=all_z1, all_z2=all_z2, offset=rank * b)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        if world == 1:  # one process: the gradient through both roles, anchor and candidate
            grads = torch.autograd.grad(got, [all_z1, all_z2])
            for a, w in zip(grads, want_grads, strict=True):
                torch.testing.assert_close(a, w, rtol=1e-7, atol=1e-10)


@given(size=st.integers(1, 9), pushes=st.lists(st.integers(1, 20), min_size=1, max_size=6), seed=seeds)
def test_queue_pointer_and_contents_equal_key_by_key_pushes(size, pushes, seed):
    torch.manual_seed(seed)
    queue = KeyQueue(size, 2)
    ring = queue.keys.clone()
    pushed = 0
    for n in pushes:
        keys = torch.arange(pushed, pushed + n, dtype=torch.float32).unsqueeze(1).repeat(1, 2)
        queue.push(keys, gather=False)
        for key in keys:  # the reference: one key at a time into slot (count mod K)
            ring[pushed % size] = key
            pushed += 1
        assert torch.equal(queue.keys, ring)
        assert int(queue.ptr) == pushed % size
        assert int(queue.filled) == min(size, pushed) and int(queue.filled) / queue.size == min(size, pushed) / size


def test_a_queue_needs_at_least_one_slot():
    with pytest.raises(ValueError, match="queue size must be >= 1"):
        KeyQueue(0, 2)
    assert KeyQueue(1, 2).size == 1
