"""MoCo's shuffle-BN across 2 gloo processes, through the method: with a key encoder without BN, every
key equals the encoder applied directly to its own image, the key batch was permuted across ranks,
and the queue holds both ranks' keys in rank order. (tests/methods/test_moco_wiring.py runs the same
check in a threaded fake world inside `make test`.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # ~8 s of process start-up on 2 cores

B = 8


def keys_worker(rank: int, world: int, out_dir: Path) -> None:
    import torch.nn.functional as F
    from torch import nn

    from sslkit.build import method_defaults
    from sslkit.methods.mocov2 import MoCoV2

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    m = MoCoV2(backbone, 8, {"kind": "mlp", "hidden_dim": 16, "out_dim": 8, "batch_norm": False},
               **method_defaults("mocov2", queue_size=64, momentum=0.9), world_size=world).double()
    fed: list[torch.Tensor] = []
    m.backbone_k.register_forward_pre_hook(lambda mod, args: fed.append(args[0].clone()))
    g = torch.Generator().manual_seed(100 + rank)
    x_q, x_k = (torch.randn(B, 3, 6, 6, generator=g, dtype=torch.float64) for _ in range(2))
    with torch.no_grad():
        direct = F.normalize(m.head_k(m.backbone_k(x_k)), dim=1)
    fed.clear()
    m([x_q, x_k])
    m.after_step(0.0)
    torch.save({"shuffle_bn": m.shuffle_bn, "x": x_k, "fed": fed[0], "direct": direct,
                "queue": m.queue.keys[:2 * B].clone()}, out_dir / f"rank{rank}.pt")


def test_keys_equal_a_direct_computation_after_a_cross_rank_shuffle(ddp) -> None:
    r0, r1 = ddp(keys_worker)
    assert r0["shuffle_bn"] == "ddp"
    assert torch.equal(r0["queue"], r1["queue"])
    torch.testing.assert_close(r0["queue"], torch.cat([r0["direct"], r1["direct"]]), rtol=1e-10, atol=1e-12)
    everything, fed = torch.cat([r0["x"], r1["x"]]).flatten(1), torch.cat([r0["fed"], r1["fed"]]).flatten(1)
    match = (fed[:, None] == everything[None]).all(-1)
    assert bool((match.sum(0) == 1).all()) and bool((match.sum(1) == 1).all())  # a permutation of both batches
    perm = match.float().argmax(1)
    assert bool((perm[:B] >= B).any()) and bool((perm[B:] < B).any())  # some keys were encoded on the other rank
