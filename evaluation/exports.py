"""A trained backbone in the formats other tools load: torchvision and timm weights, ONNX and TorchScript.

Every export writes its file and, beside it, `<file>.json`: the backbone config, the evaluation view
(image size, mean, std), the feature dimension and how to load the file. `sslkit embed` and
`sslkit search` take a torchvision or timm export (with its .json) wherever they take a checkpoint.

- torchvision: the backbone's weights plus an identity `fc` (feature dim -> feature dim), so they load
  with `strict=True` into `torchvision.models.<name>(num_classes=<feature dim>)`, whose output is then
  the embedding itself. The small-image stem (SimCLR arXiv 2002.05709, appendix B.9: 3x3 stride-1
  conv1, no max-pool) needs those two modules swapped before loading; `torchvision_code` says how.
- timm: the backbone's weights for `timm.create_model(<name>, num_classes=0)` (timm backbones, and the
  torchvision ResNets with the ImageNet stem, whose key names timm's ResNets share).
- onnx: input `images` (N, 3, S, S) normalised float32, output `features` (N, D), N dynamic; checked
  against ONNX Runtime at export (max |diff| <= 1e-4 in fp32).
- torchscript: `torch.jit.script` (or `torch.jit.trace` where scripting fails), checked the same way.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sslkit.errors import CheckpointError, ConfigError, suggestion
from sslkit.files import atomic_path, save_atomic, write_json
from sslkit.nn.backbones import TORCHVISION, build_backbone

FORMATS = ("torchvision", "timm", "onnx", "torchscript")
KIND = "sslkit-export"
VERSION = 1
TOLERANCE = 1e-4  # max |ONNX Runtime - PyTorch| in fp32 (issue 21)
OPSET = 17
VIEW_KEYS = ("name", "image_size", "mean", "std")


def meta_path(file: Path) -> Path:
    """The description written beside an export: `<file>.json`."""
    return file.with_name(file.name + ".json")


def natural_format(backbone_cfg: Mapping[str, Any]) -> str:
    """The weights format a backbone exports to by default: torchvision's ResNets, else timm."""
    return "torchvision" if backbone_cfg["name"] in TORCHVISION else "timm"


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; {suggestion(fmt, FORMATS)}")
    return fmt


def _weights(backbone: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}


def torchvision_state(backbone: nn.Module, cfg: Mapping[str, Any], dim: int) -> dict[str, Tensor]:
    """The backbone's weights and an identity fc: `torchvision.models.<name>(num_classes=dim)` loads them
    with strict=True and returns the embedding."""
    if cfg["name"] not in TORCHVISION:
        raise ConfigError(f"format=torchvision needs a torchvision ResNet ({', '.join(TORCHVISION)}); this backbone "
                          f"is timm's {cfg.get('timm_name')}: use format=timm, onnx or torchscript")
    state = _weights(backbone)  # a narrow ResNet (backbone.width != 64) is torchvision's class, built by sslkit
    state["fc.weight"] = torch.eye(dim)
    state["fc.bias"] = torch.zeros(dim)
    return state


def timm_state(backbone: nn.Module, cfg: Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """The backbone's weights and the timm model name they load into with num_classes=0."""
    if cfg["name"] == "timm":
        return _weights(backbone), str(cfg["timm_name"])
    if bool(cfg.get("small_images")) or int(cfg.get("width") or 64) != 64:
        raise ConfigError(f"format=timm: timm has no {cfg['name']} with the small-image stem or another width; "
                          "use format=torchvision, onnx or torchscript")
    return _weights(backbone), str(cfg["name"])


def torchvision_code(cfg: Mapping[str, Any], dim: int, file: str) -> str:
    """Python that builds the matching torchvision module and loads the export strictly."""
    width = int(cfg.get("width") or 64)
    if width != 64:  # torchvision has no constructor for another stem width: sslkit builds the same class
        spec = {"name": cfg["name"], "small_images": bool(cfg.get("small_images")), "width": width}
        return "\n".join(["import torch", "from sslkit.nn.backbones import build_backbone",
                          f"model, _ = build_backbone({spec!r})",
                          f"model.fc = torch.nn.Linear({dim}, {dim})  # an identity: output = embedding",
                          f"model.load_state_dict(torch.load({file!r}, weights_only=True), strict=True)"])
    lines = ["import torch, torchvision",
             f"model = torchvision.models.{cfg['name']}(num_classes={dim})  # fc is an identity: output = embedding"]
    if bool(cfg.get("small_images")):
        lines += ["model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)  "
                  "# small-image stem",
                  "model.maxpool = torch.nn.Identity()"]
    lines.append(f"model.load_state_dict(torch.load({file!r}, weights_only=True), strict=True)")
    return "\n".join(lines)


def _example(backbone: nn.Module, image_size: int, batch: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    param = next(backbone.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    return torch.randn(batch, 3, image_size, image_size, generator=g, dtype=dtype)


@torch.no_grad()
def write_onnx(backbone: nn.Module, path: Path, image_size: int) -> float:
    """Export with a dynamic batch axis and return max |ONNX Runtime - PyTorch| on a batch of another size."""
    backbone = backbone.cpu().float().eval()
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(backbone, (_example(backbone, image_size, 2),), str(tmp), input_names=["images"],
                          output_names=["features"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    return onnx_difference(backbone, path, image_size)


@torch.no_grad()
def onnx_difference(backbone: nn.Module, path: Path, image_size: int, batch: int = 3) -> float:
    """Max |ONNX Runtime - PyTorch| over a random batch; a CheckpointError above TOLERANCE."""
    import onnxruntime as ort

    x = _example(backbone, image_size, batch, seed=1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["features"], {"images": x.numpy()})[0])
    diff = float((got - backbone.eval()(x)).abs().max())
    if not diff <= TOLERANCE:
        raise CheckpointError(f"the ONNX export {path} differs from PyTorch by {diff:.3g} (> {TOLERANCE:g})")
    return diff


@torch.no_grad()
def write_torchscript(backbone: nn.Module, path: Path, image_size: int) -> float:
    """`torch.jit.script` (trace where scripting fails); returns max |TorchScript - PyTorch|."""
    backbone = backbone.cpu().float().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices: TorchScript is the format asked for
        try:
            module = torch.jit.script(backbone)
        except Exception:  # modules with Python the scripter cannot compile: trace a batch of 2
            module = torch.jit.trace(backbone, _example(backbone, image_size, 2))
        with atomic_path(path) as tmp:
            torch.jit.save(module, str(tmp))
        x = _example(backbone, image_size, 3, seed=1)
        diff = float((torch.jit.load(str(path))(x) - backbone(x)).abs().max())
    if not diff <= TOLERANCE:
        raise CheckpointError(f"the TorchScript export {path} differs from PyTorch by {diff:.3g} (> {TOLERANCE:g})")
    return diff


def write_export(backbone: nn.Module, backbone_cfg: Mapping[str, Any], data: Mapping[str, Any], fmt: str,
                 path: Path, source: str) -> dict[str, Any]:
    """Write `backbone` as `fmt` to `path` and its description to `<path>.json`; return the description."""
    check_format(fmt)
    cfg = dict(backbone_cfg)
    image_size = int(data["image_size"])
    with torch.no_grad():
        dim = int(backbone.eval()(_example(backbone, image_size, 1)).shape[1])
    meta: dict[str, Any] = {"kind": KIND, "version": VERSION, "format": fmt, "backbone": cfg,
                            "data": {k: data.get(k) for k in VIEW_KEYS}, "source": source}
    if fmt == "torchvision":
        save_atomic(torchvision_state(backbone, cfg, dim), path)
        meta["load"] = torchvision_code(cfg, dim, path.name)
    elif fmt == "timm":
        state, name = timm_state(backbone, cfg)
        save_atomic(state, path)
        meta["load"] = (f"model = timm.create_model({name!r}, num_classes=0)\n"
                        f"model.load_state_dict(torch.load({path.name!r}, weights_only=True), strict=True)")
    elif fmt == "onnx":
        meta["max_abs_diff"] = write_onnx(backbone, path, image_size)
        meta["load"] = (f"session = onnxruntime.InferenceSession({path.name!r})\n"
                        "features = session.run(['features'], {'images': images})[0]  # images: (N, 3, S, S)")
    else:
        meta["max_abs_diff"] = write_torchscript(backbone, path, image_size)
        meta["load"] = f"model = torch.jit.load({path.name!r})"
    meta["feature_dim"] = dim
    write_json(meta, meta_path(path))
    return meta


def read_export(file: Path) -> tuple[dict[str, Any], nn.Module]:
    """The description and rebuilt backbone of a torchvision or timm export (its `<file>.json` beside it)."""
    try:
        meta = json.loads(meta_path(file).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {meta_path(file)}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise CheckpointError(f"{meta_path(file)} does not describe an sslkit export")
    fmt = meta.get("format")
    if fmt not in ("torchvision", "timm"):
        raise CheckpointError(f"{file} is a format={fmt} export; embed and search read a run, a checkpoint, or a "
                              "format=torchvision or timm export")
    backbone, _ = build_backbone(meta["backbone"])
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        if fmt == "torchvision":
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        backbone.load_state_dict(state)
    except Exception as exc:
        raise CheckpointError(f"{file} does not hold the weights its .json describes: "
                              f"{str(exc).strip().splitlines()[0]}") from None
    return meta, backbone
