"""Does the faster memory format depend on the batch? Backbone forward+backward in NCHW and NHWC, as
`trainer.channels_last=auto`'s probe times it (sslkit.engine.hardware._seconds), at several batch sizes,
with the split BN MoCo uses on one device (8 groups).

    python benchmarks/bench_probe_batch.py [--batches 32,256] [--repeats 2] [--threads 2]

Each cell is the best of 3 after one warm-up pass of each format; ratio = NCHW / NHWC (> 1: NHWC faster).
"""

from __future__ import annotations

import argparse
import copy

import torch
from _common import machine_info, parse_ints

from sslkit.engine.hardware import _seconds
from sslkit.nn.backbones import build_backbone
from sslkit.nn.split_bn import convert_split_bn

ENCODERS = (("ResNet-18, ImageNet stem, 32 px", {"name": "resnet18"}, 32),
            ("the demo's: small stem, width 16, 28 px", {"name": "resnet18", "small_images": True, "width": 16}, 28))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", default="32,256")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--groups", type=int, default=8, help="split-BN groups (0: plain BN)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_info({"cpu capability": torch.backends.cpu.get_cpu_capability()}))
    for name, cfg, size in ENCODERS:
        torch.manual_seed(0)
        model, _ = build_backbone(cfg)
        if args.groups > 1:
            convert_split_bn(model, args.groups)
        model.train()
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        for batch in parse_ints(args.batches):
            cells = []
            for _ in range(args.repeats):
                x = torch.randn(batch, 3, size, size)
                x_cl = x.contiguous(memory_format=torch.channels_last)
                _seconds(model, x), _seconds(model_cl, x_cl)  # warm-up
                nchw = min(_seconds(model, x) for _ in range(3))
                nhwc = min(_seconds(model_cl, x_cl) for _ in range(3))
                cells.append(f"NCHW {nchw * 1000:.0f} ms / NHWC {nhwc * 1000:.0f} ms = {nchw / nhwc:.2f}x")
            print(f"{name}, split BN {args.groups} groups, {batch} images: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
