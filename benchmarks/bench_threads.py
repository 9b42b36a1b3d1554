"""Feature extraction (what `sslkit eval knn` does) over an ImageFolder of small PNGs at 224 px:
the old thread/worker policy against the new one, interleaved, each pass in a fresh process.

old:  data.num_workers=2 (the imagefolder default) and torch's default thread count (all cores);
new:  half the cores as workers, the rest torch threads (cpu_split for a decoding loader until
      2026-11-30; on 2 cores 1 worker + 1 thread);
main: no workers: the main process decodes, every core is a torch thread (cpu_split on <= 2 cores now).

    python benchmarks/bench_threads.py [--images 2000] [--rounds 2] [--size 224] [--policies old,new,main]

Each pass also reports the user and system CPU seconds of its process and its loader workers
(getrusage of the reaped child): spinning threads show up as system time.

The first run writes Fashion-MNIST test images as PNGs under --root (kept for later runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, sys, time, torch
from sslkit.data import build_dataset
from sslkit.engine.hardware import apply_cpu_split, cpu_capability
from sslkit.evaluation.features import backbone_features
from sslkit.nn.backbones import build_backbone
policy, root, size, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if policy == "old":
    workers, threads = 2, torch.get_num_threads()
else:  # new: half the cores decode (the earlier split); main: no workers, every core a torch thread
    cores = len(os.sched_getaffinity(0))
    workers = max(1, cores // 2) if policy == "new" and cores >= 2 else 0
    split = apply_cpu_split(torch.device("cpu"), False, cores - workers, workers)
    workers, threads = split.workers, split.threads
data = {"name": "imagefolder", "root": root, "image_size": size, "num_workers": workers,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
ds = build_dataset(data, "test", n)
torch.manual_seed(0)
model, _ = build_backbone({"name": "resnet18"})
start = time.perf_counter()
backbone_features(model, ds, data, torch.device("cpu"), 64, progress="none")
wall = time.perf_counter() - start
print(json.dumps({"policy": policy, "threads": threads, "workers": workers, "images": len(ds),
                  "seconds": wall, "img_per_s": len(ds) / wall, "cpu": cpu_capability()}))
"""


def write_pngs(root: Path, n: int) -> None:
    """Fashion-MNIST test images as root/val/<class>/<i>.png (28 px greyscale PNGs)."""
    from PIL import Image

    from sslkit.data import build_dataset

    marker = root / f".done-{n}"
    if marker.exists():
        return
    ds = build_dataset({"name": "fashion_mnist", "root": None}, "test")
    images, labels = ds.images, ds.targets  # type: ignore[attr-defined]
    for i in range(min(n, images.shape[0])):
        folder = root / "val" / f"class{int(labels[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0].numpy()).save(folder / f"{i:05d}.png")
    if not (root / "train").exists():
        (root / "train").symlink_to("val")  # an ImageFolder needs a train split too; only val is read
    marker.touch()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--root", default="/tmp/sslkit_bench_pngs")
    p.add_argument("--policies", default="old,new,main", help="comma-separated; old is the baseline")
    args = p.parse_args()
    root = Path(args.root)
    write_pngs(root, max(args.images, 10000))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # each policy picks its own
    policies = tuple(x for x in args.policies.split(",") if x)
    if "old" not in policies or not set(policies) <= {"old", "new", "main"}:
        sys.exit(f"--policies must name old (the baseline) and any of new, main; got {args.policies}")
    results: dict[str, list[dict[str, float]]] = {p: [] for p in policies}
    for r in range(args.rounds):
        for policy in (policies if r % 2 == 0 else policies[::-1]):  # interleaved, alternating order
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run([sys.executable, "-c", CHILD, policy, str(root), str(args.size), str(args.images)],
                                 capture_output=True, text=True, env=env, check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            rec["user_s"], rec["sys_s"] = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
            results[policy].append(rec)
            print(json.dumps(rec), flush=True)
    first = results["old"][0]
    print(f"cpu capability {first['cpu']}, {len(os.sched_getaffinity(0))} usable cores, load {os.getloadavg()[0]:.2f}; "
          f"{args.images} PNGs at {args.size} px, ResNet-18 features, batch 64")
    old = sum(r["img_per_s"] for r in results["old"]) / args.rounds
    for policy in policies:
        rate = sum(r["img_per_s"] for r in results[policy]) / args.rounds
        ratios = [n["img_per_s"] / o["img_per_s"] for o, n in zip(results["old"], results[policy], strict=True)]
        rec = results[policy][0]
        user = sum(r["user_s"] for r in results[policy]) / args.rounds
        sys_s = sum(r["sys_s"] for r in results[policy]) / args.rounds
        wall = sum(r["seconds"] for r in results[policy]) / args.rounds
        print(f"{policy} ({rec['workers']} workers + {rec['threads']} threads): {rate:.1f} img/s, {wall:.0f}s wall, "
              f"CPU {user:.0f}s user + {sys_s:.0f}s system; vs old {rate / old:.2f}x "
              f"(per round: {', '.join(f'{x:.2f}' for x in ratios)})")

if __name__ == "__main__":
    main()
