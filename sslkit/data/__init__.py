"""Datasets and loaders. Every dataset yields (uint8 3xHxW tensor, label) items; -1 marks unlabeled."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from sslkit.errors import ConfigError, DataError, suggestion

if TYPE_CHECKING:
    from sslkit.data.base import TensorImageDataset
    from sslkit.data.imagefolder import ImageFolderDataset

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "stl10", "imagefolder")
SPLITS = ("pretrain", "train", "test")
DECODED = ("imagefolder",)  # decoded from files per image (in DataLoader workers); the rest live in memory


def decodes_images(name: str) -> bool:
    """Whether dataset `name` decodes images per item (and so wants DataLoader workers)."""
    return str(name) in DECODED


def build_dataset(cfg: Mapping[str, Any], split: str, subset: int | None = None) -> Dataset:
    """The `split` of dataset `cfg["name"]`: "pretrain" (may include unlabeled images), "train" or "test".

    `subset` keeps N images, stratified by class and seeded by `data.subset_seed`
    (`sslkit.data.subset.stratified_indices`); for "pretrain" it defaults to `data.subset`.
    """
    name = cfg["name"]
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = cfg.get("root")
    if root and not cfg.get("download") and not Path(str(root)).expanduser().exists():
        raise DataError(f"data.root={root} does not exist; point data.root at the {name} files"
                        + (" or pass data.download=true" if name != "imagefolder" else ""))
    if split == "pretrain" and subset is None:
        subset = cfg.get("subset")
    ds: TensorImageDataset | ImageFolderDataset
    if name in ("fashion_mnist", "mnist"):
        from sslkit.data.idx import load_idx_dataset

        ds = load_idx_dataset(name, cfg.get("root"), "test" if split == "test" else "train",
                              bool(cfg.get("download")))
    elif name in ("cifar10", "cifar100"):
        from sslkit.data.cifar import load_cifar

        ds = load_cifar(name, cfg.get("root"), "test" if split == "test" else "train", bool(cfg.get("download")))
    elif name == "stl10":
        from sslkit.data.stl10 import load_stl10

        stl_split = {"pretrain": cfg.get("train_split", "train+unlabeled"), "train": "train", "test": "test"}[split]
        ds = load_stl10(cfg.get("root"), stl_split, bool(cfg.get("download")))
    elif name == "imagefolder":
        from sslkit.data.imagefolder import load_imagefolder

        ds = load_imagefolder(cfg.get("root"), split, int(cfg["image_size"]),
                              float(cfg.get("max_bad_fraction", 0.01)), str(cfg.get("symlinks") or "inside"))
    else:
        raise ConfigError(f"unknown dataset '{name}'; {suggestion(name, DATASETS)}")
    if subset is not None:
        if int(subset) <= 0:
            raise ConfigError(f"data.subset must be a positive number of images, got {subset}")
        ds = ds.subset(int(subset), int(cfg.get("subset_seed") or 0))
    return ds


def bad_count(dataset: Dataset) -> int:
    """Unreadable images met so far (only datasets decoded from files can have any)."""
    counter = getattr(dataset, "bad_count", None)
    return int(counter()) if callable(counter) else 0
