"""Two-view augmentation throughput: sslkit batched vs sslkit per-image vs lightly's MoCoV2Transform.

All three augment the same 28x28 Fashion-MNIST training images to 32x32 view pairs with the MoCo v2
"aug+" recipe (arXiv 2003.04297): the batched backend on uint8 batches sliced from memory, the
per-image backend image by image as a DataLoader worker calls it, lightly on the same images as PIL.

    .venv/bin/python benchmarks/bench_augment.py [--batch-size 256] [--threads 1,2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from sslkit.augment import AugRecipe, BatchedAugment, MultiView, per_image_transform, resolve_backend
from sslkit.errors import DataError

MEAN, STD = (0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530)  # configs/data/fashion_mnist.yaml


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256, help="batched backend: images per call")
    p.add_argument("--batched-images", type=int, default=2048, help="images per timed batched run")
    p.add_argument("--per-image-images", type=int, default=512, help="images per timed per-image/lightly run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", default="1,2", help="comma-separated torch.set_num_threads values")
    p.add_argument("--tint", action="store_true",
                   help="tint each image with a random colour: RGB content for all backends (the batched "
                        "backend otherwise runs grey images, R = G = B, on one channel)")
    return p.parse_args(argv)


def load_images(n: int) -> tuple[torch.Tensor, str]:
    """(n, 3, 28, 28) uint8 Fashion-MNIST training images, or random ones when the dataset is missing."""
    try:
        from sslkit.data import build_dataset

        ds = build_dataset({"name": "fashion_mnist"}, "train", subset=n)
        return ds.images[:n].expand(-1, 3, -1, -1).contiguous(), "fashion_mnist train"
    except DataError as exc:
        print(f"warning: {exc}; using random images", file=sys.stderr)
        return torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8), "random uint8 (dataset missing)"


def mocov2_recipe(image_size: int) -> AugRecipe:
    """configs/aug/mocov2.yaml with the Fashion-MNIST data settings."""
    return AugRecipe(image_size=image_size, crop_scale=(0.2, 1.0), crop_ratio=(0.75, 4 / 3),
                     jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0),
                     blur_kernel_frac=0.1, flip_p=0.5, mean=MEAN, std=STD)


def pairs_per_second(runs: dict[str, Callable[[], int]], repeats: int) -> dict[str, list[float]]:
    """Each run() augments some images into view pairs and returns how many. One warm-up call each,
    then the backends take turns, so that load from other processes hits them alike."""
    for run in runs.values():
        run()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            n = run()
            rates[name].append(n / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    n = max(args.batched_images, args.per_image_images)
    images, source = load_images(n)
    if args.tint:
        tint = torch.rand(n, 3, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.7 + 0.3
        images = (images.float() * tint).round().to(torch.uint8)
        source += ", tinted to RGB"
    recipe = mocov2_recipe(args.image_size)

    from lightly import __version__ as lightly_version
    from lightly.transforms import MoCoV2Transform
    from PIL import Image

    lightly = MoCoV2Transform(input_size=args.image_size, normalize={"mean": list(MEAN), "std": list(STD)})
    pils = [Image.fromarray(images[k].permute(1, 2, 0).numpy()) for k in range(args.per_image_images)]
    batched = BatchedAugment(recipe)
    two_views = MultiView(per_image_transform(recipe), n_views=2)
    batches = list(images[: args.batched_images].split(args.batch_size))
    singles = list(images[: args.per_image_images])

    def run_batched() -> int:
        for b in batches:
            batched(b), batched(b)  # two independent views of every image
        return args.batched_images

    def run_per_image() -> int:
        for x in singles:
            two_views(x)
        return args.per_image_images

    def run_lightly() -> int:
        for im in pils:
            lightly(im)
        return args.per_image_images

    import torchvision

    cli = argv if argv is not None else sys.argv[1:]
    print(f"command: python benchmarks/bench_augment.py {' '.join(cli)}".rstrip())
    print(f"args: {vars(args)}")
    print(f"machine: nproc={os.cpu_count()} ({platform.processor() or platform.machine()}), "
          f"python {platform.python_version()}, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, lightly {lightly_version}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"images: {source}, 28x28 -> {args.image_size}x{args.image_size}, recipe mocov2 (aug+); "
          f"median of {args.repeats} runs (best in brackets)\n")

    backends = {"batched": run_batched, "per_image": run_per_image, "lightly": run_lightly}
    header = f"{'backend':<10} {'threads':>7} {'pairs/s':>17} {'pairs/s/core':>13} {'vs lightly':>11}"
    print(header)
    print("-" * len(header))
    default = resolve_backend("auto", in_memory=True)
    summary = {}
    for t in threads:
        torch.set_num_threads(t)
        rates = pairs_per_second(backends, args.repeats)
        ref = statistics.median(rates["lightly"])
        for name, r in rates.items():
            med = statistics.median(r)
            summary[(name, t)] = med / ref
            print(f"{name:<10} {t:>7} {med:>9.0f} [{max(r):>5.0f}] {med / t:>13.0f} {med / ref:>10.2f}x")
    torch.set_num_threads(threads[0])
    print(f"\ndefault backend for in-memory data (aug.backend=auto): {default}; "
          f"{summary[(default, threads[0])]:.2f}x lightly at {threads[0]} thread(s) (target >= 3x)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
