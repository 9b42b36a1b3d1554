"""Every precision / BN / memory-format path on a GPU, then the demo preset for 100 steps (issue 19, item 5).

    python benchmarks/gpu_matrix.py                       # on a CUDA machine: the whole check, ~2-4 minutes
    python benchmarks/gpu_matrix.py --device cpu --demo-steps 3   # the same script on a CPU (a dry run)

Prints one JSON line per cell, so its output can be pasted into docs/benchmarks.md as it is:
- the matrix: precision {32, bf16, fp16} x shuffle-BN {split, none} x memory format {NCHW, channels_last}
  x method {mocov2, simclr}; each cell trains 3 steps of a narrow small-stem ResNet-18 at 32 px through
  `sslkit train` (the engine, its autocast, its GradScaler for fp16) and reports the losses, whether they
  are finite, and the first loss's relative difference to the fp32 cell of the same path;
- the demo preset (`experiment=fmnist_demo`, `auto` everything) for `--demo-steps` steps: the precision
  and layout auto chose, images/s, peak memory. It needs Fashion-MNIST (`make data`); else it is skipped.
Nothing in `make test` needs a GPU: tests/engine/test_precision_matrix.py runs the CPU cells.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import yaml

from sslkit.app.train import train
from sslkit.config import compose

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
TINY = ["backbone.small_images=true", "backbone.width=16", "data.image_size=32", "data.batch_size=64",
        "data.subset=512", "head.hidden_dim=128", "trainer.log_every_steps=1", "trainer.checkpoint_every_steps=0",
        "trainer.monitor_every_epochs=0", "trainer.progress=none"]


def report(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def matrix(device: str, root: Path) -> None:
    data = ["data=fashion_mnist"] if FASHION.exists() else ["data=cifar10", "data.download=false"]
    base: dict[tuple[str, str, bool], float] = {}
    for method in ("mocov2", "simclr"):
        for bn in (("split", "none") if method == "mocov2" else ("-",)):
            for cl in (False, True):
                for precision in ("32", "bf16", "fp16"):
                    name = f"{method}-{bn}-{'cl' if cl else 'nchw'}-{precision}"
                    ov = TINY + data + [f"method={method}", f"device={device}", f"trainer.precision={precision}",
                                        f"trainer.channels_last={str(cl).lower()}", "trainer.max_steps=3",
                                        f"out={root / name}", "seed=0"]
                    ov += [f"method.shuffle_bn={bn}", "method.queue_size=1024"] if method == "mocov2" else []
                    start = time.time()
                    try:
                        got = losses(train(compose(ov)))
                    except Exception as e:  # a cell that fails is reported, and the others still run
                        report(cell=name, ok=False, error=f"{type(e).__name__}: {e}"[:300])
                        continue
                    if precision == "32":
                        base[(method, bn, cl)] = got[0]
                    ref = base.get((method, bn, cl))
                    report(cell=name, ok=all(math.isfinite(v) for v in got), losses=[round(v, 4) for v in got],
                           first_vs_fp32=None if ref is None else round(abs(got[0] - ref) / abs(ref), 4),
                           seconds=round(time.time() - start, 1))


def demo(device: str, steps: int, root: Path) -> None:
    if not FASHION.exists():
        report(cell="demo", ok=None, skipped="Fashion-MNIST is not installed (make data)")
        return
    run = root / "demo"
    cfg = compose(["experiment=fmnist_demo", f"device={device}", "trainer.time_budget=null",
                   f"trainer.max_steps={steps}", "trainer.log_every_steps=10", "trainer.progress=none",
                   "trainer.monitor_every_epochs=0", f"out={run}"])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    train(cfg)
    wall = time.time() - start
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    resolved = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
    ips = [r["images_per_s"] for r in records[1:]] or [records[-1]["images_per_s"]]
    report(cell="demo", ok=all(math.isfinite(r["loss"]) for r in records), steps=steps,
           precision=resolved["precision"], channels_last=resolved["channels_last"],
           loss_first=round(records[0]["loss"], 4), loss_last=round(records[-1]["loss"], 4),
           images_per_s=round(sum(ips) / len(ips), 1), wall_s=round(wall, 1),
           peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--demo-steps", type=int, default=100)
    args = p.parse_args()
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else torch.backends.cpu.get_cpu_capability()
    report(device=args.device, name=where, torch=torch.__version__,
           bf16=torch.cuda.is_bf16_supported() if args.device == "cuda" else None)
    with tempfile.TemporaryDirectory() as tmp:
        matrix(args.device, Path(tmp))
        demo(args.device, args.demo_steps, Path(tmp))


if __name__ == "__main__":
    main()
