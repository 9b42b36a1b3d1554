"""Shared helpers for bench_step_overhead.py and bench_e2e_lightly.py.

The machine these run on is shared and noisy, so every comparison is measured *interleaved*:
each repeat runs one block of every candidate, in a rotating order, and the summary reports
medians, minimums and the median of per-repeat (paired) ratios.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def machine_info(extra: dict[str, object] | None = None) -> str:
    """One block of text describing the machine, the libraries and the thread settings."""
    lines = [
        f"machine: {platform.machine()} {platform.processor() or ''}".rstrip(),
        f"nproc (os.cpu_count / affinity): {os.cpu_count()} / {len(os.sched_getaffinity(0))}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()})",
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]
    try:
        import lightly

        lines.append(f"lightly {lightly.__version__}")
    except ImportError:  # pragma: no cover - lightly is a dependency of sslkit
        pass
    for key, value in (extra or {}).items():
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes (CPU work is synchronous, so no device sync is needed)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int, steps_per_block: int = 1,
                warmup: int = 2, log: Callable[[str], None] | None = None) -> dict[str, list[list[float]]]:
    """Time each candidate in blocks of `steps_per_block` calls, ABC.. then BCA.., `repeats` times.

    Returns {name: [[per-call seconds of block r] for r in range(repeats)]}. The `warmup` calls of
    every candidate (also interleaved) are not recorded.
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times: dict[str, list[list[float]]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append([timed(candidates[name]) for _ in range(steps_per_block)])
        if log is not None:
            log(f"  repeat {r + 1}/{repeats}: " + "  ".join(
                f"{n}={1e3 * statistics.fmean(times[n][-1]):.1f}ms" for n in names))
    return times


def flat(blocks: list[list[float]]) -> list[float]:
    return [t for block in blocks for t in block]


def paired_ratio(candidate: list[list[float]], baseline: list[list[float]]) -> float:
    """Median over repeats of (candidate block mean / baseline block mean of the same repeat)."""
    return statistics.median(statistics.fmean(c) / statistics.fmean(b)
                             for c, b in zip(candidate, baseline, strict=True))


def report(times: dict[str, list[list[float]]], baseline: str | None, title: str, unit_scale: float = 1e3,
           unit: str = "ms") -> str:
    """A table of median / min per call and, against `baseline`, the paired ratio and overhead."""
    width = max(len(n) for n in times)
    lines = [title, f"  {'':{width}}  {'median':>9}  {'min':>9}  " + (
        f"{'ratio (paired median)':>21}  {'ratio of mins':>13}  {'overhead':>8}" if baseline else "")]
    base_min = min(flat(times[baseline])) if baseline else None
    for name, blocks in times.items():
        values = flat(blocks)
        row = (f"  {name:{width}}  {unit_scale * statistics.median(values):7.1f}{unit}  "
               f"{unit_scale * min(values):7.1f}{unit}")
        if baseline and name != baseline:
            ratio = paired_ratio(blocks, times[baseline])
            row += f"  {ratio:21.3f}  {min(values) / base_min:13.3f}  {100 * (ratio - 1):+7.1f}%"
        elif baseline:
            row += f"  {'(baseline)':>21}"
        lines.append(row)
    return "\n".join(lines)


def plain_bn_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` in which every BatchNorm2d subclass (e.g. sslkit's SplitBatchNorm2d)
    is replaced by a plain nn.BatchNorm2d holding the same parameters and running statistics."""
    clone = copy.deepcopy(module)

    def convert(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d) and type(child) is not nn.BatchNorm2d:
                bn = nn.BatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum,
                                    affine=child.affine, track_running_stats=child.track_running_stats)
                bn.load_state_dict(child.state_dict())
                bn.train(child.training)
                for p_new, p_old in zip(bn.parameters(), child.parameters(), strict=True):
                    p_new.requires_grad_(p_old.requires_grad)
                setattr(parent, name, bn)
            else:
                convert(child)

    convert(clone)
    return clone


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]
