"""Per-image backend: torchvision.transforms.v2 pipelines applied to one uint8 3xHxW tensor at a time.

This is the reference implementation of the recipe (the order of MoCo v2's `aug+`, arXiv 2003.04297,
and SimCLR appendix A); it runs in DataLoader workers for datasets that are read from disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2

from sslkit.augment.recipe import AugRecipe

ImageTransform = Callable[[Tensor], Tensor]


def per_image_transform(recipe: AugRecipe) -> ImageTransform:
    """crop -> jitter (p) -> grayscale (p) -> blur (p) -> flip (p) -> float [0, 1] -> solarize (p) ->
    normalize (grayscale before jitter with `order="gray_first"`, as the official MoCo v1 code).

    Solarizing the float image at 0.5 is PIL's `ImageOps.solarize(threshold=128)` on the uint8 one
    (x >= 128 <=> x / 255 >= 0.5, and 1 - x / 255 = (255 - x) / 255), whatever the input dtype."""
    steps: list[torch.nn.Module] = [
        v2.RandomResizedCrop(recipe.image_size, scale=recipe.crop_scale, ratio=recipe.crop_ratio,
                             antialias=True),
    ]
    colour: list[torch.nn.Module] = []
    if recipe.jitter_p > 0 and any(recipe.jitter):
        colour.append(v2.RandomApply([v2.ColorJitter(*recipe.jitter)], p=recipe.jitter_p))
    if recipe.gray_p > 0:
        colour.append(v2.RandomGrayscale(p=recipe.gray_p))
    steps += colour[::-1] if recipe.order == "gray_first" else colour
    if recipe.blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(recipe.blur_kernel_size, sigma=recipe.blur_sigma)],
                                    p=recipe.blur_p))
    if recipe.flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(p=recipe.flip_p))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if recipe.solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=0.5, p=recipe.solarize_p))
    steps.append(v2.Normalize(list(recipe.mean), list(recipe.std)))
    return v2.Compose(steps)


class MultiView:
    """`n_views` independent draws of `transform` on the same image (picklable for DataLoader workers)."""

    def __init__(self, transform: ImageTransform, n_views: int = 2) -> None:
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        self.transform = transform
        self.n_views = n_views

    def __call__(self, x: Tensor) -> list[Tensor]:
        return [self.transform(x) for _ in range(self.n_views)]

    def __repr__(self) -> str:
        return f"MultiView(n_views={self.n_views}, transform={self.transform!r})"


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    """Deterministic evaluation view: short side to `image_size` (antialiased), centre crop, normalize."""
    return v2.Compose([
        v2.Resize(image_size, antialias=True),
        v2.CenterCrop(image_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])
