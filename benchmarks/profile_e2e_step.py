"""Where a MoCo v2 step's CPU time goes: lightly's step and sslkit's real `train()`, under torch.profiler.

The same set-up as bench_e2e_lightly.py (Fashion-MNIST, torchvision ResNet-18, 32 px, K=4096, tau 0.2,
m 0.99, SGD), profiled for --steps steps after --warmup steps; prints each candidate's step times and
its ops by self CPU time. Each sslkit variant is `shuffle_bn[+cl]`: +cl forces channels_last, without
it the layout is `auto` (a run this short keeps NCHW untimed).

    python benchmarks/profile_e2e_step.py [--batch-size 256] [--steps 8] auto none auto+cl
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from _common import machine_info
from bench_e2e_lightly import LightlyRunner
from torch.profiler import ProfilerActivity, profile


def table(prof: profile, title: str, rows: int) -> None:
    print(f"\n===== {title} =====")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))


def profile_sslkit(spec: str, args: argparse.Namespace, workdir: Path) -> tuple[list[float], profile]:
    """One real train() whose loader starts the profiler at step --warmup and stops it --steps later."""
    import sslkit.app.train
    from sslkit.config import compose

    shuffle_bn, _, cl = spec.partition("+")
    prof = profile(activities=[ProfilerActivity.CPU])
    times: list[float] = []

    def wrap(loader: Any) -> Any:
        class Wrapped:
            batch_sampler = loader.batch_sampler

            def __iter__(self) -> Iterator[Any]:
                last = 0.0
                for i, batch in enumerate(loader):
                    now = time.perf_counter()
                    if i == args.warmup:
                        prof.__enter__()
                    elif args.warmup < i <= args.warmup + args.steps:
                        times.append(now - last)  # the step before this batch, its loading included
                    if i == args.warmup + args.steps:
                        prof.__exit__(None, None, None)
                    last = time.perf_counter()
                    yield batch

        return Wrapped()

    cfg = compose(["method=mocov2", "data=fashion_mnist", f"data.batch_size={args.batch_size}",
                   f"data.subset={args.subset}", "data.image_size=32", "method.queue_size=4096",
                   "method.temperature=0.2", "method.momentum=0.99", f"method.shuffle_bn={shuffle_bn}",
                   f"trainer.max_steps={args.warmup + args.steps + 1}", "trainer.progress=none",
                   f"trainer.threads={args.threads}", "device=cpu",
                   f"trainer.channels_last={'true' if cl else 'auto'}", f"out={workdir / spec}"])
    real = sslkit.app.train.train_loader
    with mock.patch.object(sslkit.app.train, "train_loader", lambda *a, **kw: wrap(real(*a, **kw))), \
            contextlib.redirect_stdout(io.StringIO()):
        sslkit.app.train.train(cfg)
    return times, prof


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="*", default=["auto", "auto+cl"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=20)
    args = p.parse_args()
    args.subset = (args.steps + args.warmup + 4) * args.batch_size
    torch.set_num_threads(args.threads)
    print(machine_info({"cpu capability": torch.backends.cpu.get_cpu_capability(), "argv": " ".join(sys.argv[1:])}))
    from sslkit.data import build_dataset

    images = build_dataset({"name": "fashion_mnist"}, "pretrain", subset=args.subset).images
    lightly_args = argparse.Namespace(batch_size=args.batch_size, image_size=32, temperature=0.2, queue_size=4096,
                                      momentum=0.99)
    runner = LightlyRunner(lightly_args, images, 0, 100)
    runner.block(args.warmup)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        times = runner.block(args.steps)
    print("lightly (0 workers) step seconds:", [round(t, 3) for t in times])
    table(prof, "lightly (0 workers)", args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.variants:
            times, prof = profile_sslkit(spec, args, Path(tmp))
            print(f"sslkit {spec} step seconds:", [round(t, 3) for t in times])
            table(prof, f"sslkit {spec}", args.rows)


if __name__ == "__main__":
    main()
