"""MoCo's wiring against direct computations: the query gradient, the EMA over every key-side module
and schedule, and shuffle-BN on one device and on a (threaded, fake) 2-rank world."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslkit.build import method_defaults
from sslkit.config import compose
from sslkit.methods.mocov2 import MoCoV2
from tests.conftest import TinyEncoder
from tests.threaded_world import ThreadedWorld

HEAD = {"kind": "mlp", "hidden_dim": 32, "out_dim": 8, "num_layers": 2, "batch_norm": False}
N = 16  # batch: a permutation of 16 rows is the identity with probability 1/16!


def _moco(backbone: nn.Module | None = None, dim: int = 16, **kw) -> MoCoV2:
    torch.manual_seed(0)
    kw = {"queue_size": 48, "momentum": 0.9, "split_bn_groups": 4, **kw}
    return MoCoV2(backbone or TinyEncoder(dim), dim, HEAD, **method_defaults("mocov2", **kw))


def _batch(seed: int, n: int = N, size: int = 6, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _direct_keys(m: MoCoV2, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(m.head_k(m.backbone_k(x)), dim=1)


def _record_key_inputs(m: MoCoV2) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    m.backbone_k.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen


def _permutation(shuffled: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """perm with shuffled == x[perm]; fails unless `shuffled` holds exactly the rows of `x`."""
    flat_s, flat_x = shuffled.flatten(1), x.flatten(1)
    match = (flat_s[:, None, :] == flat_x[None, :, :]).all(-1)  # (N, N): row j of shuffled is row i of x
    assert bool((match.sum(1) == 1).all()) and bool((match.sum(0) == 1).all()), "not a permutation of the batch"
    return match.float().argmax(1)


def _queue_rows(m: MoCoV2, start: int, n: int) -> torch.Tensor:
    return m.queue.keys[start:start + n]


# ---- the loss and its gradient -------------------------------------------------------------------


def _reference_infonce(q, k, queue, tau):
    pos = (q * k).sum(1) / tau
    logits = torch.cat([pos[:, None], q @ queue.t() / tau], 1)
    return (torch.logsumexp(logits, 1) - pos).mean()


def test_query_gradient_equals_a_reference_cross_entropy():
    m = _moco(shuffle_bn="none")
    x1, x2 = _batch(1), _batch(2)
    queue = m.queue.keys.clone()
    m([x1, x2]).loss.backward()
    got = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
    m.zero_grad(set_to_none=True)
    k = _direct_keys(m, x2)
    q = F.normalize(m.head(m.backbone(x1)), dim=1)
    _reference_infonce(q, k, queue, m.temperature).backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad.abs().sum() > 0, name
            torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_symmetric_loss_is_the_two_directions_by_value():
    m = _moco(shuffle_bn="none", symmetric=True)
    x1, x2 = _batch(1), _batch(2)
    queue = m.queue.keys.clone()
    out = m([x1, x2])
    with torch.no_grad():
        k1, k2 = _direct_keys(m, x2), _direct_keys(m, x1)
        l1 = _reference_infonce(F.normalize(m.head(m.backbone(x1)), dim=1), k1, queue, m.temperature)
        l2 = _reference_infonce(F.normalize(m.head(m.backbone(x2)), dim=1), k2, queue, m.temperature)
    reduction = getattr(m, "symmetric_reduction", "mean")  # a config option in newer versions
    expected = (l1 + l2) / 2 if reduction == "mean" else l1 + l2
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the logged accuracy: the mean of the two directions' top-1 (positive at index 0)
        accs = []
        for x, k in ((x1, k1), (x2, k2)):
            q = F.normalize(m.head(m.backbone(x)), dim=1)
            logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], 1)
            accs.append((logits.argmax(1) == 0).float().mean())
    torch.testing.assert_close(torch.as_tensor(out.logs["acc"]).float(), (accs[0] + accs[1]) / 2)
    m.after_step(0.0)
    torch.testing.assert_close(_queue_rows(m, 0, 2 * N), torch.cat([k1, k2]), rtol=1e-5, atol=1e-6)


# ---- the momentum update -------------------------------------------------------------------------


def _expected_momentum(base: float, progress: float, schedule: str) -> float:
    if schedule == "constant":
        return base
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2  # BYOL Sec. 3.1, written out


def _check_ema(m: MoCoV2, progress: float, base: float, schedule: str) -> None:
    with torch.no_grad():  # the online side moves away from the key side, so the EMA is visible
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    online = dict(m.named_parameters())
    key_side = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    owners = {n.split(".")[0] for n in key_side}
    assert {"backbone_k", "head_k"} <= owners, owners  # both the encoder and the head have momentum copies
    m.after_step(progress)
    mom = _expected_momentum(base, progress, schedule)
    params = dict(m.named_parameters())
    for name, before in key_side.items():
        top, rest = name.split(".", 1)
        source = online[f"{top.removesuffix('_k')}.{rest}"]  # backbone_k.x follows backbone.x
        torch.testing.assert_close(params[name], mom * before + (1 - mom) * source.detach(), msg=name)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_ema_covers_every_key_side_parameter_and_follows_the_schedule(schedule):
    m = _moco(momentum=0.9, momentum_schedule=schedule)
    _check_ema(m, 0.3, 0.9, schedule)


def test_momentum_schedule_from_the_config_reaches_the_update():
    from sslkit.build import build_method

    cfg = compose(["method.momentum_schedule=cosine", "method.momentum=0.8", "method.queue_size=16",
                   "head.hidden_dim=32", "method.shuffle_bn=none"])
    m = build_method(cfg)
    _check_ema(m, 0.5, 0.8, "cosine")  # 0.9 at half-way, where a constant schedule would give 0.8


# ---- shuffle-BN on one device (split BN) --------------------------------------------------------


def test_split_keys_come_back_in_input_order_and_the_key_batch_was_permuted():
    m = _moco()
    assert m.shuffle_bn == "split"
    seen = _record_key_inputs(m)
    m.backbone_k.eval()  # running statistics: each key depends on its own image only
    m.head_k.eval()
    x_q, x_k = _batch(1), _batch(2)
    m([x_q, x_k])
    expected = _direct_keys(m, x_k)
    m.after_step(0.0)
    torch.testing.assert_close(_queue_rows(m, 0, N), expected, rtol=1e-5, atol=1e-6)
    (fed,) = seen[:1]
    perm = _permutation(fed, x_k)
    assert not torch.equal(perm, torch.arange(N)), "the key encoder saw the batch in its original order"


def test_split_keys_use_the_shuffled_groups_statistics():
    """In train mode each key is normalised with the statistics of the group it was shuffled into."""
    m = _moco()
    seen = _record_key_inputs(m)
    x_k = _batch(2)
    m([_batch(1), x_k])
    keys = m._pending[0].clone()
    fed = seen[0]
    perm = _permutation(fed, x_k)
    direct = _direct_keys(m, fed)  # the same encoder (train mode) on the same shuffled batch
    expected = torch.empty_like(direct)
    expected[perm] = direct  # back to input order
    torch.testing.assert_close(keys, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(keys, _direct_keys(m, x_k), atol=1e-3)  # unshuffled groups differ


# ---- shuffle-BN across ranks (the DDP helpers, in a threaded 2-rank world) -----------------------


def _no_bn_backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_ddp_shuffle_keys_equal_a_direct_computation_and_cross_ranks(monkeypatch):
    base = _moco(_no_bn_backbone(), 8, shuffle_bn="ddp", queue_size=64).double()
    world = ThreadedWorld(2)
    xs = [_batch(10 + r, n=8, dtype=torch.float64) for r in range(2)]

    def rank_step(rank: int) -> dict:
        m = copy.deepcopy(base)  # every rank holds the same weights (engine._wrap broadcasts them)
        seen = _record_key_inputs(m)
        m([_batch(20 + rank, n=8, dtype=torch.float64), xs[rank]])
        m.after_step(0.0)  # pushes the keys gathered from both ranks
        return {"fed": seen[0], "queue": m.queue.keys[:16].clone(), "direct": _direct_keys(base, xs[rank])}

    r0, r1 = world.run(rank_step, monkeypatch)
    torch.testing.assert_close(r0["queue"], r1["queue"], rtol=0, atol=0)
    torch.testing.assert_close(r0["queue"], torch.cat([r0["direct"], r1["direct"]]), rtol=1e-10, atol=1e-12)
    everything = torch.cat(xs)
    perm = _permutation(torch.cat([r0["fed"], r1["fed"]]), everything)
    assert not torch.equal(perm, torch.arange(16)), "the key batch was not shuffled"
    assert bool((perm[:8] >= 8).any()) and bool((perm[8:] < 8).any()), "no key crossed ranks"
