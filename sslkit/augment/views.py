"""Named view recipes and view sets: each view with its own size, count and augmentation.

A method asks for a list of `ViewSpec`s (a recipe, a count); `BatchedViews` makes them from an
in-memory batch and `PerImageViews` from one image in a DataLoader worker, in the same order: the
specs in turn, each `count` times (so global crops come before local ones). The named recipes hold
the papers' parameters; sizes are relative to `image_size` (the global crop): a local crop is 96/224
of it, so multi-crop scales down to small images (Fashion-MNIST 28 px: 12 px local crops).

* BYOL (Grill et al., arXiv 2006.07733, appendix B, Table 6): crop 0.08-1, flip, jitter (0.4, 0.4,
  0.2, 0.1) p=0.8, grayscale p=0.2, blur p=1.0 / 0.1, solarize p=0 / 0.2 (views 1 / 2).
* DINO (Caron et al., arXiv 2104.14294, appendix; `DataAugmentationDINO`): BYOL's colour ops; 2 global
  crops of scale 0.4-1 (blur p=1.0; blur p=0.1 and solarize p=0.2), local crops of scale 0.05-0.4 at
  96/224 of the size with blur p=0.5 (8 in the official code).
* SwAV (Caron et al., arXiv 2006.09882, Sec. 3.2 and appendix): colour strength 1 (jitter (0.8, 0.8,
  0.8, 0.2) p=0.8, grayscale p=0.2), blur p=0.5, flip; 2 crops of scale 0.14-1 and 6 of 0.05-0.14 at
  96/224 of the size.
* SimCLR (arXiv 2002.05709, appendix A): the two identical views of configs/aug/simclr.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from sslkit.augment.batched import BatchedAugment
from sslkit.augment.per_image import per_image_transform
from sslkit.augment.recipe import AugRecipe
from sslkit.errors import ConfigError, suggestion

LOCAL_FRACTION = 96 / 224  # DINO's and SwAV's local crop side over the global one


@dataclass(frozen=True)
class ViewSpec:
    """`count` views drawn from `recipe` (at `recipe.image_size`), named for errors and logs."""

    name: str
    recipe: AugRecipe
    count: int = 1


def local_size(image_size: int) -> int:
    """The local-crop side for global crops of `image_size`: round(96 / 224 of it), at least 1."""
    return max(1, round(image_size * LOCAL_FRACTION))


def _recipe(size: int, mean: Sequence[float], std: Sequence[float], **kw: Any) -> AugRecipe:
    base: dict[str, Any] = dict(image_size=size, crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3),
                                jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=0.0,
                                blur_sigma=(0.1, 2.0), blur_kernel_frac=0.1, flip_p=0.5,
                                mean=tuple(mean), std=tuple(std))
    return AugRecipe(**{**base, **kw})


_SIMCLR = dict(crop_scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)
_SWAV = dict(jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)
#: view name -> (is it a local crop, the recipe's parameters over the BYOL colour defaults)
VIEWS: dict[str, tuple[bool, dict[str, Any]]] = {
    "simclr": (False, _SIMCLR),
    "byol_1": (False, dict(blur_p=1.0, solarize_p=0.0)),
    "byol_2": (False, dict(blur_p=0.1, solarize_p=0.2)),
    "dino_global_1": (False, dict(crop_scale=(0.4, 1.0), blur_p=1.0)),
    "dino_global_2": (False, dict(crop_scale=(0.4, 1.0), blur_p=0.1, solarize_p=0.2)),
    "dino_local": (True, dict(crop_scale=(0.05, 0.4), blur_p=0.5)),
    "swav_global": (False, dict(_SWAV, crop_scale=(0.14, 1.0))),
    "swav_local": (True, dict(_SWAV, crop_scale=(0.05, 0.14))),
}
#: set name -> [(view name, count; None = the set's number of local crops)]
VIEW_SETS: dict[str, list[tuple[str, int | None]]] = {
    "simclr": [("simclr", 2)],
    "byol": [("byol_1", 1), ("byol_2", 1)],
    "dino": [("dino_global_1", 1), ("dino_global_2", 1), ("dino_local", None)],
    "swav": [("swav_global", 2), ("swav_local", None)],
}
DEFAULT_LOCAL = {"dino": 8, "swav": 6}  # official local_crops_number / nmb_crops


def view_recipe(name: str, image_size: int, mean: Sequence[float], std: Sequence[float],
                local_image_size: int | None = None, **overrides: Any) -> AugRecipe:
    """The named view's recipe for global crops of `image_size` (a local view: `local_image_size`,
    by default `local_size(image_size)`); `overrides` replace any AugRecipe field (`size` its side)."""
    if name not in VIEWS:
        raise ConfigError(f"unknown view '{name}'; {suggestion(str(name), VIEWS)}")
    is_local, params = VIEWS[name]
    size: Any = (local_image_size or local_size(image_size)) if is_local else image_size
    if "size" in overrides:
        size = overrides.pop("size")
    known = [f.name for f in fields(AugRecipe) if f.name != "image_size"] + ["size"]
    for key in overrides:
        if key not in known:
            raise ConfigError(f"unknown view key '{key}' for view '{name}'; {suggestion(str(key), known)}")
    # through from_config: the size and every overridden value are validated as `aug` keys are
    return AugRecipe.from_config({**asdict(_recipe(1, mean, std, **params)), "image_size": size, **overrides})


def view_set(name: str, image_size: int, mean: Sequence[float], std: Sequence[float], n_local: int | None = None,
             local_image_size: int | None = None) -> list[ViewSpec]:
    """The named set's views: global first, then `n_local` local crops (the official number by default)."""
    if name not in VIEW_SETS:
        raise ConfigError(f"unknown view set '{name}'; {suggestion(str(name), VIEW_SETS)}")
    if n_local is not None and (isinstance(n_local, bool) or not isinstance(n_local, int) or n_local < 0):
        raise ConfigError(f"views n_local must be an integer >= 0, got {n_local!r}")
    specs = []
    for view, count in VIEW_SETS[name]:
        count = (DEFAULT_LOCAL[name] if n_local is None else n_local) if count is None else count
        if count:
            specs.append(ViewSpec(view, view_recipe(view, image_size, mean, std, local_image_size), count))
    return specs


def views_from_config(cfg: str | Mapping[str, Any] | Sequence[Mapping[str, Any]], image_size: int,
                      mean: Sequence[float], std: Sequence[float]) -> list[ViewSpec]:
    """Views from a config value: a set name (`dino`); a mapping `{set, n_local, local_size}`; or a
    list of `{view, count, size, <AugRecipe field>: value...}` (e.g. `{view: dino_local, count: 4,
    size: 16}`). Every bad name or key is a one-line ConfigError."""
    if isinstance(cfg, str):
        return view_set(cfg, image_size, mean, std)
    if isinstance(cfg, Mapping):
        allowed = ("set", "n_local", "local_size")
        for key in cfg:
            if key not in allowed:
                raise ConfigError(f"unknown views key '{key}'; {suggestion(str(key), allowed)}")
        if "set" not in cfg:
            raise ConfigError(f"views needs a set name (valid: {', '.join(VIEW_SETS)}); got {dict(cfg)}")
        return view_set(str(cfg["set"]), image_size, mean, std, cfg.get("n_local"), cfg.get("local_size"))
    specs = []
    for item in cfg:
        if not isinstance(item, Mapping) or "view" not in item:
            raise ConfigError(f"each view needs a `view` name (valid: {', '.join(VIEWS)}); got {item!r}")
        rest: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in item.items()
                                if k not in ("view", "count")}
        count = item.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"view '{item['view']}' count must be an integer >= 1, got {count!r}")
        specs.append(ViewSpec(str(item["view"]), view_recipe(str(item["view"]), image_size, mean, std, **rest),
                              count))
    if not specs:
        raise ConfigError("views is an empty list; give at least one view")
    return specs


def n_views(specs: Sequence[ViewSpec]) -> int:
    """The number of views the specs make."""
    return sum(s.count for s in specs)


class BatchedViews(nn.Module):
    """All views of an in-memory batch (any device): one BatchedAugment per spec, each `count` times."""

    def __init__(self, specs: Sequence[ViewSpec]) -> None:
        super().__init__()
        self.specs = list(specs)
        self.augments = nn.ModuleList([BatchedAugment(s.recipe) for s in self.specs])

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        return [aug(images, generator) for aug, s in zip(self.augments, self.specs, strict=True)
                for _ in range(s.count)]


class PerImageViews:
    """All views of one image in a DataLoader worker (picklable): the per-image pipelines, in spec order.
    DataLoader's collation stacks each position, so views of different sizes come out as a list."""

    def __init__(self, specs: Sequence[ViewSpec]) -> None:
        self.specs = list(specs)
        self.transforms: list[Callable[[Tensor], Tensor]] = [per_image_transform(s.recipe) for s in self.specs]

    def __call__(self, x: Tensor) -> list[Tensor]:
        return [t(x) for t, s in zip(self.transforms, self.specs, strict=True) for _ in range(s.count)]

    def __repr__(self) -> str:
        return f"PerImageViews({[(s.name, s.count, s.recipe.image_size) for s in self.specs]})"


def make_views(specs: Sequence[ViewSpec], images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
    """The views of a uint8 or float NCHW batch, batched backend (builds the augmentations each call;
    hold a `BatchedViews` in a training loop)."""
    return BatchedViews(specs).to(images.device)(images, generator)
