"""Backbones from torchvision (ResNet-18/34/50) and timm, with their classifier removed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from sslkit.errors import ConfigError, suggestion
from sslkit.plugins import Registry

if TYPE_CHECKING:
    from torchvision.models.resnet import ResNet

def _torchvision_resnet(name: str, small_images: bool, width: int = 64) -> tuple[nn.Module, int]:
    import torchvision

    model: ResNet = getattr(torchvision.models, name)(weights=None)
    if width != 64:
        _rebuild_width(model, width)
    if small_images:
        # CIFAR variant (SimCLR arXiv 2002.05709 appendix B.9): 3x3 stride-1 stem, no max-pool.
        model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, dim


def _rebuild_width(model: ResNet, width: int) -> None:
    """The same ResNet with `width` stem channels (64 in He et al. 2016): stages width x (1, 2, 4, 8)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    block: type[BasicBlock] | type[Bottleneck] = Bottleneck if isinstance(model.layer1[0], Bottleneck) else BasicBlock
    depths = [len(getattr(model, f"layer{i}")) for i in range(1, 5)]
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    for i, depth in enumerate(depths):
        setattr(model, f"layer{i + 1}", model._make_layer(block, width * 2**i, depth, stride=1 if i == 0 else 2))
    model.fc = nn.Linear(width * 8 * block.expansion, 1000)
    for m in model.modules():  # torchvision's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _timm_model(name: str, image_size: int | None = None) -> tuple[nn.Module, int]:
    import timm

    sized: dict[str, Any] = {"img_size": image_size} if image_size else {}  # ViTs and other fixed-size models
    # ViTs take any input size (multi-crop's local crops): position embeddings resampled, a crop that is no
    # patch multiple zero-padded to one; then the models without those arguments, then CNNs (no img_size)
    dynamic = {"dynamic_img_size": True, "dynamic_img_pad": True}
    attempts: list[dict[str, Any]] = [dynamic | sized, {"dynamic_img_size": True} | sized, sized, {}]
    try:
        for i, kwargs in enumerate(attempts):
            try:
                model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
                break
            except TypeError:
                if i == len(attempts) - 1:
                    raise
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ConfigError(f"unknown timm model '{name}'; "
                              f"{suggestion(name, timm.list_models())}".split("; valid:")[0]) from None
        raise
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if image_size and isinstance(patch, tuple) and image_size % int(patch[0]):
        raise ConfigError(f"timm model '{name}' has {patch[0]} px patches, which do not divide data.image_size="
                          f"{image_size}; use an image size that is a multiple of {patch[0]}")
    return model, int(vars(model)["num_features"])  # timm sets it in __init__


#: A backbone builder: the `backbone` config -> (encoder, feature dimension).
BackboneBuilder = Callable[[Mapping[str, Any]], tuple[nn.Module, int]]
#: `backbone.name` -> builder: torchvision ResNets, timm, the `sslkit.backbones` entry points, `package.module:build`
BACKBONES: Registry[BackboneBuilder] = Registry("backbone", "sslkit.backbones")
#: the torchvision ResNets among them (their weights load into `torchvision.models.<name>`)
TORCHVISION = ("resnet18", "resnet34", "resnet50")


@BACKBONES.register("resnet18")
@BACKBONES.register("resnet34")
@BACKBONES.register("resnet50")
def _resnet(cfg: Mapping[str, Any]) -> tuple[nn.Module, int]:
    width = int(cfg.get("width") or 64)
    if width < 1:
        raise ConfigError(f"backbone.width must be a positive integer, got {width}")
    return _torchvision_resnet(str(cfg["name"]), bool(cfg.get("small_images", False)), width)


@BACKBONES.register("timm")
def _timm(cfg: Mapping[str, Any]) -> tuple[nn.Module, int]:
    if not cfg.get("timm_name"):
        raise ConfigError("backbone=timm needs backbone.timm_name=<a timm model name>")
    size = cfg.get("image_size")
    return _timm_model(str(cfg["timm_name"]), int(size) if size else None)


def build_backbone(cfg: Mapping[str, Any], allow_import: bool = True) -> tuple[nn.Module, int]:
    """An encoder mapping (N, 3, H, W) images to pooled (N, D) features, and D. `allow_import=False`
    for a config read from a file: its `backbone.name` may then only be a registered one."""
    return BACKBONES.get(str(cfg["name"]), allow_import)(cfg)


def encoder_weights(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The weights of the encoder a checkpoint's method declared for evaluation and export (its `encoder`
    key: a teacher, say), or, in a checkpoint written before that key existed, the method's `backbone.*`."""
    if isinstance(checkpoint.get("encoder"), Mapping):
        return dict(checkpoint["encoder"])
    method = checkpoint.get("method", {})
    return {k[len("backbone."):]: v for k, v in method.items() if k.startswith("backbone.")}


def backbone_from_checkpoint(cfg: dict[str, Any], checkpoint: Mapping[str, Any]) -> nn.Module:
    """The trained encoder of a checkpoint (`encoder_weights`) in a fresh backbone of `cfg`."""
    backbone, _ = build_backbone(cfg)
    backbone.load_state_dict(encoder_weights(checkpoint))
    return backbone


def backbone_from_state(cfg: dict[str, Any], method_state: dict[str, Any]) -> nn.Module:
    """The trained backbone of a checkpoint: its method's `backbone.*` weights in a fresh backbone of `cfg`."""
    backbone, _ = build_backbone(cfg, allow_import=False)  # a checkpoint's config never names code
    state = {k[len("backbone."):]: v for k, v in method_state.items() if k.startswith("backbone.")}
    backbone.load_state_dict(state)
    return backbone
