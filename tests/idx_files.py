"""Tiny IDX datasets written byte by byte (LeCun's format: 0, 0, dtype code, ndim, big-endian uint32
dims, then the data), so tests can check a pixel-exact read and train on a few images instantly."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file of `array`, built by hand."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes(order="C")


def write_idx_dataset(root: Path, n_train: int = 64, n_test: int = 32, size: int = 28,
                      seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Four gzipped IDX files in `root` (an MNIST-style dataset); returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, array in zip(FILES[split], (images, labels), strict=True):
            (root / name).write_bytes(gzip.compress(idx_bytes(array)))
        out[split] = (images, labels)
    return out
