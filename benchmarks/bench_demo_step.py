"""Seconds per training step of the `make demo` preset against the old preset, interleaved, fp32.

The whole step: batched MoCo v2 augmentation of two views, forward, backward, SGD step. The old
preset is ResNet-18 with the ImageNet stem at 32 px (bf16 + channels_last, here forced to fp32);
the new one is the narrow CIFAR-stem ResNet-18 at 28 px. Ratios, not absolute times, are what a
shared machine can measure.

    OMP_NUM_THREADS=1 python benchmarks/bench_demo_step.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from sslkit.augment import AugRecipe, BatchedAugment
from sslkit.build import build_method
from sslkit.config import as_dict, compose
from sslkit.data import build_dataset
from sslkit.engine.hardware import cpu_capability, cpu_has_native_bf16
from sslkit.engine.optim import build_optimizer

OLD = ["experiment=fmnist_demo", "backbone.small_images=false", "backbone.width=64", "data.image_size=32"]
NEW = ["experiment=fmnist_demo"]


def make_step(overrides: list[str], channels_last: bool):
    cfg = compose(overrides + ["trainer.precision=32"])
    torch.manual_seed(0)
    method = build_method(cfg).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    method.to(memory_format=fmt)
    aug = BatchedAugment(AugRecipe.from_config(as_dict(cfg.aug)))
    opt = build_optimizer(method, cfg.optim, int(cfg.data.batch_size))
    images = build_dataset(cfg.data, "train").images[: int(cfg.data.batch_size)]

    def step() -> None:
        views = [aug(images).contiguous(memory_format=fmt) for _ in range(2)]
        out = method(views)
        if not out.backward_done:
            out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(0.5)

    return step


def reference_step():
    """ResNet-18 (ImageNet stem) forward+backward of 256 images at 32 px, NCHW fp32: the issue-8
    measurement (183 img/s on a quiet 2-core AVX2 EPYC), to turn ratios into quiet-machine seconds."""
    from sslkit.nn.backbones import build_backbone

    torch.manual_seed(0)
    model, _ = build_backbone({"name": "resnet18"})
    x = torch.randn(256, 3, 32, 32)

    def step() -> None:
        model(x).sum().backward()

    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpu capability {cpu_capability()}, native bf16 {cpu_has_native_bf16()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), load {os.getloadavg()[0]:.2f}; batch 256, fp32", flush=True)
    cases = {f"{name} {'NHWC' if cl else 'NCHW'}": make_step(ov, cl)
             for name, ov in (("old preset (R18 ImageNet stem, 32 px)", OLD), ("new preset", NEW))
             for cl in (False, True)}
    cases["reference: R18 fwd+bwd 256 x 32 px NCHW"] = reference_step()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, step in cases.items():
            start = time.perf_counter()
            step()
            if r:
                times[name].append(time.perf_counter() - start)
    base = min(times[next(iter(cases))])
    for name, ts in times.items():
        print(f"{name:<48} best {min(ts):7.3f} s/step  median {sorted(ts)[len(ts) // 2]:7.3f}  "
              f"speed vs old NCHW {base / min(ts):5.2f}x", flush=True)
    ref = min(times["reference: R18 fwd+bwd 256 x 32 px NCHW"])
    for name, ts in times.items():
        print(f"{name:<48} = {min(ts) / ref:5.2f} reference steps; on a quiet 2-core AVX2 box (reference "
              f"{256 / 183:.2f} s) about {min(ts) / ref * 256 / 183:.2f} s/step", flush=True)


if __name__ == "__main__":
    main()
