"""Datasets and loaders. Every dataset yields (uint8 3xHxW tensor, label) items; -1 marks unlabeled."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from sslkit.errors import ConfigError, DataError
from sslkit.plugins import Registry

SPLITS = ("pretrain", "train", "test")

#: A dataset loader: (the `data` config, split, subset) -> the dataset of that split ("pretrain"
#: may include unlabeled images). A loader with `decodes_images = True` decodes files per item.
DatasetLoader = Callable[[Mapping[str, Any], str], Dataset]
#: `data.name` -> loader: the built-ins below, the `sslkit.datasets` entry points, `package.module:load`
DATASETS: Registry[DatasetLoader] = Registry("dataset", "sslkit.datasets")


def _split(split: str) -> str:
    return "test" if split == "test" else "train"


@DATASETS.register("fashion_mnist")
@DATASETS.register("mnist")
def _idx(cfg: Mapping[str, Any], split: str) -> Dataset:
    from sslkit.data.idx import load_idx_dataset

    return load_idx_dataset(str(cfg["name"]), cfg.get("root"), _split(split), bool(cfg.get("download")))


@DATASETS.register("cifar10")
@DATASETS.register("cifar100")
def _cifar(cfg: Mapping[str, Any], split: str) -> Dataset:
    from sslkit.data.cifar import load_cifar

    return load_cifar(str(cfg["name"]), cfg.get("root"), _split(split), bool(cfg.get("download")))


@DATASETS.register("stl10")
def _stl10(cfg: Mapping[str, Any], split: str) -> Dataset:
    from sslkit.data.stl10 import load_stl10

    stl_split = {"pretrain": cfg.get("train_split", "train+unlabeled"), "train": "train", "test": "test"}[split]
    return load_stl10(cfg.get("root"), stl_split, bool(cfg.get("download")))


@DATASETS.register("imagefolder")
def _imagefolder(cfg: Mapping[str, Any], split: str) -> Dataset:
    from sslkit.data.imagefolder import load_imagefolder

    return load_imagefolder(cfg.get("root"), split, int(cfg["image_size"]), float(cfg.get("max_bad_fraction", 0.01)),
                            str(cfg.get("symlinks") or "inside"))


_imagefolder.decodes_images = True  # type: ignore[attr-defined]


def decodes_images(name: str) -> bool:
    """Whether dataset `name` decodes images per item (and so wants DataLoader workers)."""
    return bool(getattr(DATASETS.get(str(name), allow_import=False), "decodes_images", False))


def build_dataset(cfg: Mapping[str, Any], split: str, subset: int | None = None,
                  allow_import: bool | None = False) -> Dataset:
    """The `split` of dataset `cfg["name"]`: "pretrain" (may include unlabeled images), "train" or "test".
    `data.name` may be `package.module:load` only with `allow_import` (a name typed on the command
    line): evaluations read the data config of a checkpoint, a file that must not choose code.

    `subset` keeps N images, stratified by class and seeded by `data.subset_seed`
    (`sslkit.data.subset.stratified_indices`); for "pretrain" it defaults to `data.subset`.
    """
    name = str(cfg["name"])
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    load = DATASETS.get(name, allow_import)
    root = cfg.get("root")
    if root and not cfg.get("download") and not Path(str(root)).expanduser().exists():
        raise DataError(f"data.root={root} does not exist; point data.root at the {name} files"
                        + (" or pass data.download=true" if name != "imagefolder" else ""))
    if split == "pretrain" and subset is None:
        subset = cfg.get("subset")
    ds = load(cfg, split)
    if subset is not None:
        if int(subset) <= 0:
            raise ConfigError(f"data.subset must be a positive number of images, got {subset}")
        subset_of = getattr(ds, "subset", None)
        if subset_of is None:
            raise ConfigError(f"dataset '{name}' has no subset(); data.subset needs one")
        ds = subset_of(int(subset), int(cfg.get("subset_seed") or 0))
    return ds


def bad_count(dataset: Dataset) -> int:
    """Unreadable images met so far (only datasets decoded from files can have any)."""
    counter = getattr(dataset, "bad_count", None)
    return int(counter()) if callable(counter) else 0
