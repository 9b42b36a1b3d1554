"""The augmentation recipe as plain parameters, validated from an `aug` config group.

The three shipped recipes (configs/aug/*.yaml) are:

* MoCo v1 (He et al., arXiv 1911.05722, Sec. 4.1): RandomResizedCrop(scale 0.2-1), grayscale
  p=0.2 THEN colour jitter (0.4, 0.4, 0.4, 0.4) always (the official main_moco.py order), flip.
* MoCo v2 "aug+" (Chen et al., arXiv 2003.04297, Sec. 2): as v1 with jitter (0.4, 0.4, 0.4, 0.1) at
  p=0.8 and Gaussian blur sigma ~ U[0.1, 2] at p=0.5.
* SimCLR (Chen et al., arXiv 2002.05709, appendix A): crop scale 0.08-1, colour strength 1.0, i.e.
  jitter (0.8, 0.8, 0.8, 0.2) at p=0.8, grayscale p=0.2, blur p=0.5 with a kernel of 10% of the side.

`solarize_p` (BYOL, arXiv 2006.07733, appendix B: x -> 1 - x where x >= 0.5) is optional and 0 unless
set; the view recipes of BYOL, DINO and SwAV live in sslkit/augment/views.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sslkit.errors import ConfigError, suggestion

IGNORED_KEYS = ("recipe", "backend")
ORDERS = ("jitter_first", "gray_first")


@dataclass(frozen=True)
class AugRecipe:
    """One view's augmentation distribution; both backends (per-image, batched) sample exactly this.

    Defaults live in configs/aug: MoCo v1 (arXiv 1911.05722, Sec. 4.1), MoCo v2 aug+ (arXiv
    2003.04297, Sec. 2), SimCLR (arXiv 2002.05709, appendix A). Op order: crop, jitter, grayscale,
    blur, flip, solarize, normalize; `order="gray_first"` swaps jitter and grayscale (official MoCo v1 code).
    """

    image_size: int
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    jitter: tuple[float, float, float, float]  # brightness, contrast, saturation, hue
    jitter_p: float
    gray_p: float
    blur_p: float
    blur_sigma: tuple[float, float]
    blur_kernel_frac: float
    flip_p: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    order: str = "jitter_first"  # jitter_first | gray_first
    solarize_p: float = 0.0  # BYOL appendix B: pixels >= 0.5 (128 of 255) become 1 - x

    @property
    def blur_kernel_size(self) -> int:
        """round(frac * image_size), made odd, at least 3 (SimCLR appendix A: 10% of the side)."""
        k = int(round(self.blur_kernel_frac * self.image_size))
        if k % 2 == 0:
            k += 1
        return max(k, 3)

    @property
    def log_ratio(self) -> tuple[float, float]:
        return math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> AugRecipe:
        """Read the keys of configs/aug/*.yaml (`recipe`, `backend` ignored); ConfigError if invalid."""
        fields = [f for f in cls.__dataclass_fields__]
        for key in cfg:
            if key not in fields and key not in IGNORED_KEYS:
                raise ConfigError(f"unknown key aug.{key}; {suggestion(str(key), fields)}")
        optional = ("order", "solarize_p")
        missing = [f for f in fields if f not in cfg and f not in optional]
        if missing:
            raise ConfigError(f"aug config is missing key(s): {', '.join('aug.' + m for m in missing)}")
        order = str(cfg.get("order", "jitter_first"))
        if order not in ORDERS:
            raise ConfigError(f"aug.order='{order}' is invalid; {suggestion(order, ORDERS)}")
        solarize_p = _prob({"solarize_p": _read(cfg, "solarize_p")}, "solarize_p") if "solarize_p" in cfg else 0.0
        cfg = {f: _read(cfg, f) for f in fields if f not in optional}

        image_size = _int(cfg, "image_size", 1)
        crop_scale = _pair(cfg, "crop_scale", 0.0, 1.0, open_low=True, rng="0 < lo <= hi <= 1")
        crop_ratio = _pair(cfg, "crop_ratio", 0.0, math.inf, open_low=True, rng="0 < lo <= hi")
        jitter = _floats(cfg, "jitter", 4)
        for name, v, hi in zip(("brightness", "contrast", "saturation", "hue"), jitter,
                               (math.inf, math.inf, math.inf, 0.5), strict=True):
            if not 0.0 <= v <= hi:
                allowed = "in [0, 0.5]" if hi == 0.5 else ">= 0"
                raise ConfigError(f"aug.jitter {name} must be {allowed}, got {v}")
        blur_sigma = _pair(cfg, "blur_sigma", 0.0, math.inf, open_low=True, rng="0 < lo <= hi")
        frac = _float(cfg, "blur_kernel_frac")
        if not 0.0 < frac <= 1.0:
            raise ConfigError(f"aug.blur_kernel_frac must be in (0, 1], got {frac}")
        mean = _floats(cfg, "mean", 3)
        std = _floats(cfg, "std", 3)
        if not all(s > 0 for s in std):
            raise ConfigError(f"aug.std must be 3 positive numbers, got {list(std)}")
        return cls(
            image_size=image_size,
            crop_scale=crop_scale,
            crop_ratio=crop_ratio,
            jitter=jitter,  # type: ignore[arg-type]
            jitter_p=_prob(cfg, "jitter_p"),
            gray_p=_prob(cfg, "gray_p"),
            blur_p=_prob(cfg, "blur_p"),
            blur_sigma=blur_sigma,
            blur_kernel_frac=frac,
            flip_p=_prob(cfg, "flip_p"),
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            order=order,
            solarize_p=solarize_p,
        )


def _read(cfg: Mapping[str, Any], key: str) -> Any:
    """cfg[key] as plain Python; an unresolvable interpolation (`${data.image_size}`) is a ConfigError."""
    try:
        value = cfg[key]
    except Exception as exc:  # omegaconf raises its own errors for missing interpolation targets
        raise ConfigError(f"aug.{key} cannot be resolved: {str(exc).splitlines()[0]}") from None
    if hasattr(value, "items") or isinstance(value, (str, bytes)):
        return value
    if hasattr(value, "__iter__"):
        return [v for v in value]
    return value


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"aug.{key} must be a finite number, got {value!r}")
    return float(value)


def _float(cfg: Mapping[str, Any], key: str) -> float:
    return _number(key, cfg[key])


def _int(cfg: Mapping[str, Any], key: str, low: int) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"aug.{key} must be an integer >= {low}, got {value!r}")
    return int(value)


def _prob(cfg: Mapping[str, Any], key: str) -> float:
    p = _float(cfg, key)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"aug.{key} is a probability and must be in [0, 1], got {p}")
    return p


def _floats(cfg: Mapping[str, Any], key: str, n: int) -> tuple[float, ...]:
    value = cfg[key]
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != n:
        raise ConfigError(f"aug.{key} must be a list of {n} numbers, got {value!r}")
    return tuple(_number(key, v) for v in value)


def _pair(cfg: Mapping[str, Any], key: str, low: float, high: float, open_low: bool, rng: str
          ) -> tuple[float, float]:
    lo, hi = _floats(cfg, key, 2)
    ok = (lo > low if open_low else lo >= low) and lo <= hi <= high
    if not ok:
        raise ConfigError(f"aug.{key} must be [lo, hi] with {rng}, got {[lo, hi]}")
    return lo, hi
