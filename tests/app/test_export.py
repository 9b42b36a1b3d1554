"""What the README says about loading an export: torchvision needs strict=False (only fc.* missing),
timm loads it strictly with num_classes=0, and a strict load into a model with a classifier fails."""

import pytest
import timm
import torch
import torchvision

from sslkit.app.export import export_backbone
from sslkit.nn.backbones import build_backbone


def test_torchvision_needs_strict_false(tmp_path):
    backbone, _ = build_backbone({"name": "resnet18"})
    sd = torch.load(export_backbone(backbone, tmp_path / "b.pt"), weights_only=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        torchvision.models.resnet18().load_state_dict(sd)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(sd, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected


def test_timm_loads_strictly_with_num_classes_0(tmp_path):
    backbone, _ = build_backbone({"name": "timm", "timm_name": "resnet10t"})
    sd = torch.load(export_backbone(backbone, tmp_path / "b.pt"), weights_only=True)
    timm.create_model("resnet10t", num_classes=0).load_state_dict(sd)  # strict
    with pytest.raises(RuntimeError, match="Missing key"):
        timm.create_model("resnet10t").load_state_dict(sd)
