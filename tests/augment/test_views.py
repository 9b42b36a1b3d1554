"""Solarize in both backends, the named views and view sets, and multi-crop at several sizes through the
batched backend and the per-image (DataLoader) path."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF

from sslkit.augment import (
    AugRecipe,
    BatchedAugment,
    BatchedViews,
    PerImageViews,
    make_views,
    n_views,
    per_image_transform,
    view_recipe,
    view_set,
    views_from_config,
)
from sslkit.data.base import TensorImageDataset, collate
from sslkit.errors import ConfigError
from tests.augment.test_aug_backends_agree import AGREE_P, REJECT_P, K, batched_stats, ks_pvalues, source_images
from tests.augment.test_aug_backends_agree import view_stats as stats_of

MEAN, STD = (0.286, 0.286, 0.286), (0.353, 0.353, 0.353)
IDENTITY = AugRecipe(image_size=24, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter=(0.0, 0.0, 0.0, 0.0),
                     jitter_p=0.0, gray_p=0.0, blur_p=0.0, blur_sigma=(0.1, 2.0), blur_kernel_frac=0.1,
                     flip_p=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _images(n: int, size: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).round().to(torch.uint8)


# ----------------------------------------------------------------------------- solarize

def test_solarize_equals_torchvision_in_both_backends_and_dtypes():
    x = _images(8)
    always = replace(IDENTITY, solarize_p=1.0)
    expected = TF.to_dtype(TF.solarize(x, 128), torch.float32, scale=True)  # PIL's solarize(threshold=128)
    assert not torch.equal(expected, TF.to_dtype(x, torch.float32, scale=True))
    torch.testing.assert_close(BatchedAugment(always)(x), expected, rtol=0, atol=1e-6)  # uint8 batch
    torch.testing.assert_close(BatchedAugment(always)(x.float() / 255), expected, rtol=0, atol=1e-6)  # float
    per_image = per_image_transform(always)
    torch.testing.assert_close(torch.stack([per_image(v) for v in x]), expected, rtol=0, atol=1e-6)
    never = BatchedAugment(IDENTITY)(x)
    torch.testing.assert_close(never, TF.to_dtype(x, torch.float32, scale=True), rtol=0, atol=1e-6)


def test_solarize_mask_has_its_probability_and_leaves_the_other_draws_unchanged():
    p = BatchedAugment(replace(IDENTITY, solarize_p=0.2)).sample_params(20000, 24, 24, torch.Generator().manual_seed(0))
    assert abs(p["solarize"].float().mean().item() - 0.2) < 0.015
    q = BatchedAugment(IDENTITY).sample_params(20000, 24, 24, torch.Generator().manual_seed(0))
    assert all(torch.equal(p[k], q[k]) for k in q if k != "solarize")  # drawn last: old seeds keep their views


def test_recipe_config_takes_an_optional_solarize_p():
    cfg = {f: getattr(IDENTITY, f) for f in IDENTITY.__dataclass_fields__ if f not in ("order", "solarize_p")}
    assert AugRecipe.from_config(cfg).solarize_p == 0.0
    assert AugRecipe.from_config({**cfg, "solarize_p": 0.2}).solarize_p == 0.2
    with pytest.raises(ConfigError, match=r"aug.solarize_p is a probability and must be in \[0, 1\], got 1.5"):
        AugRecipe.from_config({**cfg, "solarize_p": 1.5})


# ----------------------------------------------------------------------------- both backends agree

@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return source_images()


DRAWS = {"byol_2": 1600, "dino_local": 800}  # per-image views; byol_2's also have to tell solarize 0.2 from 0


@pytest.mark.parametrize("view", ["byol_2", "dino_local"])
def test_backends_sample_the_same_views(view, images):
    """BYOL's second view (solarize) and DINO's local crop (another size) agree between the backends,
    and the test tells the second view from the first (no solarize, blur always)."""
    recipe = view_recipe(view, 32, MEAN, STD)
    transform = per_image_transform(recipe)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        per_image = stats_of(torch.stack([transform(images[d % K]) for d in range(DRAWS[view])]))
    assert min(ks_pvalues(per_image, batched_stats(images, recipe, seed=3)).values()) > AGREE_P
    if view == "byol_2":
        other = replace(recipe, solarize_p=0.0)
        p = ks_pvalues(per_image, batched_stats(images, other, seed=3))
        assert min(p.values()) < REJECT_P, p


# ----------------------------------------------------------------------------- named views and sets

def test_view_sets_hold_the_papers_parameters():
    byol = view_set("byol", 32, MEAN, STD)
    assert [(s.name, s.count) for s in byol] == [("byol_1", 1), ("byol_2", 1)]
    assert (byol[0].recipe.blur_p, byol[1].recipe.blur_p) == (1.0, 0.1)
    assert (byol[0].recipe.solarize_p, byol[1].recipe.solarize_p) == (0.0, 0.2)
    assert byol[0].recipe.jitter == (0.4, 0.4, 0.2, 0.1) and byol[0].recipe.crop_scale == (0.08, 1.0)
    dino = view_set("dino", 224, MEAN, STD)
    assert [(s.name, s.count, s.recipe.image_size) for s in dino] == [
        ("dino_global_1", 1, 224), ("dino_global_2", 1, 224), ("dino_local", 8, 96)]
    assert dino[0].recipe.crop_scale == (0.4, 1.0) and dino[2].recipe.crop_scale == (0.05, 0.4)
    assert (dino[1].recipe.blur_p, dino[1].recipe.solarize_p, dino[2].recipe.blur_p) == (0.1, 0.2, 0.5)
    swav = view_set("swav", 224, MEAN, STD)
    assert [(s.name, s.count, s.recipe.image_size, s.recipe.crop_scale) for s in swav] == [
        ("swav_global", 2, 224, (0.14, 1.0)), ("swav_local", 6, 96, (0.05, 0.14))]
    assert swav[0].recipe.jitter == (0.8, 0.8, 0.8, 0.2)
    small = view_set("dino", 28, MEAN, STD, n_local=4)  # scaled for small images
    assert [(s.count, s.recipe.image_size) for s in small] == [(1, 28), (1, 28), (4, 12)] and n_views(small) == 6
    assert [s.name for s in view_set("dino", 28, MEAN, STD, n_local=0)] == ["dino_global_1", "dino_global_2"]


def test_views_from_config_forms():
    assert [s.name for s in views_from_config("byol", 32, MEAN, STD)] == ["byol_1", "byol_2"]
    specs = views_from_config({"set": "swav", "n_local": 2, "local_size": 16}, 32, MEAN, STD)
    assert [(s.count, s.recipe.image_size) for s in specs] == [(2, 32), (2, 16)]
    custom = views_from_config([{"view": "dino_global_1", "count": 2},
                                {"view": "dino_local", "count": 3, "size": 10, "crop_scale": [0.1, 0.3]}],
                               32, MEAN, STD)
    assert [(s.count, s.recipe.image_size, s.recipe.crop_scale) for s in custom] == [
        (2, 32, (0.4, 1.0)), (3, 10, (0.1, 0.3))]


@pytest.mark.parametrize(("cfg", "words"), [
    ("dinno", ["unknown view set 'dinno'", "did you mean 'dino'?"]),
    ([{"view": "byol_3"}], ["unknown view 'byol_3'", "did you mean"]),
    ([{"view": "dino_local", "sise": 3}], ["unknown view key 'sise'", "did you mean 'size'?"]),
    ([{"view": "dino_local", "size": 0}], ["aug.image_size must be an integer >= 1, got 0"]),
    ([{"view": "byol_2", "solarize_p": 2}], ["aug.solarize_p", "[0, 1]"]),
    ([{"view": "dino_local", "count": 0}], ["count must be an integer >= 1"]),
    ([{"count": 2}], ["each view needs a `view` name"]),
    ({"set": "dino", "n_locals": 2}, ["unknown views key 'n_locals'", "did you mean 'n_local'?"]),
    ({"set": "dino", "n_local": -1}, ["n_local must be an integer >= 0"]),
    ({"n_local": 2}, ["views needs a set name"]),
    ([], ["empty list"]),
])
def test_bad_views_are_one_line_config_errors(cfg, words):
    with pytest.raises(ConfigError) as err:
        views_from_config(cfg, 32, MEAN, STD)
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


# ----------------------------------------------------------------------------- multi-crop in both paths

def test_multicrop_at_two_sizes_in_the_batched_backend():
    specs = view_set("dino", 28, MEAN, STD, n_local=3)
    x = _images(5, 28)
    views = BatchedViews(specs)(x, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(5, 3, 28, 28)] * 2 + [(5, 3, 12, 12)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    assert not torch.equal(views[2], views[3])  # each local crop is its own draw
    again = make_views(specs, x, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))


@pytest.mark.parametrize("workers", [0, 1])
def test_multicrop_at_two_sizes_through_dataloader_workers(workers):
    specs = view_set("swav", 28, MEAN, STD, n_local=2)
    dataset = TensorImageDataset(_images(6, 28)[:, :1], torch.arange(6), 6).with_transform(PerImageViews(specs))
    loader = DataLoader(dataset, batch_size=3, num_workers=workers, collate_fn=collate)
    views, labels = next(iter(loader))
    assert [tuple(v.shape) for v in views] == [(3, 3, 28, 28)] * 2 + [(3, 3, 12, 12)] * 2
    assert labels.tolist() == [0, 1, 2]
    assert "swav_local" in repr(dataset.transform)


def test_per_image_views_pickle_for_spawned_workers():
    import pickle

    specs = view_set("dino", 28, MEAN, STD, n_local=2)
    views = pickle.loads(pickle.dumps(PerImageViews(specs)))(_images(1, 28)[0])
    assert [tuple(v.shape) for v in views] == [(3, 28, 28)] * 2 + [(3, 12, 12)] * 2
