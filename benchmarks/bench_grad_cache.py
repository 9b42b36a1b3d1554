"""SimCLR step time and peak memory with and without gradient caching (ResNet-18, 32 px images).

Every (batch, mode) runs in a fresh process, because a process's peak RSS cannot be reset: on CUDA
the peak is torch.cuda.max_memory_allocated, on the CPU the process's ru_maxrss, also shown less
the RSS just before the timed steps (the step's own working memory). "cached" is SimCLR with
method.chunk_size = --chunk (images of the 2N-view batch per chunk; Gao et al. 2021); "direct" is
one forward/backward over all 2N views. NT-Xent is computed block by block above 1024 views (the
default); `--ntxent dense` also runs every row with the dense 2N x 2N matrix (the earlier path), and
the last lines give each variant's peak at the largest batch over its peak at the smallest.

    .venv/bin/python benchmarks/bench_grad_cache.py                       # 256, 1024, 8192 (cached only)
    .venv/bin/python benchmarks/bench_grad_cache.py --batches 256 8192 --skip-direct-above 0 --ntxent both
    .venv/bin/python benchmarks/bench_grad_cache.py --loss-only --batches 256 8192 --ntxent both  # seconds
    .venv/bin/python benchmarks/bench_grad_cache.py --batches 64 256 --chunk 64 --steps 2
    python benchmarks/bench_grad_cache.py --skip-direct-above 100000      # on a GPU: everything
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    """Current resident set size (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def loss_child(args: argparse.Namespace) -> None:
    """NT-Xent's own step-2 memory: loss and d loss / d embeddings for 2 x batch random embeddings."""
    import torch

    from sslkit.contrastive.ntxent import ntxent_loss

    torch.manual_seed(0)
    z = torch.randn(2 * args.batch, 128, requires_grad=True)
    before = rss_mb()
    start = time.perf_counter()
    loss = ntxent_loss(*z.chunk(2), 0.1, block=None if args.ntxent == "dense" else 1024)
    loss.backward()
    record = {"batch": args.batch, "mode": "loss", "ntxent": args.ntxent, "device": "cpu",
              "seconds_per_step": time.perf_counter() - start, "images_per_s": 0.0, "loss": float(loss),
              "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before, "peak_cuda_mb": None}
    print("RESULT " + json.dumps(record), flush=True)


def child(args: argparse.Namespace) -> None:
    import functools

    import torch

    from sslkit.contrastive.ntxent import ntxent_loss
    from sslkit.methods.simclr import SimCLR

    if args.ntxent == "dense":  # the 2N x 2N matrix at every size
        sys.modules[SimCLR.__module__].ntxent_loss = functools.partial(ntxent_loss, block=None)  # type: ignore[attr-defined]
    from sslkit.nn.backbones import build_backbone

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    backbone, dim = build_backbone({"name": "resnet18", "small_images": args.small_images})
    head = {"kind": "mlp", "hidden_dim": 2048, "out_dim": 128, "num_layers": 2}
    chunk = args.chunk if args.mode == "cached" else None
    method = SimCLR(backbone, dim, head, temperature=0.1, gather_distributed=True, chunk_size=chunk).to(device).train()
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    size = args.image_size

    def step(batch: int) -> float:
        views = [torch.randn(batch, 3, size, size, device=device) for _ in range(2)]
        out = method(views)
        if not out.backward_done:
            out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss)

    step(min(args.batch, 16))  # warm-up: allocator, cuDNN, lazy inits
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = rss_mb()
    start = time.perf_counter()
    loss = 0.0
    for _ in range(args.steps):
        loss = step(args.batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    record = {"batch": args.batch, "mode": args.mode, "ntxent": args.ntxent, "chunk": chunk, "device": str(device),
              "seconds_per_step": seconds, "images_per_s": 2 * args.batch / seconds, "loss": loss,
              "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before,
              "peak_cuda_mb": (torch.cuda.max_memory_allocated() / 1024**2
                               if device.type == "cuda" else None)}
    print("RESULT " + json.dumps(record), flush=True)


def run_child(args: argparse.Namespace, batch: int, mode: str, ntxent: str) -> dict | None:
    cmd = [sys.executable, __file__, "--child", "--batch", str(batch), "--mode", mode, "--ntxent", ntxent,
           "--chunk", str(args.chunk), "--steps", str(args.steps), "--image-size", str(args.image_size),
           "--device", args.device]
    if args.small_images:
        cmd.append("--small-images")
    if args.loss_only:
        cmd.append("--loss-only")
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"  batch {batch} {mode}: failed (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:]}",
          flush=True)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 8192])
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--skip-direct-above", type=int, default=1024,
                   help="no direct (uncached) step for batches above this (memory/time on a CPU)")
    p.add_argument("--steps", type=int, default=1,
                   help="timed steps per configuration (after a small warm-up)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--small-images", action="store_true", help="CIFAR stem (3x3 conv, no max-pool)")
    p.add_argument("--device", default="auto")
    p.add_argument("--ntxent", choices=["blockwise", "dense", "both"], default="blockwise",
                   help="NT-Xent: block by block above 1024 views (sslkit's default), the dense matrix, or both")
    p.add_argument("--loss-only", action="store_true",
                   help="only NT-Xent's loss and gradient on random 128-d embeddings (no encoder)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["direct", "cached", "loss"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        (loss_child if args.loss_only else child)(args)
        return
    stem = "CIFAR stem" if args.small_images else "ImageNet stem"
    print(f"SimCLR ResNet-18 ({stem}), {args.image_size} px, MLP head 2048-128, SGD; chunk {args.chunk} "
          f"images; {args.steps} timed step(s) after a warm-up; one fresh process per row", flush=True)
    import torch

    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'batch':>6} {'mode':>7} {'ntxent':>9} {'device':>7} {'s/step':>8} {'img/s':>8} {'peak MB':>9} "
          f"{'step MB':>9} {'loss':>7}", flush=True)
    variants = ["blockwise", "dense"] if args.ntxent == "both" else [args.ntxent]
    peaks: dict[tuple[str, str], dict[int, float]] = {}
    for batch in args.batches:
        for mode in (("loss",) if args.loss_only else ("direct", "cached")):
            if mode == "direct" and batch > args.skip_direct_above:
                note = f"skipped (--skip-direct-above {args.skip_direct_above})"
                print(f"{batch:>6} {mode:>7} {note:>40}", flush=True)
                continue
            if mode == "cached" and 2 * batch <= args.chunk and not args.loss_only:
                continue  # one chunk: the same computation as direct
            for ntxent in variants:
                if ntxent == "dense" and 2 * batch <= 1024:
                    continue  # the blockwise row already used the dense matrix (one block)
                r = run_child(args, batch, mode, ntxent)
                if r is None:
                    continue
                cuda = r["peak_cuda_mb"] is not None
                peak = r["peak_cuda_mb"] if cuda else r["peak_rss_mb"]
                step_mb = r["peak_cuda_mb"] if cuda else r["peak_rss_mb"] - r["rss_before_mb"]
                name = ntxent if 2 * batch > 1024 else "(1 block)"
                print(f"{batch:>6} {mode:>7} {name:>9} {r['device']:>7} {r['seconds_per_step']:8.2f} "
                      f"{r['images_per_s']:8.0f} {peak:9.0f} {step_mb:9.0f} {r['loss']:7.3f}", flush=True)
                for v in (variants if 2 * batch <= 1024 else [ntxent]):
                    peaks.setdefault((mode, v), {})[batch] = peak
    for (mode, ntxent), by_batch in peaks.items():
        lo, hi = min(by_batch), max(by_batch)
        if lo != hi:
            print(f"peak at batch {hi} / peak at batch {lo} ({mode}, NT-Xent {ntxent}): "
                  f"{by_batch[hi] / by_batch[lo]:.2f}x", flush=True)
    print("peak MB: CUDA max allocated (GPU) or peak RSS of the process (CPU); step MB on the CPU: peak RSS "
          "less the RSS before the timed steps", flush=True)


if __name__ == "__main__":
    main()
