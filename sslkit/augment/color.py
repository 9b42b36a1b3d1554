"""Vectorized colour operations on float NCHW images with one factor per sample.

Each op follows the matching `torchvision.transforms.v2.functional` kernel (rgb_to_grayscale,
adjust_brightness/contrast/saturation/hue), clamping after every op as torchvision does. With
`uint8=False` the image is in [0, 1] (torchvision's float kernels); with `uint8=True` it holds the
integers 0..255 and every op truncates its result the way torchvision's uint8 kernels do (`.to(uint8)`
after each blend, grayscale floored before use), so both backends see the same quantisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

# ITU-R 601-2 luma, with the exact constants of torchvision's rgb_to_grayscale (0.2989, not 0.299).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
_TO_UINT8 = 255.0 + 1.0 - 1e-3  # torchvision to_dtype(float -> uint8, scale=True): floor(x * (256 - eps))


def _channels(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """R, G, B planes; a grey image held in one channel gives that plane three times (same arithmetic)."""
    if x.shape[-3] == 1:
        r = x.squeeze(-3)
        return r, r, r
    r, g, b = x.unbind(dim=-3)
    return r, g, b


def grayscale(x: Tensor, uint8: bool = False) -> Tensor:
    """(N, 1, H, W) luma L = 0.2989 R + 0.587 G + 0.114 B (floored for uint8)."""
    r, g, b = _channels(x)
    # torchvision's exact arithmetic (add with alpha is a fused multiply-add), so floors agree too
    gray = r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(-3)
    return gray.floor_() if uint8 else gray


def _per_sample(f: Tensor, x: Tensor) -> Tensor:
    return f.to(dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))


def _finish(x: Tensor, uint8: bool) -> Tensor:
    return x.clamp_(0.0, 255.0).floor_() if uint8 else x.clamp_(0.0, 1.0)


def blend(x: Tensor, other: Tensor, factor: Tensor, uint8: bool = False) -> Tensor:
    """factor * x + (1 - factor) * other, clamped (torchvision's `_blend`).

    Same rounding as torchvision's `x.mul(f).add_(other, alpha=1 - f)`: 1 - f in double, then a fused
    multiply-add, so that uint8 truncation lands on the same level.
    """
    f = _per_sample(factor, x)
    alpha = _per_sample(1.0 - factor.double(), x)
    return _finish(torch.addcmul(x * f, other, alpha), uint8)


def adjust_brightness(x: Tensor, factor: Tensor, uint8: bool = False) -> Tensor:
    """x * f, clamped."""
    return _finish(x * _per_sample(factor, x), uint8)


def adjust_contrast(x: Tensor, factor: Tensor, uint8: bool = False) -> Tensor:
    """Blend with the per-image mean of the grayscale image."""
    mean = grayscale(x, uint8).mean(dim=(-3, -2, -1), keepdim=True)
    return blend(x, mean, factor, uint8)


def adjust_saturation(x: Tensor, factor: Tensor, uint8: bool = False) -> Tensor:
    """Blend with the grayscale image."""
    return blend(x, grayscale(x, uint8), factor, uint8)


def hue_sector(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """6 x hue in [-1, 5), the value v = max(R, G, B) and the chroma delta = v - min(R, G, B) = v s.

    Pillow's / torchvision's case order: red wins ties, then green; gray pixels (delta = 0) get hue 0.
    Elementwise maximum/minimum instead of a reduction over the channel axis (much faster in NCHW).
    """
    r, g, b = _channels(x)
    v = torch.maximum(torch.maximum(r, g), b)
    delta = v - torch.minimum(torch.minimum(r, g), b)
    inv = 1.0 / delta.clamp(min=1e-12)  # delta = 0: every numerator below is 0 and v == r gives hue 0
    is_r, is_g = v == r, v == g
    h6 = torch.where(is_r, (g - b) * inv, torch.where(is_g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    return h6, v, delta


def adjust_hue(x: Tensor, factor: Tensor, uint8: bool = False) -> Tensor:
    """Rotate the hue by `factor` (a fraction of the colour circle, in [-0.5, 0.5]) in HSV space.

    RGB -> HSV -> RGB as torchvision's adjust_hue, with the closed form of the six-sector table:
    c_n = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1 for R, G, B.
    """
    h6, v, delta = hue_sector(x * (1.0 / 255.0) if uint8 else x)
    h6 = h6 + 6.0 * factor.to(h6.dtype).view(-1, 1, 1)
    h6 = h6 - 6.0 * torch.floor(h6 * (1.0 / 6.0))  # wrap to [0, 6)
    k = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(3, 1, 1) + h6.unsqueeze(-3)
    k = torch.where(k >= 6.0, k - 6.0, k)  # n + 6h < 12
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    out = (v.unsqueeze(-3) - delta.unsqueeze(-3) * ramp).clamp_(0.0, 1.0)
    return out.mul_(_TO_UINT8).floor_() if uint8 else out
