"""MoCo under 2 gloo processes: both ranks hold the same queue, filled with the keys of both ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.distributed

QUEUE, BATCH, STEPS, DIM = 64, 8, 5, 8  # 5 pushes of 2 x 8 keys: the queue wraps once


def tiny_moco(world: int = 1) -> nn.Module:
    from sslkit.build import method_defaults
    from sslkit.methods.mocov2 import MoCoV2

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = {"kind": "mlp", "hidden_dim": 16, "out_dim": DIM}
    return MoCoV2(backbone, 8, head, **method_defaults("mocov2", queue_size=QUEUE, momentum=0.9), world_size=world)


def queue_worker(rank: int, world: int, out_dir: Path) -> None:
    from sslkit.devices import World
    from sslkit.engine.parallel import wrap

    method = tiny_moco(world)  # the app passes the World's size at construction
    model = wrap(method, World(rank, rank, world, torch.device("cpu")))  # what engine.fit trains
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    data = torch.Generator().manual_seed(100 + rank)  # different images on each rank
    keys = []
    for step in range(STEPS):
        views = [torch.randn(BATCH, 3, 8, 8, generator=data) for _ in range(2)]
        out = model(views)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        keys.append(method._pending[0].clone())  # this rank's keys, enqueued by after_step
        method.after_step((step + 1) / STEPS)
    torch.save({"shuffle_bn": method.shuffle_bn, "keys": torch.stack(keys),
                "queue": method.queue.keys.clone(), "ptr": int(method.queue.ptr),
                "query": {k: v.clone() for k, v in method.backbone.named_parameters()},
                "key_encoder": {k: v.clone() for k, v in method.backbone_k.named_parameters()}},
               out_dir / f"rank{rank}.pt")


def test_ranks_share_a_queue_of_all_ranks_keys(ddp) -> None:
    r0, r1 = ddp(queue_worker)
    assert r0["shuffle_bn"] == r1["shuffle_bn"] == "ddp"  # auto picks shuffle-BN across ranks
    assert not torch.allclose(r0["keys"], r1["keys"])  # the ranks really saw different images
    assert torch.equal(r0["queue"], r1["queue"]) and r0["ptr"] == r1["ptr"] == (STEPS * 2 * BATCH) % QUEUE

    # Each step pushed [rank 0's keys, rank 1's keys]; the queue holds the newest QUEUE of them, FIFO.
    pushed = torch.cat([torch.cat([r0["keys"][s], r1["keys"][s]]) for s in range(STEPS)])
    newest = pushed[-QUEUE:]
    slots = (torch.arange(len(pushed) - QUEUE, len(pushed))) % QUEUE
    expected = torch.empty_like(r0["queue"])
    expected[slots] = newest
    torch.testing.assert_close(r0["queue"], expected, rtol=0, atol=0)
    last = (torch.arange(2 * BATCH) + r0["ptr"] - 2 * BATCH) % QUEUE  # the last step's rows
    assert torch.equal(r0["queue"][last[:BATCH]], r0["keys"][-1])
    assert torch.equal(r0["queue"][last[BATCH:]], r1["keys"][-1])

    for name in ("query", "key_encoder"):  # DDP kept the encoders in step, and so the EMA copies
        for k, v in r0[name].items():
            torch.testing.assert_close(v, r1[name][k], msg=f"{name}.{k} differs between ranks")
