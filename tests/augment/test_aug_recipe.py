"""AugRecipe.from_config validation, the blur kernel rule, resolve_backend and the per-image helpers."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sslkit.augment import (
    AugRecipe,
    MultiView,
    eval_transform,
    per_image_transform,
    resolve_backend,
)
from sslkit.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "aug"
DATA = {"image_size": 32, "mean": [0.286, 0.286, 0.286], "std": [0.353, 0.353, 0.353]}


def load(name: str, **overrides: object) -> dict:
    """configs/aug/<name>.yaml with the data interpolations filled in, as a plain dict."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    cfg.update(DATA)
    cfg.update(overrides)
    return cfg


def test_shipped_recipes_match_the_papers():
    v1, v2, simclr = (AugRecipe.from_config(load(n)) for n in ("mocov1", "mocov2", "simclr"))
    assert v1.jitter == (0.4, 0.4, 0.4, 0.4) and v1.jitter_p == 1.0 and v1.blur_p == 0.0
    assert v2.jitter == (0.4, 0.4, 0.4, 0.1) and v2.jitter_p == 0.8 and v2.blur_p == 0.5
    assert simclr.jitter == (0.8, 0.8, 0.8, 0.2) and simclr.crop_scale == (0.08, 1.0)
    for r in (v1, v2, simclr):
        assert r.gray_p == 0.2 and r.flip_p == 0.5 and r.blur_sigma == (0.1, 2.0)
        assert r.image_size == 32 and r.mean == (0.286,) * 3
        assert isinstance(r.crop_scale, tuple)
    with pytest.raises(AttributeError):
        v1.gray_p = 0.5  # frozen


def test_from_config_accepts_an_omegaconf_node_with_interpolations():
    cfg = OmegaConf.create({"data": DATA, "aug": OmegaConf.load(CONFIGS / "mocov2.yaml")})
    r = AugRecipe.from_config(cfg.aug)
    assert r.image_size == 32 and r.std == (0.353,) * 3


def test_unresolved_interpolation_is_a_config_error():
    with pytest.raises(ConfigError, match="image_size"):
        AugRecipe.from_config(OmegaConf.load(CONFIGS / "mocov1.yaml"))


@pytest.mark.parametrize(("frac", "size", "kernel"), [
    (0.1, 32, 3), (0.1, 28, 3), (0.1, 96, 11), (0.1, 224, 23), (0.1, 64, 7), (0.05, 32, 3), (0.5, 10, 5),
])
def test_blur_kernel_size_is_odd_and_at_least_three(frac, size, kernel):
    r = AugRecipe.from_config(load("simclr", blur_kernel_frac=frac, image_size=size))
    assert r.blur_kernel_size == kernel


@pytest.mark.parametrize(("key", "value", "words"), [
    ("gray_p", 1.5, ["aug.gray_p", "1.5", "[0, 1]"]),
    ("jitter_p", -0.1, ["aug.jitter_p", "-0.1", "[0, 1]"]),
    ("blur_p", "half", ["aug.blur_p", "'half'", "number"]),
    ("flip_p", True, ["aug.flip_p", "True", "number"]),
    ("crop_scale", [0.0, 1.0], ["aug.crop_scale", "[0.0, 1.0]", "0 < lo <= hi <= 1"]),
    ("crop_scale", [0.5, 0.2], ["aug.crop_scale", "[0.5, 0.2]", "0 < lo <= hi <= 1"]),
    ("crop_scale", [0.2, 1.5], ["aug.crop_scale", "1.5", "0 < lo <= hi <= 1"]),
    ("crop_scale", [0.2], ["aug.crop_scale", "[0.2]", "list of 2"]),
    ("crop_ratio", [-1.0, 1.0], ["aug.crop_ratio", "-1.0", "0 < lo <= hi"]),
    ("jitter", [0.4, 0.4, 0.4, 0.6], ["aug.jitter", "hue", "0.6", "[0, 0.5]"]),
    ("jitter", [-0.4, 0.4, 0.4, 0.1], ["aug.jitter", "brightness", "-0.4", ">= 0"]),
    ("jitter", [0.4, 0.4, 0.4], ["aug.jitter", "list of 4"]),
    ("blur_sigma", [0.0, 2.0], ["aug.blur_sigma", "0.0", "0 < lo <= hi"]),
    ("blur_kernel_frac", 0.0, ["aug.blur_kernel_frac", "0.0", "(0, 1]"]),
    ("image_size", 0, ["aug.image_size", "0", ">= 1"]),
    ("image_size", 32.5, ["aug.image_size", "32.5", "integer"]),
    ("std", [0.3, 0.0, 0.3], ["aug.std", "0.0", "positive"]),
    ("mean", [0.5, 0.5], ["aug.mean", "list of 3"]),
])
def test_invalid_values_name_key_value_and_range(key, value, words):
    with pytest.raises(ConfigError) as info:
        AugRecipe.from_config(load("mocov2", **{key: value}))
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message, (w, message)


def test_missing_and_unknown_keys():
    cfg = load("mocov2")
    del cfg["blur_p"]
    with pytest.raises(ConfigError, match="aug.blur_p"):
        AugRecipe.from_config(cfg)
    with pytest.raises(ConfigError, match="did you mean 'gray_p'"):
        AugRecipe.from_config(load("mocov2", grey_p=0.2))


def test_resolve_backend():
    assert resolve_backend("auto", in_memory=True) == "batched"
    assert resolve_backend("auto", in_memory=False) == "per_image"
    assert resolve_backend("per_image", in_memory=True) == "per_image"
    assert resolve_backend("batched", in_memory=False) == "batched"
    with pytest.raises(ConfigError, match="did you mean 'batched'"):
        resolve_backend("batchd", in_memory=True)
    with pytest.raises(ConfigError, match="valid: auto, batched, per_image"):
        resolve_backend("gpu", in_memory=True)


def test_per_image_transform_and_multiview():
    r = AugRecipe.from_config(load("simclr"))
    image = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    views = MultiView(per_image_transform(r), n_views=3)(image)
    assert len(views) == 3
    for v in views:
        assert v.shape == (3, 32, 32) and v.dtype == torch.float32
    assert not torch.equal(views[0], views[1])
    restored = pickle.loads(pickle.dumps(MultiView(per_image_transform(r))))
    assert restored.n_views == 2 and len(restored(image)) == 2


def test_per_image_transform_with_identity_recipe_is_crop_and_normalize():
    r = AugRecipe.from_config(load("mocov1", crop_scale=[1.0, 1.0], crop_ratio=[1.0, 1.0], jitter_p=0.0,
                                   gray_p=0.0, flip_p=0.0, image_size=28, mean=[0.5] * 3, std=[0.5] * 3))
    image = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    out = per_image_transform(r)(image)
    torch.testing.assert_close(out, image.float() / 127.5 - 1.0)


def test_eval_transform_resizes_the_short_side_and_centre_crops():
    image = torch.zeros(3, 20, 40, dtype=torch.uint8)
    image[:, :, 6:34] = 255  # white except 6 px on the left and right
    out = eval_transform(10, [0.0] * 3, [1.0] * 3)(image)  # 20x40 -> 10x20 -> centre 10x10 = columns 10..30
    assert out.shape == (3, 10, 10)
    torch.testing.assert_close(out, torch.ones_like(out))
    tall = torch.zeros(3, 40, 20, dtype=torch.uint8)
    tall[:, :, 10:] = 255  # right half white
    out = eval_transform(10, [0.0] * 3, [1.0] * 3)(tall)  # 40x20 -> 20x10 -> centre rows 5..15
    assert out.shape == (3, 10, 10)
    assert out[..., :4].max() < 0.01 and out[..., 6:].min() > 0.99
