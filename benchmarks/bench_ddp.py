"""1 process x 2 threads vs 2 gloo processes x 1 thread on a 2-core CPU: throughput and collective costs.

Part 1 trains MoCo v2 and SimCLR (ResNet-18, 32 px Fashion-MNIST subset) through the real CLI,
`sslkit train trainer.devices=1|2`, and reads images/s from the run's metrics.jsonl (log every step,
warm-up steps left out). 1 process x 1 thread is the per-core baseline: on a busy machine OpenMP's
2 threads in one process can be much slower than 2 cores' worth, and 2 x 1 vs 1 x 1 is the scaling.
Part 2 spawns 2 gloo processes and times, separately, each collective the methods issue per step:
MoCo's key gather and shuffle-BN, SimCLR's differentiable embedding gather, and the gradient
all-reduce of the whole model (what DDP does in its buckets).

    .venv/bin/python benchmarks/bench_ddp.py                 # ~3 minutes on 2 idle cores
    .venv/bin/python benchmarks/bench_ddp.py --steps 6 --methods simclr
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

LAYOUTS = ((1, 1), (1, 2), (2, 1))  # (processes, threads each): the baseline, then 2 cores either way


def cli_throughput(method: str, procs: int, threads: int, args: argparse.Namespace,
                   work: Path) -> dict[str, float]:
    """images/s of `sslkit train` with `procs` processes of `threads` threads each."""
    out = work / f"{method}_{procs}x{threads}"
    cmd = [sys.executable, "-m", "sslkit", "train", f"method={method}", "backbone=resnet18",
           "data=fashion_mnist", f"data.subset={args.subset}", f"data.batch_size={args.batch}",
           f"trainer.max_steps={args.steps}",
           "trainer.log_every_steps=1", "trainer.checkpoint_every_steps=0", "trainer.progress=none",
           f"trainer.devices={procs}", f"trainer.threads={threads}", "device=cpu", f"out={out}"]
    if method.startswith("moco"):
        cmd.append(f"method.queue_size={args.queue}")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "images_per_s" in r]
    first, last = records[args.warmup - 1], records[-1]  # steps warmup+1 .. steps, timed end to end
    seconds = last["time"] - first["time"]
    timed_steps = last["step"] - first["step"]
    return {"images_per_s": timed_steps * args.batch / seconds, "step_s": seconds / timed_steps,
            "wall_s": wall}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of `fn` over `reps` calls, every call started together on all ranks."""
    fn()
    times = []
    for _ in range(reps):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    gathered: list[float] = [0.0] * dist.get_world_size()
    dist.all_gather_object(gathered, statistics.median(times))
    return 1000 * max(gathered)  # a collective ends for the step when the slowest rank has it


def _collectives_worker(rank: int, world: int, port: int, per_rank: int, reps: int, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from sslkit.build import build_method
    from sslkit.config import compose
    from sslkit.contrastive.shuffle_bn import shuffle_ddp, unshuffle_ddp
    from sslkit.devices import all_reduce_mean_, concat_all_gather, gather_with_grad
    from sslkit.engine.distributed import init_world, shutdown

    init_world("cpu")
    rows: list[tuple[str, str, float]] = []
    keys = torch.randn(per_rank, 128)
    images = torch.randn(per_rank, 3, 32, 32)
    rows.append(("MoCo key gather (queue push)", f"{per_rank}x128 fp32 per rank",
                 _median_ms(lambda: concat_all_gather(keys), reps)))

    def shuffle_round_trip() -> None:
        shuffled, inverse = shuffle_ddp(images)
        unshuffle_ddp(keys, inverse)

    rows.append(("MoCo shuffle-BN (images + keys)", f"{per_rank}x3x32x32 + {per_rank}x128",
                 _median_ms(shuffle_round_trip, reps)))
    z = torch.randn(2 * per_rank, 128, requires_grad=True)

    def simclr_gather() -> None:
        z1, z2 = z.chunk(2)
        (gather_with_grad(z1).square().sum() + gather_with_grad(z2).square().sum()).backward()

    rows.append(("SimCLR gather_with_grad fwd+bwd", f"2 x {per_rank}x128 fp32",
                 _median_ms(simclr_gather, reps)))
    for name in ("mocov2", "simclr"):
        method = build_method(compose([f"method={name}", "method.queue_size=256"] if name == "mocov2"
                                      else [f"method={name}"]))
        grads = [torch.randn_like(p) for p in method.parameters() if p.requires_grad]
        n = sum(g.numel() for g in grads)
        payload = f"{n / 1e6:.1f}M fp32 = {4 * n / 2**20:.0f} MiB"
        rows.append((f"gradient all-reduce ({name} trainable)", payload,
                     _median_ms(lambda grads=grads: all_reduce_mean_(grads), max(3, reps // 4))))
    if rank == 0:
        torch.save(rows, result)
    shutdown()


def collectives(per_rank: int, reps: int) -> list[tuple[str, str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "rows.pt")
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        mp.spawn(_collectives_worker, args=(2, free_port(), per_rank, reps, result), nprocs=2, join=True)
        return torch.load(result, weights_only=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["mocov2", "simclr"])
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of images/s")
    p.add_argument("--batch", type=int, default=64, help="global batch (split over the processes)")
    p.add_argument("--subset", type=int, default=1024)
    p.add_argument("--queue", type=int, default=4096, help="MoCo queue size")
    p.add_argument("--reps", type=int, default=20, help="timed calls per collective")
    p.add_argument("--repeats", type=int, default=1, help="training runs per layout (the best is reported)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs (affinity {len(os.sched_getaffinity(0))}), "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"ResNet-18, 32 px Fashion-MNIST (subset {args.subset}), global batch {args.batch}, "
          f"{args.steps} steps ({args.warmup} warm-up), MoCo queue {args.queue}; gloo on the CPU\n")
    results: dict[tuple[str, int, int], dict[str, float]] = {}
    for repeat in range(args.repeats):  # alternate the order; keep each layout's best run (noisy, shared CPU)
        for method in args.methods:
            for procs, threads in (LAYOUTS if repeat % 2 == 0 else LAYOUTS[::-1]):
                load = os.getloadavg()[0]
                with tempfile.TemporaryDirectory() as tmp:
                    r = cli_throughput(method, procs, threads, args, Path(tmp))
                print(f"  {method} {procs} x {threads} thread(s): {r['images_per_s']:.1f} images/s "
                      f"({r['wall_s']:.0f}s wall incl. start-up, load {load:.1f})", flush=True)
                if r["images_per_s"] > results.get((method, procs, threads), {}).get("images_per_s", 0.0):
                    results[method, procs, threads] = r
    print()
    print(f"{'method':<8} {'layout':<22} {'images/s':>9} {'s/step':>7} {'vs 1x2':>7} {'vs 1x1':>7}")
    for method in args.methods:
        one, two_threads = results[method, 1, 1]["images_per_s"], results[method, 1, 2]["images_per_s"]
        for procs, threads in LAYOUTS:
            r = results[method, procs, threads]
            layout = f"{procs} proc x {threads} thread" + ("s" if threads > 1 else "")
            print(f"{method:<8} {layout:<22} {r['images_per_s']:>9.1f} {r['step_s']:>7.3f} "
                  f"{r['images_per_s'] / two_threads:>6.2f}x {r['images_per_s'] / one:>6.2f}x")
    rows = collectives(args.batch // 2, args.reps)
    step = {m: results[m, 2, 1]["step_s"] * 1000 for m in args.methods}
    print(f"\ncollectives, 2 gloo processes x 1 thread (median of {args.reps} calls, slowest rank):")
    print(f"{'collective':<40} {'payload':<28} {'ms/call':>8} " + " ".join(f"{'% ' + m + ' step':>14}"
                                                                             for m in args.methods))
    for name, payload, ms in rows:
        shares = " ".join(f"{100 * ms / step[m]:>13.1f}%" for m in args.methods)
        print(f"{name:<40} {payload:<28} {ms:>8.2f} {shares}")


if __name__ == "__main__":
    main()
