"""Tiny inputs for the embed/index/search/export tests: an sslkit checkpoint made without training
(a small ResNet-18 in the format `sslkit train` writes) and folders of PNGs with one corrupt file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from sslkit.engine import checkpoint as ckpt
from sslkit.files import save_atomic
from sslkit.nn.backbones import build_backbone

SMALL = {"name": "resnet18", "width": 8, "small_images": True}


def make_checkpoint(path: Path, backbone: dict | None = None, image_size: int = 32, seed: int = 0) -> Path:
    """An sslkit checkpoint (format version 2) holding a seeded random backbone and its config."""
    cfg = dict(backbone or SMALL)
    torch.manual_seed(seed)
    model, _ = build_backbone(cfg)
    for m in model.modules():  # non-trivial BN statistics, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    config = {"backbone": cfg, "method": {"name": "mocov2"},
              "data": {"name": "imagefolder", "root": None, "image_size": image_size,
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_workers": 0,
                       "subset_seed": 0, "max_bad_fraction": 0.5}}
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    save_atomic({"format": ckpt.FORMAT, "version": ckpt.VERSION, "config": OmegaConf.to_yaml(config),
                 "method": state, "state": {"step": 0}}, path)
    return path


def write_images(folder: Path, classes: dict[str, int], seed: int = 0, size: tuple[int, int] = (40, 36),
                 corrupt: bool = True) -> list[Path]:
    """`classes[name]` PNGs (and a JPEG) per class folder, each class its own colour; plus one corrupt .png."""
    rng = np.random.default_rng(seed)
    written = []
    for c, (name, n) in enumerate(classes.items()):
        d = folder / name if name else folder
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, 3)
        for i in range(n):
            img = np.clip(base + rng.normal(0, 40, (*size, 3)), 0, 255).astype(np.uint8)
            p = d / (f"{c}_{i}.jpg" if i == 0 else f"{c}_{i}.png")
            Image.fromarray(img).save(p)
            written.append(p)
    if corrupt:
        bad = folder / (next(iter(classes)) or "") / "broken.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        written.append(bad)
    return written
