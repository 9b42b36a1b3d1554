"""The batched and per-image backends sample the same distribution of views (two-sample KS tests).

Both backends augment the same few colourised Fashion-MNIST images (synthetic shapes when the dataset
is not installed) many times; per-view statistics must be indistinguishable, while the same test
must reject a batched backend running a subtly different recipe.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from scipy.stats import ks_2samp

from sslkit.augment import AugRecipe, BatchedAugment, per_image_transform
from sslkit.errors import DataError

K = 4  # distinct source images
PER_IMAGE_DRAWS = 1600  # the slow side (~0.7 ms a view on one core)
BATCHED_DRAWS = 4096
AGREE_P = 1e-3  # 3 recipes x 7 statistics: a false alarm for ~2% of seeds; the seeds below are fixed
REJECT_P = 1e-6
BASE = dict(image_size=32, crop_ratio=(0.75, 4 / 3), gray_p=0.2, blur_sigma=(0.1, 2.0), blur_kernel_frac=0.1,
            flip_p=0.5, mean=(0.286, 0.286, 0.286), std=(0.353, 0.353, 0.353))
RECIPES = {  # configs/aug/*.yaml
    "mocov1": AugRecipe(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, blur_p=0.0,
                        order="gray_first", **BASE),
    "mocov2": AugRecipe(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, blur_p=0.5,
                        **BASE),
    "simclr": AugRecipe(crop_scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8, blur_p=0.5,
                        **BASE),
}


def source_images() -> torch.Tensor:
    """K uint8 3x28x28 colour images: tinted Fashion-MNIST items, or synthetic shapes without the dataset."""
    g = torch.Generator().manual_seed(0)
    try:
        from sslkit.data import build_dataset

        ds = build_dataset({"name": "fashion_mnist"}, "train")
        gray = ds.images[torch.arange(K) * 97, :1].float() / 255  # a T-shirt, a sneaker, ...
    except DataError:
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
        centre = torch.rand(K, 2, generator=g) * 0.6 - 0.3
        radius = torch.rand(K, 2, generator=g) * 0.4 + 0.3
        ellipse = (((xx - centre[:, :1, None]) / radius[:, :1, None]) ** 2
                   + ((yy - centre[:, 1:, None]) / radius[:, 1:, None]) ** 2) < 1
        stripes = 0.5 + 0.5 * torch.sin(xx * 9 + yy * 4)
        gray = (ellipse * (0.6 + 0.4 * stripes)).unsqueeze(1)
    tint = torch.rand(K, 3, 1, 1, generator=g) * 0.8 + 0.2
    background = torch.rand(K, 3, 1, 1, generator=g) * 0.3
    return ((background * (1 - gray) + tint * gray) * 255).round().to(torch.uint8)


def view_stats(v: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-view summaries sensitive to brightness/contrast, colour, crop scale and aspect, blur and flips."""
    std = v.std(dim=(1, 2, 3))
    half = v.shape[-1] // 2
    grad_x = (v[..., 1:] - v[..., :-1]).abs().mean(dim=(1, 2, 3))
    grad_y = (v[..., 1:, :] - v[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return {
        "mean": v.mean(dim=(1, 2, 3)),
        "std": std,
        "grad_x": grad_x,
        "asymmetry": v[..., :half].mean(dim=(1, 2, 3)) - v[..., half:].mean(dim=(1, 2, 3)),
        "channel_spread": (v.amax(dim=1) - v.amin(dim=1)).mean(dim=(1, 2)),
        "roughness_x": grad_x / std.clamp(min=1e-3),  # zoom and blur, free of contrast
        "roughness_y": grad_y / std.clamp(min=1e-3),
    }



@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return source_images()


@pytest.fixture(scope="module")
def per_image_stats(images) -> dict[str, dict[str, torch.Tensor]]:
    """Stats of PER_IMAGE_DRAWS torchvision views per recipe, image d % K for draw d."""
    out = {}
    with torch.random.fork_rng():
        for seed, (name, recipe) in enumerate(RECIPES.items()):
            torch.manual_seed(100 + seed)
            transform = per_image_transform(recipe)
            views = torch.stack([transform(images[d % K]) for d in range(PER_IMAGE_DRAWS)])
            out[name] = view_stats(views)
    return out


def batched_stats(images: torch.Tensor, recipe: AugRecipe, seed: int) -> dict[str, torch.Tensor]:
    """Stats of BATCHED_DRAWS batched views, in batches of 512 (cache-sized, as in training)."""
    aug, g = BatchedAugment(recipe), torch.Generator().manual_seed(seed)
    batch = images.repeat(512 // K, 1, 1, 1)
    views = torch.cat([aug(batch, g) for _ in range(BATCHED_DRAWS // 512)])
    return view_stats(views)


def ks_pvalues(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Two-sample KS p-value per statistic, after standardising each statistic within each source image.

    View d of either sample shows image d % K. Subtracting that image's median and dividing by its
    inter-quartile range, both taken over the two samples pooled, removes the between-image spread
    (a T-shirt is smoother than a sneaker whatever the crop) and leaves the augmentation's. The
    transform is symmetric in the two samples, so under "same distribution" the test stays valid.
    """
    out = {}
    for key in a:
        x, y = a[key].clone(), b[key].clone()
        ix, iy = torch.arange(len(x)) % K, torch.arange(len(y)) % K
        for k in range(K):
            pooled = torch.cat([x[ix == k], y[iy == k]])
            q1, q2, q3 = pooled.quantile(torch.tensor([0.25, 0.5, 0.75]))
            scale = (q3 - q1).clamp(min=1e-6)
            x[ix == k] = (x[ix == k] - q2) / scale
            y[iy == k] = (y[iy == k] - q2) / scale
        out[key] = float(ks_2samp(x.numpy(), y.numpy()).pvalue)
    return out


@pytest.mark.parametrize("name", list(RECIPES))
def test_backends_sample_the_same_distribution(name, images, per_image_stats):
    p = ks_pvalues(per_image_stats[name], batched_stats(images, RECIPES[name], seed=7))
    assert min(p.values()) > AGREE_P, p


@pytest.mark.parametrize(("name", "change"), [
    ("mocov2", {"crop_scale": (0.5, 1.0)}),
    ("simclr", {"crop_scale": (0.2, 1.0)}),  # MoCo's crop range instead of SimCLR's
    ("mocov2", {"gray_p": 0.1}),
    ("mocov2", {"blur_p": 0.0}),
    ("mocov2", {"flip_p": 0.0}),
    ("simclr", {"jitter": (0.4, 0.4, 0.4, 0.1)}),  # MoCo v2's colour strength
], ids=["mocov2-crop", "simclr-crop", "mocov2-gray", "mocov2-blur", "mocov2-flip", "simclr-jitter"])
def test_the_comparison_rejects_a_different_recipe(name, change, images, per_image_stats):
    p = ks_pvalues(per_image_stats[name], batched_stats(images, replace(RECIPES[name], **change), seed=7))
    assert min(p.values()) < REJECT_P, p

