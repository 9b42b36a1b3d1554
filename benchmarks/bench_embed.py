"""How fast `sslkit embed` / `index` / `search` are (issue 21), for docs/benchmarks.md.

1. speed: embedding throughput at 224 px for ResNet-18 and ResNet-50 (random weights: speed does not
   depend on them) over a folder of JPEGs (320x240, decoded, resized, centre-cropped, normalised),
   against the bare forward pass of the same model on ready tensors, in the same run and interleaved
   (paired ratios). Target: embed >= 0.8x the bare forward, decoding included. fp32 throughout (embed's
   precision); the bf16 bare forward is shown for what `precision=auto` would pick on this CPU.
2. fmnist: Fashion-MNIST end to end through the CLI (fresh processes, start-up included): embed the 70k
   images as PNG files at 28 px with the demo encoder, build the index, search the 10k test images
   as queries. Target: all three within 2 minutes on 2 cores. Writing the PNGs is set-up, not timed.

    nice -n 19 .venv/bin/python benchmarks/bench_embed.py --part all --checkpoint runs/<demo run>
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_info  # noqa: E402

from sslkit.engine.hardware import apply_cpu_split, resolve_precision  # noqa: E402
from sslkit.evaluation.embed import Encoder, embed_folder  # noqa: E402
from sslkit.nn.backbones import build_backbone  # noqa: E402

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def write_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    """`n` photo-like 320x240 JPEGs (smooth random colour fields plus noise), quality 90."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        low = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((320, 240), Image.BICUBIC)
        img = np.clip(np.asarray(low, dtype=np.int16) + rng.integers(-20, 20, (240, 320, 3)), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def clocks() -> tuple[float, float]:
    """(wall, CPU of this process over all its threads) in seconds."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    now = clocks()
    return now[0] - start[0], now[1] - start[1]


@torch.no_grad()
def bare_forward(backbone: torch.nn.Module, n: int, batch: int, bf16: bool = False) -> tuple[float, float]:
    """(wall, CPU) seconds for the forward pass over `n` ready 224 px tensors in batches of `batch`."""
    x = torch.randn(batch, 3, 224, 224)
    start = clocks()
    for s in range(0, n, batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            backbone(x[: min(batch, n - s)])
    return since(start)


def speed_one(name: str, n: int, batch: int, repeats: int, workers: int, tmp: Path) -> None:
    """One model: `repeats` interleaved pairs of (bare forward, embed) over the same `n` images."""
    cpu = torch.device("cpu")
    folder = tmp / f"jpegs_{n}"
    if not folder.exists():
        write_jpegs(folder, n)
    torch.manual_seed(0)
    backbone, _ = build_backbone({"name": name})
    backbone.eval()
    encoder = Encoder(backbone, 224, *IMAGENET, source="random init", name=name)

    def embed(root: Path) -> tuple[float, float]:
        out = tmp / "out"
        shutil.rmtree(out, ignore_errors=True)
        start = clocks()
        embed_folder(encoder, root, out, cpu, batch, workers, chunk_size=4096, progress="none")
        return since(start)

    bare_forward(backbone, batch, batch)  # warm-up: oneDNN primitives, and embed's imports (pyarrow, decoders)
    write_jpegs(tmp / "warm", 4, seed=1)
    embed(tmp / "warm")
    embed_s: list[tuple[float, float]] = []
    bare_s: list[tuple[float, float]] = []
    for r in range(repeats):  # interleaved, alternating which goes first
        for label in ("bare", "embed") if r % 2 == 0 else ("embed", "bare"):
            if label == "bare":
                bare_s.append(bare_forward(backbone, n, batch))
            else:
                embed_s.append(embed(folder))
        (bw, bc), (ew, ec) = bare_s[-1], embed_s[-1]
        print(f"  {name} repeat {r + 1}: bare {n / bw:.1f} img/s ({bc / n * 1e3:.0f} ms CPU/img), "
              f"embed {n / ew:.1f} img/s ({ec / n * 1e3:.0f} ms CPU/img)", flush=True)
    wall = [b[0] / e[0] for b, e in zip(bare_s, embed_s, strict=True)]
    cpu = [b[1] / e[1] for b, e in zip(bare_s, embed_s, strict=True)]
    bf16 = n / bare_forward(backbone, n, batch, bf16=True)[0]
    bare_rate, embed_rate = (n / statistics.median(t[0] for t in ts) for ts in (bare_s, embed_s))
    print(f"{name} 224px, {n} JPEGs, batch {batch}, fp32: bare forward {bare_rate:.1f} img/s, embed {embed_rate:.1f}"
          f" img/s; embed/bare throughput = {statistics.median(wall):.3f} by wall time (paired median; each repeat "
          f"{', '.join(f'{r:.3f}' for r in wall)}), {statistics.median(cpu):.3f} by CPU time (each "
          f"{', '.join(f'{r:.3f}' for r in cpu)}); bare forward under bf16 autocast {bf16:.1f} img/s", flush=True)


def speed(names: list[str], counts: list[int], batch: int, repeats: int, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        for name, n in zip(names, counts, strict=True):
            speed_one(name, n, batch, repeats, workers, Path(tmp))


def write_fashion_folder(dest: Path) -> tuple[int, float]:
    """Fashion-MNIST's 60k + 10k images as PNGs in dest/{train,test}/<class>/, numbered 00000-69999 (the test
    images from 60000); (count, seconds)."""
    from sslkit.data.idx import load_idx_dataset

    start = time.perf_counter()
    count = 0
    for split in ("train", "test"):
        ds = load_idx_dataset("fashion_mnist", None, split)
        names = ds.classes
        for c in names:
            (dest / split / c.replace("/", "-")).mkdir(parents=True, exist_ok=True)
        images, labels = ds.images[:, 0].numpy(), ds.targets.numpy()
        first = 60000 if split == "test" else 0
        for i, (img, label) in enumerate(zip(images, labels, strict=True), start=first):
            Image.fromarray(img).save(dest / split / names[label].replace("/", "-") / f"{i:05d}.png")
            count += 1
    return count, time.perf_counter() - start


def cli(*args: str) -> tuple[float, float]:
    """Run `sslkit ARGS`; (wall seconds, CPU seconds of the process: user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "sslkit", *args], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if res.returncode != 0:
        raise SystemExit(f"sslkit {args[0]} failed:\n{res.stderr[-3000:]}")
    print(f"  sslkit {args[0]}: {seconds:.1f}s wall, {cpu:.1f}s CPU -- {res.stdout.strip().splitlines()[-1]}",
          flush=True)
    return seconds, cpu


def demo_encoder_checkpoint(path: Path) -> str:
    """A checkpoint of the demo's encoder (experiment=fmnist_demo: ResNet-18, small-image stem, width 16,
    28 px) at its random initialisation, in the format `sslkit train` writes: speed does not depend on weights."""
    from omegaconf import OmegaConf

    from sslkit.config import compose
    from sslkit.engine import checkpoint as ckpt
    from sslkit.files import save_atomic

    cfg = compose(["experiment=fmnist_demo"])
    torch.manual_seed(0)
    model, _ = build_backbone(OmegaConf.to_container(cfg.backbone, resolve=True))  # type: ignore[arg-type]
    save_atomic({"format": ckpt.FORMAT, "version": ckpt.VERSION, "config": OmegaConf.to_yaml(cfg, resolve=True),
                 "method": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, path)
    return str(path)


def fmnist(checkpoint: str | None, keep: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_fmnist_") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if checkpoint is None:
            checkpoint = demo_encoder_checkpoint(work / "demo_encoder_random_init.pt")
            print(f"  encoder: the demo's architecture at random initialisation ({checkpoint})", flush=True)
        folder = work / "fashion_mnist"
        if not (folder / "test").is_dir():
            count, secs = write_fashion_folder(folder)
            print(f"  set-up: wrote {count} PNGs in {secs:.1f}s (not timed below)", flush=True)
        for name in ("emb", "search"):
            shutil.rmtree(work / name, ignore_errors=True)
        (embed_s, embed_c) = cli("embed", f"checkpoint={checkpoint}", "data=imagefolder", f"data.root={folder}",
                      f"out={work / 'emb'}")
        (index_s, index_c) = cli("index", f"embeddings={work / 'emb'}")
        (search_s, search_c) = cli("search", f"index={work / 'emb'}", f"query={folder / 'test'}", "k=10",
                       f"out={work / 'search'}")
        total, cpu = embed_s + index_s + search_s, embed_c + index_c + search_c
        print(f"fashion-mnist end to end: embed 70000 {embed_s:.1f}s + index {index_s:.1f}s + search 10000 queries "
              f"{search_s:.1f}s = {total:.1f}s wall ({'within' if total <= 120 else 'OVER'} the 2-minute target); "
              f"{cpu:.1f}s of CPU in all, {cpu / 2:.1f}s if 2 idle cores shared it perfectly", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("speed", "fmnist", "all"), default="all")
    p.add_argument("--models", default="resnet18,resnet50")
    p.add_argument("--images", default="384,192", help="images per model for the speed part")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--checkpoint", help="the Fashion-MNIST encoder (a demo run); default: the demo's architecture "
                   "at random initialisation")
    p.add_argument("--keep", type=Path, help="keep the Fashion-MNIST PNGs, embeddings and search here")
    args = p.parse_args()
    split = apply_cpu_split(torch.device("cpu"), True)
    print(machine_info({"cpu capability": torch.backends.cpu.get_cpu_capability(),
                        "oneDNN bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                        "precision=auto picks": resolve_precision("auto", torch.device("cpu")),
                        "embed precision": "fp32", "nice": os.nice(0),
                        "threads + loader workers (sslkit's split)": f"{split.threads} + {split.workers}"}), flush=True)
    if args.part in ("speed", "all"):
        counts = [int(c) for c in args.images.split(",")]
        speed(args.models.split(","), counts, args.batch, args.repeats, split.workers)
    if args.part in ("fmnist", "all"):
        fmnist(args.checkpoint, args.keep)


if __name__ == "__main__":
    main()
