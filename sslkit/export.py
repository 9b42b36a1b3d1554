"""Export a trained backbone as a plain state_dict for torchvision / timm models."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sslkit.engine.checkpoint import save_atomic


def backbone_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Backbone weights on the CPU with torchvision/timm key names (no `backbone.` prefix, no fc).

    SplitBatchNorm2d and SyncBatchNorm keep BatchNorm2d's keys, so nothing needs renaming.
    """
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}


def export_backbone(backbone: nn.Module, path: Path) -> Path:
    """Write the backbone as a state_dict that `torchvision.models.resnet50().load_state_dict(sd, strict=False)`
    loads with only `fc.*` missing, and `timm.create_model(name, num_classes=0)` loads strictly."""
    save_atomic(backbone_state(backbone), path)
    return path
