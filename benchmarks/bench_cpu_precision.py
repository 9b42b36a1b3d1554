"""ResNet-18 forward+backward on the CPU in each memory format and precision, in one run.

    python benchmarks/bench_cpu_precision.py [--batch 256] [--size 32] [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from sslkit.nn.backbones import build_backbone


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} thread(s), load {os.getloadavg()[0]:.2f}; "
          f"ResNet-18 fwd+bwd, batch {args.batch}, {args.size} px; best of {args.repeats} after a warm-up")
    torch.manual_seed(0)
    model, _ = build_backbone({"name": "resnet18"})
    x = torch.randn(args.batch, 3, args.size, args.size)
    cases = [(cl, bf) for cl in (False, True) for bf in (False, True)]
    times: dict[tuple[bool, bool], list[float]] = {c: [] for c in cases}
    for _ in range(args.repeats + 1):  # interleaved, so load changes hit every case alike
        for cl, bf in cases:
            fmt = torch.channels_last if cl else torch.contiguous_format
            model.to(memory_format=fmt)
            xx = x.contiguous(memory_format=fmt)
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf):
                loss = model(xx).float().sum()
            loss.backward()
            times[(cl, bf)].append(time.perf_counter() - start)
    base = min(times[(False, False)][1:])
    print(f"{'memory format':<14} {'precision':<10} {'seconds':>8} {'vs NCHW fp32':>13}")
    for cl, bf in cases:
        t = min(times[(cl, bf)][1:])
        print(f"{'NHWC' if cl else 'NCHW':<14} {'bf16' if bf else 'fp32':<10} {t:8.3f} {base / t:12.2f}x")


if __name__ == "__main__":
    main()
