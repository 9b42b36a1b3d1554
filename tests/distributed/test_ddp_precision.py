"""MoCo's DDP shuffle-BN in bf16 and in fp32 across 2 gloo processes, through the engine (issue 19):
`auto` gives bf16 on native-BF16 CPUs and CUDA, and `shuffle_bn=auto` gives ddp with several ranks.
Two engine steps each from the same weights and views; bf16's first loss and keys agree with fp32's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # ~10 s of CPU in 2 processes

B = 8


def precision_worker(rank: int, world: int, out_dir: Path) -> None:
    from torch import nn

    from sslkit.build import method_defaults
    from sslkit.data.base import TensorImageDataset
    from sslkit.data.loader import train_loader
    from sslkit.devices import World
    from sslkit.engine.logger import NullLogger
    from sslkit.engine.loop import FitInputs, LoopSettings, fit
    from sslkit.engine.schedule import build_scheduler
    from sslkit.methods.mocov2 import MoCoV2

    results: dict[str, object] = {}
    for precision in ("32", "bf16"):
        losses: list[float] = []

        class Recorder(NullLogger):
            def log(self, record: dict) -> None:
                losses.append(float(record["loss"]))  # noqa: B023 - used within the iteration

        torch.manual_seed(0)
        encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten())
        m = MoCoV2(encoder, 8, {"kind": "mlp", "hidden_dim": 16, "out_dim": 8, "batch_norm": False},
                   **method_defaults("mocov2", queue_size=4 * B * world, momentum=0.9))
        assert m.shuffle_bn == "ddp"  # auto, with 2 ranks
        g = torch.Generator().manual_seed(0)
        data = TensorImageDataset(torch.randint(0, 256, (4 * B * world, 3, 8, 8), generator=g, dtype=torch.uint8),
                                  torch.zeros(4 * B * world, dtype=torch.long), 1)
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        settings = LoopSettings(epochs=1, total_steps=2, steps_per_epoch=4, log_every=1, checkpoint_every=0,
                                precision=precision)
        torch.manual_seed(1 + rank)
        fit(FitInputs(m, train_loader(data, B * world, world=world, rank=rank, seed=0),
                      lambda x: [x.float() / 255 + 0.1 * torch.randn(x.shape) for _ in range(2)], opt,
                      build_scheduler(opt, {"schedule": "cosine", "warmup_epochs": 0}, 2, 4),
                      World(rank, rank, world, torch.device("cpu")), settings, out_dir / precision, Recorder()))
        results[precision] = {"losses": torch.tensor(losses), "queue": m.queue.keys[:2 * B * world].clone()}
    torch.save(results, out_dir / f"rank{rank}.pt")


def test_ddp_shuffle_bn_trains_in_bf16_and_agrees_with_fp32(ddp) -> None:
    r0, r1 = ddp(precision_worker)
    for precision in ("32", "bf16"):
        assert torch.equal(r0[precision]["losses"], r1[precision]["losses"])  # logged: the mean over ranks
        assert torch.equal(r0[precision]["queue"], r1[precision]["queue"])  # every rank enqueues all keys
        assert torch.isfinite(r0[precision]["losses"]).all() and r0[precision]["queue"].dtype == torch.float32
    # same weights and views at step 1: bf16's loss within 3% of fp32's; its keys point the same way
    torch.testing.assert_close(r0["bf16"]["losses"][0], r0["32"]["losses"][0], rtol=3e-2, atol=0.0)
    cos = torch.nn.functional.cosine_similarity(r0["bf16"]["queue"], r0["32"]["queue"], dim=1)
    assert (cos > 0.98).all(), cos
