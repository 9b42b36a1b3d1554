"""bf16 autocast against fp32 for a whole MoCo v2 training step on the CPU, in each memory format, in one run.

    python benchmarks/bench_cpu_precision.py [--shapes demo,r18-32,r50-224] [--rounds 3] [--threads N]

A step is what the engine runs: two views, the query encoder's forward and backward, the key encoder's
forward (split shuffle-BN, as `shuffle_bn=auto` gives on one device), the SGD step and the momentum
update. The four cases of a shape are interleaved and each keeps its best of `--rounds` after a
warm-up, so a change in load hits every case alike. Prints the CPU (torch's capability, oneDNN's BF16)
first: on an AVX2-only CPU bf16 is emulated (expect 10-50x slower); on AVX-512-BF16/AMX it is native.
This is the measurement behind `trainer.precision=auto`'s timed probe (sslkit.engine.hardware.probe_bf16).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from sslkit.build import build_method
from sslkit.config import compose
from sslkit.engine.hardware import cpu_capability, cpu_has_native_bf16
from sslkit.engine.loop import autocast

SHAPES = {  # name: (overrides, batch, image size)
    "demo": (["experiment=fmnist_demo"], 256, 28),
    "r18-32": (["method=mocov2", "backbone=resnet18", "backbone.small_images=true", "method.queue_size=4096"],
               256, 32),
    "r50-224": (["method=mocov2", "backbone=resnet50", "method.queue_size=4096"], 32, 224),
}


def step_seconds(method: torch.nn.Module, opt: torch.optim.Optimizer, views: list[torch.Tensor],
                 precision: str) -> float:
    start = time.perf_counter()
    with autocast(torch.device("cpu"), precision):
        out = method(views)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    method.after_step(0.0)
    return time.perf_counter() - start


def bench(name: str, rounds: int) -> None:
    overrides, batch, size = SHAPES[name]
    cfg = compose(overrides + [f"data.batch_size={batch}", f"data.image_size={size}"])
    cases = [(cl, p) for cl in (False, True) for p in ("32", "bf16")]
    setups = {}
    for cl, p in cases:
        torch.manual_seed(0)
        method = build_method(cfg).train()
        fmt = torch.channels_last if cl else torch.contiguous_format
        method.to(memory_format=fmt)
        opt = torch.optim.SGD([q for q in method.parameters() if q.requires_grad], lr=0.01, momentum=0.9)
        views = [torch.randn(batch, 3, size, size).contiguous(memory_format=fmt) for _ in range(2)]
        setups[(cl, p)] = (method, opt, views)
    times: dict[tuple[bool, str], list[float]] = {c: [] for c in cases}
    for _ in range(rounds + 1):  # the first round is a warm-up (oneDNN primitive creation)
        for c in cases:
            times[c].append(step_seconds(*setups[c], precision=c[1]))
    best = {c: min(t[1:]) for c, t in times.items()}
    base = best[(False, "32")]
    for cl, p in cases:
        other = best[(cl, "32")]
        print(f"{name:<8} {'NHWC' if cl else 'NCHW':<5} {'bf16' if p == 'bf16' else 'fp32':<5} "
              f"batch {batch:>3} {size:>3} px  {best[(cl, p)]:7.3f} s/step  {base / best[(cl, p)]:5.2f}x NCHW fp32"
              + (f"  bf16/fp32 same layout: {other / best[(cl, p)]:.2f}x" if p == "bf16" else ""), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="demo,r18-32,r50-224")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; CPU capability {cpu_capability()}, oneDNN native BF16 {cpu_has_native_bf16()}; "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}; "
          f"MoCo v2 training step, best of {args.rounds} after a warm-up, cases interleaved", flush=True)
    for name in args.shapes.split(","):
        bench(name, args.rounds)


if __name__ == "__main__":
    main()
