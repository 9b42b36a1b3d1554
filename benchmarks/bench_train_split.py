"""Training from an ImageFolder of PNGs on a CPU: how to share the cores between DataLoader workers
(decoding + per-image augmentation) and torch threads (the model). Each pass is a real `sslkit train`
(MoCo v2, ResNet-18) in a fresh process; the candidates are interleaved, the order alternating per round.

    python benchmarks/bench_train_split.py [--sizes 32,96] [--batch-size 64] [--steps 12] [--rounds 2]
        [--splits 1+1,0+2]     # workers+threads; the first is the baseline

images/s is the median of the per-step rates logged after --warmup steps (loading and augmentation
included). Uses the PNGs of benchmarks/bench_threads.py (written on first use under --root).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_threads import write_pngs

CHILD = r"""
import json, sys
from pathlib import Path
from sslkit.app.train import train
from sslkit.config import compose
from sslkit.engine.hardware import cpu_capability
root, size, batch, workers, threads, steps, out = sys.argv[1:8]
cfg = compose(["method=mocov2", "data=imagefolder", f"data.root={root}", f"data.image_size={size}",
               f"data.batch_size={batch}", f"data.num_workers={workers}", f"trainer.threads={threads}",
               f"trainer.max_steps={steps}", "trainer.log_every_steps=1", "trainer.progress=none",
               "trainer.channels_last=false", "trainer.precision=32", "device=cpu", f"out={out}"])
run = train(cfg)
rates = [json.loads(line).get("images_per_s") for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
print(json.dumps({"rates": [r for r in rates if r is not None], "cpu": cpu_capability()}))
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="32,96")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=12, help="timed steps per pass")
    p.add_argument("--warmup", type=int, default=3, help="steps per pass before timing")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--splits", default="1+1,0+2", help="workers+threads candidates; the first is the baseline")
    p.add_argument("--root", default="/tmp/sslkit_bench_pngs")
    args = p.parse_args()
    root = Path(args.root)
    write_pngs(root, 10000)
    splits = [tuple(int(x) for x in s.split("+")) for s in args.splits.split(",")]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cpu = "?"
    print(f"{len(os.sched_getaffinity(0))} usable cores, load {os.getloadavg()[0]:.2f}; MoCo v2 ResNet-18, "
          f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup}", flush=True)
    for size in [int(s) for s in args.sizes.split(",")]:
        rates: dict[tuple[int, ...], list[float]] = {s: [] for s in splits}
        cpu_time: dict[tuple[int, ...], list[tuple[float, float]]] = {s: [] for s in splits}
        for r in range(args.rounds):
            for split in (splits if r % 2 == 0 else splits[::-1]):
                with tempfile.TemporaryDirectory() as tmp:
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(size), str(args.batch_size),
                                          str(split[0]), str(split[1]), str(args.warmup + args.steps),
                                          str(Path(tmp) / "run")],
                                         capture_output=True, text=True, env=env, check=True)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                rec = json.loads(out.stdout.strip().splitlines()[-1])
                cpu = rec["cpu"]
                rate = statistics.median(rec["rates"][args.warmup:])
                rates[split].append(rate)
                cpu_time[split].append((after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime))
                print(f"  {size} px, {split[0]} workers + {split[1]} threads: {rate:.1f} img/s", flush=True)
        base = statistics.mean(rates[splits[0]])
        print(f"{size} px (cpu capability {cpu}):")
        for split in splits:
            rate = statistics.mean(rates[split])
            user = statistics.mean(u for u, _ in cpu_time[split])
            system = statistics.mean(s for _, s in cpu_time[split])
            ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(rates[split], rates[splits[0]], strict=True))
            print(f"  {split[0]} workers + {split[1]} threads: {rate:.1f} img/s, CPU per pass {user:.0f}s user + "
                  f"{system:.0f}s system; vs {splits[0][0]}+{splits[0][1]} {rate / base:.2f}x (per round: {ratios})")


if __name__ == "__main__":
    main()
