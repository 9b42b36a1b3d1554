"""STL-10 from its binary files (Coates, Lee & Ng 2011, "An Analysis of Single-Layer Networks in
Unsupervised Feature Learning"): 5k labeled train, 8k test and 100k unlabeled 96x96 RGB images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sslkit.data.base import TensorImageDataset
from sslkit.data.cifar import find_folder
from sslkit.errors import ConfigError, DataError, one_line, suggestion

FOLDER = "stl10_binary"
URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
SPLITS = ("train", "test", "unlabeled", "train+unlabeled")
FILES: dict[str, tuple[str, str | None]] = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}
SIZE = 96
_IMAGE_BYTES = 3 * SIZE * SIZE
_CHUNK = 2048  # images copied per step out of the memory map


def count_images(path: Path) -> int:
    """The number of images in an `*_X.bin` file, from its size."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}") from None
    if size == 0 or size % _IMAGE_BYTES:
        raise DataError(f"{path} is {size} bytes, not a whole number of 3x{SIZE}x{SIZE} images "
                        f"({_IMAGE_BYTES} bytes each); delete it and fetch it again")
    return size // _IMAGE_BYTES


def read_labels(path: Path, n: int) -> np.ndarray:
    """The labels of a `*_y.bin` file (stored 1..10) as int64 0..9; there must be `n` of them."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}") from None
    if len(raw) != n:
        raise DataError(f"{path} holds {len(raw)} labels but its images file holds {n} images; "
                        "delete both and fetch them again")
    if n and (raw.min() < 1 or raw.max() > len(CLASSES)):
        raise DataError(f"{path} has labels outside 1..{len(CLASSES)} (found {raw.min()}..{raw.max()})")
    return raw.astype(np.int64) - 1


def copy_images(path: Path, out: np.ndarray) -> None:
    """Fill `out` (n, 3, 96, 96) from a column-major `*_X.bin` file, without an intermediate copy."""
    try:
        mm = np.memmap(path, dtype=np.uint8, mode="r", shape=out.shape)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}") from None
    try:
        for i in range(0, len(out), _CHUNK):
            # each channel is stored column by column: swap the last two axes to get (H, W)
            np.copyto(out[i: i + _CHUNK], mm[i: i + _CHUNK].transpose(0, 1, 3, 2))
    finally:
        del mm


def read_class_names(base: Path) -> list[str]:
    """The names in `class_names.txt`, or the standard ten when the file is absent."""
    path = base / "class_names.txt"
    if not path.is_file():
        return list(CLASSES)
    names = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(names) != len(CLASSES):
        raise DataError(f"{path} lists {len(names)} class names, expected {len(CLASSES)}")
    return names


def load_stl10(root: str | None, split: str, download: bool = False) -> TensorImageDataset:
    """`split` is "train", "test", "unlabeled" or "train+unlabeled"; unlabeled images get label -1.

    Images come back as one (N, 3, 96, 96) uint8 tensor, filled straight from memory-mapped files.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown STL-10 split '{split}'; {suggestion(split, SPLITS)}")
    parts = [FILES[p] for p in split.split("+")]
    needed = [f for part in parts for f in part if f is not None]
    base = find_folder("stl10", FOLDER, root, needed, download, URL)
    counts = [count_images(base / x) for x, _ in parts]
    labels = [read_labels(base / y, n) if y is not None else None
              for (_, y), n in zip(parts, counts, strict=True)]
    classes = read_class_names(base)
    total = sum(counts)
    images = torch.empty((total, 3, SIZE, SIZE), dtype=torch.uint8)
    targets = torch.full((total,), -1, dtype=torch.long)
    out = images.numpy()
    start = 0
    for (x, _), n, y in zip(parts, counts, labels, strict=True):
        copy_images(base / x, out[start: start + n])
        if y is not None:
            targets[start: start + n] = torch.from_numpy(y)
        start += n
    return TensorImageDataset(images, targets, len(CLASSES), classes=classes)
