"""A torchvision Faster R-CNN around a checkpoint's encoder: the MoCo paper's R50-C4 (default) or an FPN
head, with its BN trained per process (default), synchronised across ranks, or frozen."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from sslkit.errors import ConfigError

BN_MODES = ("frozen", "train", "sync")
HEADS = ("fpn", "c4")
STAGES = ("layer1", "layer2", "layer3", "layer4")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d replaced by a FrozenBatchNorm2d holding its running statistics and affine."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            frozen.weight.copy_(module.weight if module.affine else torch.ones(module.num_features))
            frozen.bias.copy_(module.bias if module.affine else torch.zeros(module.num_features))
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        setattr(module, name, freeze_batchnorm(child))
    return module


def _is_resnet(backbone: nn.Module) -> bool:
    return all(hasattr(backbone, s) for s in ("conv1", "bn1", "maxpool", *STAGES)) and _act(backbone) is not None


def _act(backbone: nn.Module) -> nn.Module | None:
    """The stem's activation: `relu` in torchvision's ResNets, `act1` in timm's."""
    return getattr(backbone, "relu", None) or getattr(backbone, "act1", None)


def _stage_channels(backbone: nn.Module) -> list[int]:
    """Output channels of layer1..layer4 (BasicBlock and Bottleneck both end in a BN)."""
    out = []
    for stage in STAGES:
        bns = [m for m in getattr(backbone, stage).modules() if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d)]
        out.append(int(bns[-1].weight.shape[0]))
    return out


def _freeze_stages(backbone: nn.Module, trainable_stages: int) -> None:
    """Train only the last `trainable_stages` of (stem, layer1..layer4); 5 trains everything."""
    if not 0 <= trainable_stages <= 5:
        raise ConfigError(f"eval.trainable_stages={trainable_stages}; valid: 0..5 (5 fine-tunes every stage)")
    parts = [["conv1", "bn1"], *[[s] for s in STAGES]]
    for names in parts[: 5 - trainable_stages]:
        for n in names:
            for p in getattr(backbone, n).parameters():
                p.requires_grad_(False)


class _C4Trunk(nn.Module):
    """Stem and layer1..layer3 of a ResNet: one stride-16 feature map named '0' (Detectron's C4)."""

    def __init__(self, backbone: nn.Module, out_channels: int) -> None:
        super().__init__()
        act = _act(backbone)
        assert act is not None, "not a ResNet: no stem activation"
        stem: list[nn.Module] = [getattr(backbone, name) for name in ("conv1", "bn1")]
        stages: list[nn.Module] = [getattr(backbone, name) for name in ("maxpool", *STAGES[:3])]
        self.body = nn.Sequential(*stem, act, *stages)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return OrderedDict([("0", self.body(x))])


class _Res5Head(nn.Module):
    """layer4 on 14x14 RoI features, an extra BN, then global average pooling: Detectron2's Res5ROIHeads
    with the norm MoCo adds after res5 (`Res5ROIHeadsExtraNorm`, MoCo arXiv 1911.05722 sec. 4.2)."""

    def __init__(self, layer4: nn.Module, channels: int, frozen: bool) -> None:
        super().__init__()
        self.layer4 = layer4
        self.norm = FrozenBatchNorm2d(channels) if frozen else nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.norm(self.layer4(x)), 1), 1)


def build_detector(backbone: nn.Module, num_classes: int, *, head: str = "c4", bn: str = "train",
                   trainable_stages: int = 5, anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
                   min_size: int | Sequence[int] = 800, max_size: int = 1333,
                   image_mean: Sequence[float] = (0.485, 0.456, 0.406),
                   image_std: Sequence[float] = (0.229, 0.224, 0.225), box_head_dim: int = 1024,
                   rois_per_image: int = 512, proposals: int = 2000, pre_nms_train: int = 12000,
                   pre_nms_test: int = 6000, post_nms_test: int = 1000) -> FasterRCNN:
    """Faster R-CNN (Ren et al. 2015) with `num_classes` object classes (plus background) on a
    torchvision-layout ResNet `backbone` (sslkit's resnet18/34/50, either stem). The defaults are
    MoCo's VOC recipe (moco/detection/configs/Base-RCNN-C4-BN.yaml): the C4 head with an extra BN after
    res5, BN trained (`sync` under torchrun: SyncBatchNorm, the paper's setting; `frozen`:
    FrozenBatchNorm2d, Detectron's default for supervised backbones), the RPN keeping `pre_nms_train`
    boxes before NMS and `proposals` after it in training, `pre_nms_test` and `post_nms_test` at test
    (Detectron2: 12000 / 2000, 6000 / 1000). Smaller sizes make CPU runs affordable."""
    if head not in HEADS:
        raise ConfigError(f"eval.head={head}; valid: {', '.join(HEADS)}")
    if bn not in BN_MODES:
        raise ConfigError(f"eval.bn={bn}; valid: {', '.join(BN_MODES)}")
    if not _is_resnet(backbone):
        raise ConfigError("detection needs a ResNet-layout backbone (resnet18/34/50, or a timm ResNet); "
                          f"got {type(backbone).__name__}")
    if bn == "frozen":
        backbone = freeze_batchnorm(backbone)
    _freeze_stages(backbone, trainable_stages)
    channels = _stage_channels(backbone)
    ratios = (0.5, 1.0, 2.0)
    common = {"min_size": min_size if isinstance(min_size, int) else tuple(min_size), "max_size": max_size,
              "image_mean": list(image_mean), "image_std": list(image_std),
              "box_batch_size_per_image": rois_per_image, "rpn_pre_nms_top_n_train": pre_nms_train,
              "rpn_post_nms_top_n_train": proposals, "rpn_pre_nms_top_n_test": pre_nms_test,
              "rpn_post_nms_top_n_test": post_nms_test}
    if head == "fpn":
        if len(anchor_sizes) != 5:
            raise ConfigError(f"eval.anchor_sizes needs 5 sizes for the FPN's 5 levels, got {list(anchor_sizes)}")
        body = BackboneWithFPN(backbone, {s: str(i) for i, s in enumerate(STAGES)}, channels, 256,
                               extra_blocks=LastLevelMaxPool(), norm_layer=None)
        anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), (ratios,) * 5)
        box_head = TwoMLPHead(256 * 7 * 7, box_head_dim)
        model = FasterRCNN(body, rpn_anchor_generator=anchors, box_head=box_head,
                           box_predictor=FastRCNNPredictor(box_head_dim, num_classes + 1), **common)
    else:
        trunk = _C4Trunk(backbone, channels[2])
        anchors = AnchorGenerator((tuple(int(s) for s in anchor_sizes),), (ratios,))
        pool = MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=0)
        model = FasterRCNN(trunk, rpn_anchor_generator=anchors, box_roi_pool=pool,
                           box_head=_Res5Head(backbone.layer4, channels[3], bn == "frozen"),  # type: ignore[arg-type]
                           box_predictor=FastRCNNPredictor(channels[3], num_classes + 1), **common)
    if bn == "sync":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
