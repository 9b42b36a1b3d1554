"""Augmentation recipes (MoCo v1, MoCo v2 aug+, SimCLR; the views of BYOL, DINO, SwAV) in two backends that
sample the same distribution.

`per_image` runs torchvision.transforms.v2 on one image at a time (DataLoader workers, datasets on
disk); `batched` augments a whole in-memory batch with per-sample parameters on any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sslkit.augment.batched import BatchedAugment
from sslkit.augment.per_image import MultiView, eval_transform, per_image_transform
from sslkit.augment.recipe import AugRecipe
from sslkit.augment.views import (
    VIEW_SETS,
    VIEWS,
    BatchedViews,
    PerImageViews,
    ViewSpec,
    make_views,
    n_views,
    view_recipe,
    view_set,
    views_from_config,
)
from sslkit.errors import ConfigError, suggestion

BACKENDS = ("auto", "batched", "per_image")

__all__ = [
    "AugRecipe",
    "BACKENDS",
    "BatchedAugment",
    "BatchedViews",
    "MultiView",
    "PerImageViews",
    "VIEWS",
    "VIEW_SETS",
    "ViewSpec",
    "make_views",
    "n_views",
    "view_recipe",
    "view_set",
    "views_from_config",
    "batch_eval_preprocess",
    "eval_transform",
    "per_image_transform",
    "resolve_backend",
]


def resolve_backend(backend: str, in_memory: bool) -> str:
    """`auto` -> "batched" for in-memory datasets, else "per_image"; explicit choices pass through."""
    if backend == "auto":
        return "batched" if in_memory else "per_image"
    if backend not in BACKENDS:
        raise ConfigError(f"unknown aug.backend '{backend}'; {suggestion(str(backend), BACKENDS)}")
    return backend


def batch_eval_preprocess(images: Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]
                          ) -> Tensor:
    """`eval_transform` for a uint8 NCHW batch: short side to `image_size` (antialiased), centre crop,
    normalize."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1|3, H, W) images, got {tuple(images.shape)}")
    x = images.float().div_(255.0) if not images.is_floating_point() else images
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, _, h, w = x.shape
    # torchvision Resize(int): the short side becomes image_size, the long one int(size * long / short).
    if h <= w:
        new_h, new_w = image_size, int(image_size * w / h)
    else:
        new_h, new_w = int(image_size * h / w), image_size
    if (new_h, new_w) != (h, w):
        x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False,
                                            antialias=True)
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    x = x[..., top:top + image_size, left:left + image_size]
    m = torch.tensor(list(mean), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s

