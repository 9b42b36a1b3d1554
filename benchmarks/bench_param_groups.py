"""Barlow Twins' optimizer step: sslkit's per-parameter LARS groups against the same parameters in 2 groups.

`methods/barlow_twins.py` declares one `ParamRule` per 1-d parameter (`ParamRule` matches by name prefix), so
a ResNet-18 + 2048-2048-2048 projector gets 45 LARS groups (44 biases / norm parameters + the weights).
This times `optimizer.step()` + `scheduler.step()` for those groups, for the same parameters in the 2 groups
the official code has (weights; biases and norms at 0.024 x the rate, out of decay and adaptation), and
lightly's LARS on those 2 groups; random gradients, interleaved (`_common.interleaved`).

Run:  .venv/bin/python benchmarks/bench_param_groups.py [--threads 1] [--repeats 15]
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import interleaved, machine_info, report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--proj-dim", type=int, default=2048)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = (f"torch.backends.cpu.get_cpu_capability() = {torch.backends.cpu.get_cpu_capability()}, "
           f"torch.ops.mkldnn._is_mkldnn_bf16_supported() = {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print(machine_info({"argv": " ".join(sys.argv[1:]) or "(defaults)", "cpu": cpu}), flush=True)

    from lightly.utils.lars import LARS as LightlyLARS

    from sslkit.build import build_method
    from sslkit.config import compose
    from sslkit.engine.lars import LARS
    from sslkit.engine.optim import build_optimizer
    from sslkit.engine.schedule import build_scheduler

    cfg = compose(["method=barlow_twins", f"head.hidden_dim={args.proj_dim}", f"head.out_dim={args.proj_dim}",
                   "data.batch_size=128"])
    model = build_method(cfg, 1)
    per_param = build_optimizer(model, cfg.optim, 128, model.param_rules())
    per_param_schedule = build_scheduler(per_param, cfg.optim, 100, 468)
    weights = [q for q in model.parameters() if q.requires_grad and q.ndim > 1]
    biases = [q for q in model.parameters() if q.requires_grad and q.ndim <= 1]
    lr, scale = 0.2 * 128 / 256, float(cfg.method.bias_lr_scale)
    two = LARS([{"params": weights, "weight_decay": 1.5e-6, "lars_exclude": False, "lr": lr},
                {"params": biases, "weight_decay": 0.0, "lars_exclude": True, "lr": lr * scale}],
               lr=lr, weight_decay=1.5e-6)
    two_schedule = build_scheduler(two, cfg.optim, 100, 468)
    lightly = LightlyLARS([{"params": weights}, {"params": biases, "weight_decay": 0.0, "lr": lr * scale}],
                          lr=lr, momentum=0.9, weight_decay=1.5e-6)
    for q in model.parameters():
        q.grad = torch.randn_like(q) * 1e-3
    print(f"Barlow Twins, ResNet-18 + projector {args.proj_dim}-{args.proj_dim}-{args.proj_dim}: "
          f"{len(weights) + len(biases)} trainable tensors; sslkit's groups: {len(per_param.param_groups)}")
    times = interleaved({
        f"sslkit LARS, {len(per_param.param_groups)} groups + LambdaLR":
            lambda: (per_param.step(), per_param_schedule.step()),
        "sslkit LARS, 2 groups + LambdaLR": lambda: (two.step(), two_schedule.step()),
        "lightly LARS, 2 groups": lightly.step,
    }, repeats=args.repeats, steps_per_block=1, warmup=2)
    print(report(times, "sslkit LARS, 2 groups + LambdaLR", "optimizer step (+ schedule step), per call"))


if __name__ == "__main__":
    main()
