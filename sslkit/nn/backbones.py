"""Backbones from torchvision (ResNet-18/34/50) and timm, with their classifier removed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sslkit.errors import ConfigError, suggestion

TORCHVISION = ("resnet18", "resnet34", "resnet50")


def _torchvision_resnet(name: str, small_images: bool) -> tuple[nn.Module, int]:
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    if small_images:
        # CIFAR variant (SimCLR arXiv 2002.05709 appendix B.9): 3x3 stride-1 stem, no max-pool.
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, dim


def _timm_model(name: str, image_size: int | None = None) -> tuple[nn.Module, int]:
    import timm

    sized = {"img_size": image_size} if image_size else {}  # ViTs and other fixed-size models
    try:
        try:
            model = timm.create_model(name, pretrained=False, num_classes=0, **sized)
        except TypeError:  # models without an img_size argument (CNNs)
            model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ConfigError(f"unknown timm model '{name}'; "
                              f"{suggestion(name, timm.list_models())}".split("; valid:")[0]) from None
        raise
    return model, int(model.num_features)


def build_backbone(cfg: Mapping[str, Any]) -> tuple[nn.Module, int]:
    """An encoder mapping (N, 3, H, W) images to pooled (N, D) features, and D."""
    name = cfg["name"]
    if name in TORCHVISION:
        return _torchvision_resnet(name, bool(cfg.get("small_images", False)))
    if name == "timm":
        if not cfg.get("timm_name"):
            raise ConfigError("backbone=timm needs backbone.timm_name=<a timm model name>")
        size = cfg.get("image_size")
        return _timm_model(str(cfg["timm_name"]), int(size) if size else None)
    raise ConfigError(f"unknown backbone '{name}'; {suggestion(name, (*TORCHVISION, 'timm'))}")


@torch.no_grad()
def infer_feature_dim(model: nn.Module, image_size: int) -> int:
    """Feature dimension measured with one dummy forward (for models that do not declare it)."""
    was_training = model.training
    model.eval()
    out = model(torch.zeros(2, 3, image_size, image_size))
    model.train(was_training)
    return int(out.shape[-1])
