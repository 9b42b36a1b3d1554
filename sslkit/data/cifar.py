"""CIFAR-10 and CIFAR-100 from their python-pickle batches (Krizhevsky 2009, "Learning Multiple Layers of
Features from Tiny Images").

The archive helpers here (`search_dirs`, `find_folder`, `download_archive`) are shared with `stl10.py`.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslkit.data.base import TensorImageDataset
from sslkit.errors import DataError, one_line

SOURCES: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels_key": b"labels",
        "names_key": b"label_names",
        "num_classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels_key": b"fine_labels",
        "names_key": b"fine_label_names",
        "num_classes": 100,
    },
}
_PIXELS = 3 * 32 * 32


def search_dirs(name: str, folder: str, root: str | None) -> list[Path]:
    """The directories that may hold the extracted `folder`'s files, in search order.

    Each base (data.root, $SSLKIT_DATA, $SSLKIT_DATA/<name>) is tried as the parent of `folder`
    and as `folder` itself; nothing system-wide is searched.
    """
    bases = []
    if root:
        bases.append(Path(root).expanduser())
    env = os.environ.get("SSLKIT_DATA")
    if env:
        bases += [Path(env).expanduser(), Path(env).expanduser() / name]
    dirs: list[Path] = []
    for base in bases:
        for d in (base / folder, base):
            if d not in dirs:
                dirs.append(d)
    return dirs


def download_target(name: str, root: str | None) -> Path:
    """Where `data.download=true` extracts an archive: data.root, else $SSLKIT_DATA/<name>, else the cache."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("SSLKIT_DATA")
    return (Path(env).expanduser() if env else Path("~/.cache/sslkit").expanduser()) / name


def download_archive(url: str, folder: str, target: Path) -> Path:
    """Fetch the .tar.gz at `url` and extract it so that `target/folder` appears complete or not at all."""
    target.mkdir(parents=True, exist_ok=True)
    archive = target / (url.rsplit("/", 1)[-1] + ".part")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=target))
    try:
        urllib.request.urlretrieve(url, archive)
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # pragma: no cover - Python without the extraction filters
                tar.extractall(tmp)
        if not (tmp / folder).is_dir():
            raise DataError(f"{url} did not contain the expected {folder}/ folder")
        if (target / folder).exists():
            shutil.rmtree(target / folder)
        (tmp / folder).rename(target / folder)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise DataError(f"could not download {url} to {target}: {one_line(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        archive.unlink(missing_ok=True)
    return target / folder


def find_folder(name: str, folder: str, root: str | None, files: Sequence[str], download: bool,
                url: str) -> Path:
    """The first searched directory holding all `files`; downloads `url` when asked and nothing is found."""
    dirs = search_dirs(name, folder, root)
    for d in dirs:
        if all((d / f).is_file() for f in files):
            return d
    if download:
        target = download_target(name, root)
        if target.name == folder:  # data.root names the extracted folder itself
            target = target.parent
        if all((target / folder / f).is_file() for f in files):  # an earlier download into the cache
            return target / folder
        found = download_archive(url, folder, target)
        missing = [f for f in files if not (found / f).is_file()]
        if missing:
            raise DataError(f"{url} was extracted to {found} but lacks {', '.join(missing)}")
        return found
    searched = ", ".join(str(d) for d in dirs) or "nothing: data.root and $SSLKIT_DATA are unset"
    raise DataError(f"{name} not found (searched {searched}); pass data.download=true, or download {url}, "
                    f"extract it and put its {folder}/ folder under data.root (or $SSLKIT_DATA)")


# The only globals a CIFAR pickle refers to: numpy arrays (py2 and py3 pickles) and protocol-2 bytes.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only, so a dataset file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


#: a CIFAR batch is 31 MB; a larger file is refused unread. The pickle is read from memory, so a length
#: field that claims gigabytes cannot make the unpickler allocate them.
MAX_PICKLE_BYTES = 512 << 20


def _unpickle(path: Path) -> dict[bytes, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise ValueError(f"{size} bytes, over {MAX_PICKLE_BYTES >> 20} MiB")
        data = path.read_bytes()
        for _ in pickletools.genops(data):  # a length field is checked against the bytes really there
            pass  # before the unpickler allocates what it claims
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # unpickling garbage can raise almost anything
        msg = f"{path} is not a valid CIFAR pickle ({one_line(exc)}); delete it and fetch it again"
        raise DataError(msg) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a valid CIFAR pickle (a {type(obj).__name__}, not a dict); "
                        "delete it and fetch it again")
    return obj


def read_batch(path: Path, labels_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch: its images as uint8 (N, 3072) rows and its int64 labels in 0..num_classes-1."""
    batch = _unpickle(path)
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[labels_key], dtype=np.int64)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # a mutated label can be a huge int
        raise DataError(f"{path} is not a valid CIFAR batch (missing or bad {one_line(exc)}); "
                        "delete it and fetch it again") from None
    if data.ndim != 2 or data.shape[1] != _PIXELS or data.dtype != np.uint8 or labels.shape != (len(data),):
        raise DataError(f"{path} is not a valid CIFAR batch: expected N x {_PIXELS} uint8 data and N labels, "
                        f"got {data.dtype} {data.shape} data and {labels.size} labels")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataError(f"{path} is not a valid CIFAR batch: label {labels[bad][0]} "
                        f"is outside 0..{num_classes - 1}")
    return data, labels


def read_class_names(path: Path, key: bytes, num_classes: int) -> list[str]:
    """The class names stored in a CIFAR meta pickle."""
    meta = _unpickle(path)
    names = meta.get(key)
    if not isinstance(names, list) or len(names) != num_classes:
        raise DataError(f"{path} is not a valid CIFAR meta file: expected {num_classes} names under {key!r}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def load_cifar(name: str, root: str | None, split: str, download: bool = False) -> TensorImageDataset:
    """The "train" (50k) or "test" (10k) split of `name` ("cifar10" or "cifar100") as (N, 3, 32, 32) uint8."""
    if name not in SOURCES:
        raise ValueError(f"name must be one of {tuple(SOURCES)}, got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    src = SOURCES[name]
    files = [*src["train"], *src["test"], src["meta"]]
    base = find_folder(name, src["folder"], root, files, download, src["url"])
    n_cls = src["num_classes"]
    parts = [read_batch(base / f, src["labels_key"], n_cls) for f in src[split]]
    data = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    classes = read_class_names(base / src["meta"], src["names_key"], n_cls)
    images = np.require(data, dtype=np.uint8, requirements=["C", "W"]).reshape(-1, 3, 32, 32)
    return TensorImageDataset(torch.from_numpy(images), torch.from_numpy(labels), n_cls, classes=classes)
