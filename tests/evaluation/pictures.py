"""Checks on written PNGs: their size and that they hold a picture, not a blank canvas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def pixels(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of a PNG."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def assert_picture(path: Path, size: tuple[int, int] | None = None, min_colours: int = 20) -> np.ndarray:
    """`path` is a PNG of `size` (width, height) with drawing on more than 2% of it and at least
    `min_colours` distinct colours; returns its pixels."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    px = pixels(path)
    if size is not None:
        assert (px.shape[1], px.shape[0]) == size
    inked = (px < 245).any(axis=2).mean()
    assert inked > 0.02, f"{path} is blank ({inked:.3%} of pixels drawn)"
    assert len(np.unique(px.reshape(-1, 3), axis=0)) >= min_colours
    return px


def has_colour(px: np.ndarray, rgb: tuple[int, int, int], tol: int = 12, min_pixels: int = 20) -> bool:
    """At least `min_pixels` pixels within `tol` of `rgb`."""
    close = (np.abs(px.astype(int) - np.array(rgb)) <= tol).all(axis=2)
    return int(close.sum()) >= min_pixels
