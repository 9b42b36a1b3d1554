"""MNIST and Fashion-MNIST from their IDX `.gz` files (LeCun et al. 1998; Xiao et al. 2017)."""

from __future__ import annotations

import gzip
import os
import struct
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslkit.data.base import TensorImageDataset
from sslkit.errors import DataError, one_line

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


#: the largest IDX array read (2 GiB; Fashion-MNIST's 60k images are 47 MB, EMNIST's largest file 0.55 GB): a
#: header that claims more is refused before anything is allocated, and a .gz is decompressed in chunks, never
#: past what its header claims
MAX_IDX_BYTES = 2 << 30
_CHUNK = 16 << 20


def _read_at_most(f: Any, n: int) -> bytes:
    """Up to `n` bytes of `f`, read in chunks (a gzip bomb stops at `n`; memory follows the real data)."""
    parts, left = [], n
    while left > 0:
        part = f.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped): magic, dims, then the big-endian array.

    A hostile file (absurd dimensions, a truncated body, a gzip bomb) is a one-line DataError with
    bounded memory: at most MAX_IDX_BYTES, and never more than the header's own size claim plus one byte."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise ValueError("shorter than an IDX header")
            zero, dtype, ndim = struct.unpack(">HBB", head)
            if zero != 0 or dtype not in _DTYPES or ndim == 0:
                raise ValueError("bad magic number")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"truncated header: {ndim} dimensions announced")
            shape = struct.unpack(f">{ndim}I", dims)
            itemsize = np.dtype(_DTYPES[dtype]).itemsize
            need = itemsize * int(np.prod(shape, dtype=object))
            if need > MAX_IDX_BYTES:
                raise ValueError(f"header claims {' x '.join(map(str, shape))} items ({need} bytes), over the "
                                 f"{MAX_IDX_BYTES >> 30} GiB limit")
            data = _read_at_most(f, need + 1)
        if len(data) != need:
            raise ValueError(f"truncated or padded: the header's {' x '.join(map(str, shape))} needs {need} "
                             f"bytes of data, the file {'has more' if len(data) > need else f'has {len(data)}'}")
        return np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(shape)
    except (OSError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise DataError(f"{path} is not a valid IDX file ({one_line(exc)}); delete it and fetch it again") from None


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
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{base / img_file}: expected N x H x W unsigned-byte images matching N labels, got "
                        f"{images.dtype} {images.shape} images and {labels.shape} labels")
    n_classes = len(SOURCES[name]["classes"])
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise DataError(f"{base / lbl_file}: labels must lie in 0..{n_classes - 1}, found "
                        f"{labels.min()}..{labels.max()}")
    tensor = torch.from_numpy(images.copy()).unsqueeze(1)
    return TensorImageDataset(tensor, torch.from_numpy(labels.astype(np.int64)), 10,
                              classes=SOURCES[name]["classes"])
