"""`sslkit export` and `sslkit checkpoint upgrade`: a trained backbone for torchvision, timm, ONNX or
TorchScript (`sslkit.evaluation.exports`), training's plain `backbone.pt`, and old checkpoints converted
to the current format."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from torch import nn

from sslkit.config import as_dict
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.outputs import new_file
from sslkit.errors import CheckpointError, ConfigError
from sslkit.files import remove_stale_temps, save_atomic
from sslkit.nn.backbones import backbone_from_checkpoint
from sslkit.overrides import key_values


def backbone_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Backbone weights on the CPU with torchvision/timm key names (no `backbone.` prefix, no fc).

    SplitBatchNorm2d and SyncBatchNorm keep BatchNorm2d's keys, so nothing needs renaming.
    """
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}


def export_backbone(backbone: nn.Module, path: Path) -> Path:
    """Write the backbone as a state_dict that `torchvision.models.resnet50().load_state_dict(sd, strict=False)`
    loads with only `fc.*` missing, and `timm.create_model(name, num_classes=0)` loads strictly."""
    save_atomic(backbone_state(backbone), path)
    remove_stale_temps(path, older_than=60)  # an export killed inside its save left one
    return path


def export_command(overrides: list[str]) -> int:
    """`sslkit export checkpoint=<run dir or .pt> [format=torchvision|timm|onnx|torchscript] [out=<file>]`."""
    from sslkit.evaluation.exports import check_format, natural_format, write_export

    opts = key_values(overrides, {"checkpoint", "out", "format"})
    fmt = check_format(opts["format"]) if opts.get("format") else None
    if not opts.get("checkpoint"):
        raise ConfigError("export needs checkpoint=<run dir or checkpoint .pt>")
    saved, run_dir = ckpt.load_run(opts["checkpoint"])
    config = ckpt.config_of(saved)
    fmt = fmt or natural_format(as_dict(config.backbone))
    default = f"backbone_{fmt}.pt" if fmt != "onnx" else "backbone.onnx"  # beside training's plain backbone.pt
    out = Path(opts["out"]) if opts.get("out") else run_dir / default
    if opts.get("out"):  # the default <run dir>/backbone_<format> is the run's own export; anything else must be new
        new_file(out)
    backbone = backbone_from_checkpoint(as_dict(config.backbone), saved)
    source = str(Path(opts["checkpoint"]).resolve())
    meta = write_export(backbone, as_dict(config.backbone), as_dict(config.data), fmt, out, source)
    check = f", max |diff| vs PyTorch {meta['max_abs_diff']:.2g}" if "max_abs_diff" in meta else ""
    print(f"exported backbone ({sum(p.numel() for p in backbone.parameters())} parameters, format={fmt}{check}) "
          f"to {out} (how to load it: {out.name}.json)")
    return 0


def upgrade_command(file: str, overrides: list[str]) -> int:
    """`sslkit checkpoint upgrade FILE [out=PATH]`: unpickles FILE (trusted files only)."""
    opts = key_values(overrides, {"out"})
    src = ckpt.locate(file)
    out = Path(opts["out"]) if opts.get("out") else src
    if out != src and out.exists():
        raise CheckpointError(f"out={out} exists; choose a new file")
    print(f"sslkit: warning: unpickling {src} to convert it; this can run code from the file: upgrade only "
          "checkpoints you trust", file=sys.stderr, flush=True)
    backup = src.with_name(src.name + ".v1.bak")
    if out == src:
        if backup.exists():
            raise CheckpointError(f"{backup} exists; move it away or pass out=<new file>")
        shutil.copy2(src, backup)
    version = ckpt.upgrade(src, out)
    if version == ckpt.VERSION:
        if out == src:
            backup.unlink()
        print(f"{src} is already format {ckpt.VERSION}; nothing to do")
    else:
        print(f"upgraded {src} from format {version} to {ckpt.VERSION}: {out}"
              + (f" (the old file is {src.name}.v1.bak)" if out == src else ""))
    return 0
