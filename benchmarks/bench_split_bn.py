"""Split BatchNorm (single-device shuffle-BN) against plain BatchNorm in a ResNet-18 training step.

One MoCo-shaped step per candidate: a query forward+backward and a key forward without a graph, both
through the same BN variant; ResNet-18 (torchvision), 32 px, in NCHW and channels_last. Candidates:
plain nn.BatchNorm2d (shuffle_bn=none), sslkit's SplitBatchNorm2d (8 groups), and the previous
SplitBatchNorm2d (groups folded into channels and returned as a view of the folded output, on which
ResNet's in-place ReLU made autograd copy every activation back: CopySlices). Interleaved, one step of
each candidate per round in rotating order; medians and median same-round ratios.

    .venv/bin/python benchmarks/bench_split_bn.py [--batch-size 256] [--rounds 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision
from _common import machine_info
from torch import Tensor, nn

from sslkit.nn.split_bn import SplitBatchNorm2d, convert_split_bn


class PreviousSplitBatchNorm2d(SplitBatchNorm2d):
    """The earlier forward, kept here only as a baseline (same statistics, output a view)."""

    def forward(self, x: Tensor) -> Tensor:
        g = self.num_splits
        if not self.training or g <= 1 or x.shape[0] < 2 * g or x.shape[0] % g:
            return super().forward(x)
        n, c, h, w = x.shape
        mean, var = self.running_mean.repeat(g), self.running_var.repeat(g)
        out = F.batch_norm(x.reshape(n // g, c * g, h, w), mean, var, self.weight.repeat(g),
                           self.bias.repeat(g), True, self.momentum, self.eps).view(n, c, h, w)
        self.running_mean.copy_(mean.view(g, c).mean(0))
        self.running_var.copy_(var.view(g, c).mean(0))
        self.num_batches_tracked.add_(1)
        return out


def resnet(kind: str, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    if kind != "plain BN":
        convert_split_bn(model, 8)
    if kind == "previous split BN":
        for name, m in list(model.named_modules()):
            if isinstance(m, SplitBatchNorm2d):
                parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
                old = PreviousSplitBatchNorm2d(m.num_features, m.num_splits)
                old.load_state_dict(m.state_dict())
                setattr(parent, name.rpartition(".")[2], old)
    model.train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def step(model: nn.Module, key_model: nn.Module, query: Tensor, key: Tensor) -> float:
    start = time.perf_counter()
    model(query).square().mean().backward()
    with torch.no_grad():
        key_model(key)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_info({"CPU capability": torch.backends.cpu.get_cpu_capability()}))
    kinds = ["plain BN", "split BN", "previous split BN"]
    for channels_last in (False, True):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        query = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=fmt)
        key = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=fmt)
        models = {k: resnet(k, channels_last) for k in kinds}
        keys = {k: copy.deepcopy(m) for k, m in models.items()}

        for k in kinds:  # warm-up
            step(models[k], keys[k], query, key)
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            for k in kinds[r % 3:] + kinds[:r % 3]:
                times[k].append(step(models[k], keys[k], query, key))
        name = "channels_last" if channels_last else "NCHW"
        print(f"\nResNet-18, batch {args.batch_size}, 32 px, {name}: query fwd+bwd + key fwd, "
              f"{args.rounds} interleaved rounds")
        base = times["plain BN"]
        for k in kinds:
            ratio = statistics.median(t / b for t, b in zip(times[k], base, strict=True))
            print(f"  {k:18s} {1000 * statistics.median(times[k]):8.1f} ms   {ratio:.3f}x plain BN's time")


if __name__ == "__main__":
    main()
