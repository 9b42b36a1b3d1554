"""MNIST and Fashion-MNIST from their IDX `.gz` files (LeCun et al. 1998; Xiao et al. 2017)."""

from __future__ import annotations

import gzip
import os
import struct
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslkit.data.base import TensorImageDataset
from sslkit.errors import DataError

FILES: dict[str, tuple[str, ...]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SOURCES: dict[str, dict[str, Any]] = {
    "fashion_mnist": {
        "system": "/usr/share/datasets/fashion-mnist",
        "install": "apt-get install dataset-fashion-mnist (as root), or pass data.download=true",
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    },
    "mnist": {
        "system": "/usr/share/datasets/mnist",
        "install": "pass data.download=true, or put the four IDX .gz files in data.root",
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "classes": [str(i) for i in range(10)],
    },
}
_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped): magic, dims, then the big-endian array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype not in _DTYPES:
            raise ValueError("bad magic number")
        shape = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=_DTYPES[dtype], offset=4 + 4 * ndim)
        return arr.reshape(shape)
    except (OSError, ValueError, EOFError, struct.error) as exc:
        raise DataError(f"{path} is not a valid IDX file ({exc}); delete it and fetch it again") from None


def candidate_roots(name: str, root: str | None) -> list[Path]:
    """Where the files are looked for: data.root alone when given (never a silent fallback to
    another copy); else $SSLKIT_DATA(/name), then the system path."""
    if root:
        return [Path(root).expanduser()]
    roots = []
    env = os.environ.get("SSLKIT_DATA")
    if env:
        roots += [Path(env) / name, Path(env)]
    roots.append(Path(SOURCES[name]["system"]))
    return roots


def _download(name: str, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for fname in FILES["train"] + FILES["test"]:
        target = root / fname
        if target.exists():
            continue
        try:
            urllib.request.urlretrieve(SOURCES[name]["url"] + fname, target.with_suffix(".part"))
        except OSError as exc:
            raise DataError(f"could not download {name} to {root}: {exc}") from None
        target.with_suffix(".part").rename(target)


def find_root(name: str, root: str | None, download: bool = False) -> Path:
    """The first candidate root holding all four files; downloads into the first one if asked."""
    roots = candidate_roots(name, root)
    for r in roots:
        if all((r / f).exists() for f in FILES["train"] + FILES["test"]):
            return r
    if download:
        target = roots[0] if root else Path(os.environ.get("SSLKIT_DATA", "~/.cache/sslkit")).expanduser() / name
        _download(name, target)
        return target
    searched = ", ".join(str(r) for r in roots)
    raise DataError(f"{name} not found (searched {searched}); install it with: {SOURCES[name]['install']}")


def load_idx_dataset(name: str, root: str | None, split: str, download: bool = False) -> TensorImageDataset:
    """`split` is "train" or "test"; images come back as (N, 1, 28, 28) uint8."""
    base = find_root(name, root, download)
    img_file, lbl_file = FILES["test" if split == "test" else "train"]
    images = read_idx(base / img_file)
    labels = read_idx(base / lbl_file)
    if images.ndim != 3 or len(images) != len(labels):
        raise DataError(f"{base / img_file}: expected N x H x W images matching {len(labels)} labels")
    tensor = torch.from_numpy(images.copy()).unsqueeze(1)
    return TensorImageDataset(tensor, torch.from_numpy(labels.astype(np.int64)), 10,
                              classes=SOURCES[name]["classes"])
