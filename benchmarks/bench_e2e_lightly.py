"""End-to-end MoCo v2 throughput on Fashion-MNIST: sslkit's real training path vs lightly's parts.

sslkit:  the unmodified `sslkit.app.train.train(compose([...]))`: in-memory dataset and loader, batched
         augmentation on the main process, engine loop (logging every 10 steps, scheduler, EMA, queue),
         shuffle_bn=auto (= SplitBatchNorm with 8 groups on one device, the method's default) and,
         separately, shuffle_bn=none.
lightly: lightly's MoCo example: torchvision resnet18 (fc removed) + MoCoProjectionHead(512, 2048, 128),
         momentum copies with deactivate_requires_grad / update_momentum, batch_shuffle /
         batch_unshuffle around the key encoder, NTXentLoss(temperature, memory_bank_size=(K, 128)),
         MoCoV2Transform(input_size=32) in a torch DataLoader over in-memory PIL images.
Both:    same images, batch size, queue K, temperature 0.2, momentum 0.99, 32 px, SGD (lr 0.03 x B/256,
         momentum 0.9, wd 1e-4) with a per-step cosine schedule, data loading and augmentation inside
         the timed step.

Memory format: sslkit runs with channels_last=auto. A run as short as this one would keep NCHW without
timing (PROBE_MIN_STEPS), so the bench lets it time the probe that every run of >= 50 steps times, and
prints what it chose (--no-probe-layout: the short run's NCHW, as the figures before 2026-11-30 were).

Interleaving (the machine is shared and noisy): sslkit's `train()` runs as is, but its loader is wrapped
so that after every `--block` sslkit steps one block of `--block` steps of each lightly variant runs in
the same process (fresh DataLoader iterator per block, so a lightly worker never runs during sslkit's
steps). The first step of every block (worker start-up, cache) and a warm-up are excluded; every
candidate gets the same number of timed steps. images/s = batch / step time; ratios are medians of
same-round ratios.

Run:  .venv/bin/python benchmarks/bench_e2e_lightly.py --batch-size 128 --block 5 --rounds 4
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
import torchvision
from _common import machine_info, parse_ints
from torch import nn

FMNIST_MEAN, FMNIST_STD = [0.2860] * 3, [0.3530] * 3


def log(text: str) -> None:
    print(text, file=sys.__stdout__, flush=True)  # also while train()'s own prints are silenced


# ------------------------------------------------------------------------------------------ lightly
class PILImages(torch.utils.data.Dataset):
    """The same Fashion-MNIST images sslkit trains on, as RGB PIL images, with a lightly transform."""

    def __init__(self, images, transform) -> None:
        from PIL import Image

        self.images = [Image.fromarray(img[0].numpy(), mode="L").convert("RGB") for img in images]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), 0


class LightlyMoCo(nn.Module):
    """lightly's MoCo example model (examples/pytorch/moco.py) with MoCo v2's head sizes."""

    def __init__(self) -> None:
        from lightly.models.modules.heads import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        resnet = torchvision.models.resnet18(weights=None)
        resnet.fc = nn.Identity()
        self.backbone = resnet
        self.projection_head = MoCoProjectionHead(512, 2048, 128)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


class LightlyRunner:
    """MoCo v2 from lightly's parts, trained in blocks of steps with a fresh DataLoader iterator each."""

    def __init__(self, args, images, num_workers: int, total_steps: int) -> None:
        from lightly.loss import NTXentLoss
        from lightly.transforms import MoCoV2Transform

        transform = MoCoV2Transform(input_size=args.image_size,
                                    normalize={"mean": FMNIST_MEAN, "std": FMNIST_STD})
        self.dataset = PILImages(images, transform)
        self.args, self.num_workers = args, num_workers
        self.model = LightlyMoCo().train()
        self.criterion = NTXentLoss(temperature=args.temperature, memory_bank_size=(args.queue_size, 128))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=0.03 * args.batch_size / 256, momentum=0.9,
                                         weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))

    def block(self, steps: int) -> list[float]:
        """Seconds of each of `steps` training steps (batch wait + augmentation + step)."""
        from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum

        model, m = self.model, self.args.momentum
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.args.batch_size, shuffle=True,
                                             drop_last=True, num_workers=self.num_workers)
        times, it = [], iter(loader)
        for _ in range(steps):
            start = time.perf_counter()
            (x_query, x_key), _ = next(it)
            update_momentum(model.backbone, model.backbone_momentum, m=m)
            update_momentum(model.projection_head, model.projection_head_momentum, m=m)
            query = model(x_query)
            with torch.no_grad():
                x_key, shuffle = batch_shuffle(x_key)
                key = batch_unshuffle(model.forward_momentum(x_key), shuffle)
            loss = self.criterion(query, key)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.scheduler.step()
            times.append(time.perf_counter() - start)
        del it  # shuts the worker down: nothing runs in the background during the other candidates
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError("lightly run diverged")
        return times


# ----------------------------------------------------------------------------------- interleaving
class Interleaver:
    """Wraps sslkit's training loader; between sslkit blocks it runs one block of every lightly runner."""

    def __init__(self, args, runners: dict[str, LightlyRunner], sslkit_name: str) -> None:
        self.args, self.runners, self.sslkit_name = args, runners, sslkit_name
        self.times: dict[str, list[list[float]]] = {sslkit_name: [], **{name: [] for name in runners}}
        self.current: list[float] = []
        self.rounds_done = 0

    def wrap(self, loader):
        interleaver = self

        class Wrapped:
            batch_sampler = loader.batch_sampler  # what engine.loop.fit reads from its loader

            def __iter__(self):
                return interleaver.iterate(loader)

        return Wrapped()

    def iterate(self, loader):
        block, warmup = self.args.block, self.args.warmup
        step, last = 0, None
        for batch in loader:  # loading the next batch is part of the sslkit step being timed
            now = time.perf_counter()
            if last is not None:
                step += 1
                if step > warmup and (step - warmup - 1) % block:  # not a warm-up or first-of-block step
                    self.current.append(now - last)
                if step == warmup:
                    for runner in self.runners.values():  # lightly's warm-up, not recorded
                        runner.block(warmup)
                elif step > warmup and (step - warmup) % block == 0:
                    self.end_round()
            last = time.perf_counter()
            yield batch

    def end_round(self) -> None:
        self.times[self.sslkit_name].append(self.current)
        self.current = []
        names = list(self.runners)
        r = self.rounds_done
        for name in names[r % len(names):] + names[:r % len(names)]:
            self.times[name].append(self.runners[name].block(self.args.block)[1:])
        self.rounds_done += 1
        log(f"  round {self.rounds_done}/{self.args.rounds}: " + "  ".join(
            f"{name}={self.args.batch_size / statistics.median(t[-1]):.0f} img/s"
            for name, t in self.times.items()))


def run(args, shuffle_bn: str, images, workdir: Path) -> dict[str, list[list[float]]]:
    """One real `sslkit train` run with lightly blocks interleaved; per-round per-step seconds."""
    import sslkit.app.train
    import sslkit.engine.hardware
    from sslkit.config import compose

    total_lightly = args.warmup + args.rounds * args.block
    runners = {f"lightly (num_workers={w})": LightlyRunner(args, images, w, total_lightly)
               for w in parse_ints(args.num_workers)}
    label = "split BN, default" if shuffle_bn == "auto" else f"shuffle_bn={shuffle_bn}"
    interleaver = Interleaver(args, runners, f"sslkit train ({label})")
    total = args.warmup + args.rounds * args.block + 1  # +1: the last block's time ends at the next batch
    cfg = compose([
        "method=mocov2", "data=fashion_mnist", f"data.batch_size={args.batch_size}",
        f"data.subset={args.subset}", f"data.image_size={args.image_size}",
        f"method.queue_size={args.queue_size}", f"method.temperature={args.temperature}",
        f"method.momentum={args.momentum}", f"method.shuffle_bn={shuffle_bn}", f"trainer.max_steps={total}",
        "trainer.progress=none", f"trainer.threads={args.threads}", "device=cpu",
        f"out={workdir / f'sslkit_{shuffle_bn}'}",
    ])
    real_train_loader = sslkit.app.train.train_loader
    # a run this short keeps NCHW untimed (PROBE_MIN_STEPS); a real run times the channels_last probe
    min_steps = 0 if args.probe_layout else sslkit.engine.hardware.PROBE_MIN_STEPS
    with mock.patch.object(sslkit.app.train, "train_loader",
                           lambda *a, **kw: interleaver.wrap(real_train_loader(*a, **kw))), \
            mock.patch.object(sslkit.engine.hardware, "PROBE_MIN_STEPS", min_steps), \
            contextlib.redirect_stdout(io.StringIO()):  # train() prints a summary line
        run_dir = sslkit.app.train.train(cfg)
    if interleaver.rounds_done != args.rounds:
        raise RuntimeError(f"only {interleaver.rounds_done} of {args.rounds} rounds ran")
    layout = "channels_last" if "channels_last: true" in (Path(run_dir) / "config.yaml").read_text() else "NCHW"
    how = "timed probe, as a run of >= 50 steps" if args.probe_layout else "untimed NCHW of a short run"
    log(f"  sslkit's memory format: {layout} ({how})")
    return interleaver.times


def summarize(times: dict[str, list[list[float]]], batch: int) -> None:
    log("  images/s: batch / median step time (min step time -> max images/s); timed steps per candidate: "
        f"{len([t for block in next(iter(times.values())) for t in block])}")
    for name, blocks in times.items():
        steps = [t for block in blocks for t in block]
        log(f"    {name:34s} {batch / statistics.median(steps):7.1f}   (best {batch / min(steps):.1f})")
    sslkit_name = next(iter(times))
    for name in list(times)[1:]:
        ratio = statistics.median(sum(b) / sum(a)
                                  for a, b in zip(times[sslkit_name], times[name], strict=True))
        best = min(min(b) for b in times[name]) / min(min(a) for a in times[sslkit_name])
        log(f"  {sslkit_name} vs {name}: {ratio:.2f}x (median of same-round ratios; "
            f"{best:.2f}x on best steps; > 1: sslkit faster)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--block", type=int, default=5, help="steps per block; the first of each is not timed")
    p.add_argument("--rounds", type=int, default=4, help="blocks per candidate")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps per candidate, not timed")
    p.add_argument("--queue-size", type=int, default=4096)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--momentum", type=float, default=0.99)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in the training process")
    p.add_argument("--num-workers", default="0,1", help="lightly DataLoader workers to try (comma-separated)")
    p.add_argument("--sslkit-shuffle-bn", default="auto,none",
                   help="sslkit method.shuffle_bn values, one real train() run each (auto = split BN)")
    p.add_argument("--no-probe-layout", dest="probe_layout", action="store_false",
                   help="keep the untimed NCHW of a short run instead of the channels_last probe a real run times")
    p.add_argument("--subset", type=int, default=None,
                   help="Fashion-MNIST images (default: just over the steps the run needs)")
    args = p.parse_args(argv)
    if args.block < 2 or args.warmup < 1:
        p.error("--block must be >= 2 and --warmup >= 1")
    args.subset = args.subset or (args.warmup + args.rounds * args.block + 2) * args.batch_size
    torch.set_num_threads(args.threads)
    log(machine_info({"argv": " ".join(sys.argv[1:]) or "(defaults)"}))
    log(f"MoCo v2 on Fashion-MNIST ({args.subset} images), ResNet-18 (torchvision, fc removed) + MLP head "
        f"2048-128, batch {args.batch_size}, queue {args.queue_size}, tau {args.temperature}, "
        f"m {args.momentum}, {args.image_size}px; {args.rounds} rounds x {args.block}-step blocks "
        f"({args.block - 1} timed), {args.warmup} warm-up steps")

    from sslkit.data import build_dataset

    images = build_dataset({"name": "fashion_mnist"}, "pretrain", subset=args.subset).images  # (N,1,28,28)
    workdir = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    start = time.time()
    try:
        for shuffle_bn in [v.strip() for v in args.sslkit_shuffle_bn.split(",") if v.strip()]:
            log(f"\nsslkit train(method.shuffle_bn={shuffle_bn}) with lightly blocks interleaved:")
            summarize(run(args, shuffle_bn, images, workdir), args.batch_size)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"total wall time {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
