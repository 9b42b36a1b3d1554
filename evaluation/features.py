"""Frozen features for evaluation: pooled backbone outputs (or raw pixels), cached on disk.

Backbone features use the deterministic evaluation view (short side to `data.image_size`, centre
crop, normalise), the backbone in eval mode under `torch.no_grad`. In-memory datasets are sliced
in batches and preprocessed with `batch_eval_preprocess`; others go through a DataLoader with the
per-image `eval_transform`. The cache key hashes the checkpoint file (path, size, mtime) and the
data settings, so a retrained checkpoint or another image size never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from sslkit.data.base import num_images
from sslkit.errors import DataError, one_line
from sslkit.files import remove_stale_temps, save_atomic

CACHE_VERSION = 3  # 2: subsets are stratified and seeded (were the first N); 3: exact remainder ties
KINDS = ("backbone", "pixels")


@dataclass
class Features:
    """(N, D) float32 features on the CPU with their (N,) labels."""

    feats: Tensor
    labels: Tensor
    num_classes: int
    seconds: float = 0.0
    cached: bool = False
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.feats.shape[0])


def labels_and_classes(dataset: Dataset) -> tuple[Tensor, int]:
    labels = dataset.targets.long()  # type: ignore[attr-defined]
    if len(labels) and int(labels.min()) < 0:
        raise DataError("the evaluation split has unlabeled images (label -1); kNN and linear probes "
                        "need labels")
    return labels.clone(), int(dataset.num_classes)  # type: ignore[attr-defined]


@torch.no_grad()
def backbone_features(backbone: nn.Module, dataset: Dataset, data: Mapping[str, Any], device: torch.device,
                      batch_size: int = 512, desc: str = "features", progress: str = "auto") -> Tensor:
    """Pooled features of every image, in dataset order; the backbone's train/eval mode is restored.

    Progress (images done, rate, ETA) goes to stderr as `desc` (see sslkit.engine.progress)."""
    from sslkit.augment import batch_eval_preprocess, eval_transform
    from sslkit.engine.progress import Progress

    size, mean, std = int(data["image_size"]), list(data["mean"]), list(data["std"])
    was_training = backbone.training
    backbone.eval()
    out: list[Tensor] = []
    bar = Progress(num_images(dataset), desc, "img", progress)
    try:
        if getattr(dataset, "in_memory", False):
            images: Tensor = dataset.images  # type: ignore[attr-defined]
            for start in range(0, images.shape[0], batch_size):
                x = batch_eval_preprocess(images[start:start + batch_size].to(device), size, mean, std)
                out.append(backbone(x).float().cpu())
                bar.update(x.shape[0])
        else:
            from sslkit.data.loader import eval_loader

            loader = eval_loader(dataset.with_transform(eval_transform(size, mean, std)),  # type: ignore[attr-defined]
                                 batch_size, int(data.get("num_workers") or 0))
            for x, _ in loader:
                out.append(backbone(x.to(device)).float().cpu())
                bar.update(x.shape[0])
    finally:
        bar.close()
        backbone.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def pixel_features(dataset: Dataset, image_size: int, batch_size: int = 2048, desc: str = "pixels",
                   progress: str = "auto") -> Tensor:
    """The raw-pixel baseline: uint8 images resized to `image_size` (antialiased), scaled to [0, 1]
    and flattened. Grayscale datasets keep one channel (copies would not change cosine similarity)."""
    out: list[Tensor] = []
    if getattr(dataset, "in_memory", False):
        images: Tensor = dataset.images  # type: ignore[attr-defined]
        batches = (images[s:s + batch_size] for s in range(0, images.shape[0], batch_size))
    else:
        from sslkit.data.loader import eval_loader

        batches = (x for x, _ in eval_loader(dataset, batch_size))
    from sslkit.engine.progress import Progress

    with Progress(num_images(dataset), desc, "img", progress) as bar:
        for x in batches:
            x = x.float().div_(255.0)
            if x.shape[-2:] != (image_size, image_size):
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                                  antialias=True)
            out.append(x.flatten(1))
            bar.update(x.shape[0])
    return torch.cat(out) if out else torch.zeros(0, 0)


def cache_key(kind: str, split: str, subset: int | None, data: Mapping[str, Any],
              checkpoint: Path | None) -> str:
    """A hash of everything the features depend on, and of nothing else: the subset's seed only when
    there is a subset (an unset seed is seed 0, as in `build_dataset`), values as plain numbers."""
    mean, std = data.get("mean"), data.get("std")
    ident: dict[str, Any] = {
        "version": CACHE_VERSION, "kind": kind, "split": split, "subset": subset,
        "subset_seed": None if subset is None else int(data.get("subset_seed") or 0),
        "data": {"name": data.get("name"), "root": data.get("root"), "image_size": int(data["image_size"]),
                 "mean": None if mean is None else [float(v) for v in mean],
                 "std": None if std is None else [float(v) for v in std]},
    }
    if kind == "backbone":
        if checkpoint is None:
            raise ValueError("backbone features need a checkpoint for their cache key")
        st = checkpoint.stat()
        ident["checkpoint"] = {"path": str(checkpoint.resolve()), "size": st.st_size,
                               "mtime_ns": st.st_mtime_ns}
    text = json.dumps(ident, sort_keys=True, default=str)
    return f"{kind}-{split}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def check_cached(blob: Any) -> tuple[Tensor, Tensor, int]:
    """A cache file's (feats, labels, num_classes), or ValueError unless it has the shape `load_features`
    writes: N x D floating features, N int64 labels in -1..C-1, C a positive int."""
    if not isinstance(blob, dict):
        raise ValueError(f"a {type(blob).__name__}, not a dict")
    feats, labels, num_classes = blob.get("feats"), blob.get("labels"), blob.get("num_classes")
    if not (isinstance(feats, Tensor) and feats.ndim == 2 and feats.is_floating_point()):
        raise ValueError("feats is not an N x D float tensor")
    if not (isinstance(labels, Tensor) and labels.dtype == torch.int64 and labels.shape == (len(feats),)):
        raise ValueError("labels is not N int64 labels")
    if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes > 0):
        raise ValueError("num_classes is not a positive int")
    if len(labels) and (int(labels.min()) < -1 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels outside -1..{num_classes - 1}")
    return feats, labels, num_classes


def load_features(kind: str, split: str, subset: int | None, data: Mapping[str, Any], *,
                  backbone: nn.Module | None = None, checkpoint: Path | None = None,
                  device: torch.device | None = None, batch_size: int = 512,
                  cache_dir: Path | None = None) -> Features:
    """Features of a stratified `subset` of the images of `split` ("train" or "test"), from `cache_dir` when
    present there (None: no cache)."""
    if kind not in KINDS:
        from sslkit.errors import ConfigError, suggestion

        raise ConfigError(f"unknown eval.features '{kind}'; {suggestion(kind, KINDS)}")
    start = time.perf_counter()
    path = cache_dir / f"{cache_key(kind, split, subset, data, checkpoint)}.pt" if cache_dir else None
    if path is not None and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            feats, labels, num_classes = check_cached(blob)
            return Features(feats, labels, num_classes, time.perf_counter() - start, cached=True, path=path)
        except Exception as exc:  # a damaged or foreign cache file is recomputed, with one notice
            print(f"sslkit: notice: recomputing the damaged feature cache {path} ({one_line(exc)})",
                  file=sys.stderr, flush=True)
            path.unlink(missing_ok=True)
    from sslkit.data import build_dataset

    dataset = build_dataset(data, split, subset)
    labels, num_classes = labels_and_classes(dataset)
    if kind == "pixels":
        feats = pixel_features(dataset, int(data["image_size"]), desc=f"pixels {split}")
    else:
        if backbone is None:
            raise ValueError("backbone features need a backbone")
        backbone.to(device or torch.device("cpu"))
        feats = backbone_features(backbone, dataset, data, device or torch.device("cpu"), batch_size,
                                  desc=f"features {split}")
    if path is not None:
        save_atomic({"feats": feats, "labels": labels, "num_classes": num_classes}, path)
        # a temporary of this entry untouched for a minute was left by a killed process (a live one renames it at once)
        remove_stale_temps(path, older_than=60)
    return Features(feats, labels, num_classes, time.perf_counter() - start, cached=False, path=path)
