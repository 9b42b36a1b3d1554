"""What one evaluation works on: the config, the checkpoint's backbone, the data and where results
go; and the features and settings every evaluation record shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslkit.config import as_dict
from sslkit.engine import checkpoint as ckpt_io
from sslkit.engine.outputs import backbone_name
from sslkit.errors import CheckpointError
from sslkit.nn.backbones import backbone_from_checkpoint

from .exports import meta_path, read_export
from .features import Features, load_features


@dataclass
class TrainedBackbone:
    """A checkpoint's backbone and the config it was trained with."""

    file: Path
    config: DictConfig
    backbone: nn.Module

    @property
    def name(self) -> str:
        return backbone_name(self.config.backbone)


@dataclass
class EvalContext:
    """`cfg` is the composed config; `data` the data config the evaluation uses (the checkpoint's
    unless the command line chose another), `trained` is None for the raw-pixel baseline."""

    name: str
    cfg: DictConfig
    data: dict[str, Any]
    trained: TrainedBackbone | None
    out_dir: Path
    device: torch.device

    @property
    def cache_dir(self) -> Path:
        return self.out_dir / "cache"

    @property
    def checkpoint(self) -> Path | None:
        return self.trained.file if self.trained is not None else None


def load_trained(path: str | Path) -> TrainedBackbone:
    """Load a checkpoint on the CPU and rebuild its backbone from the checkpoint's own config; a
    torchvision or timm file from `sslkit export` (its `.json` beside it) gives its backbone and view."""
    candidate = Path(path)
    if candidate.is_file() and meta_path(candidate).is_file():
        meta, backbone = read_export(candidate)
        config = OmegaConf.create({"backbone": meta["backbone"], "data": meta["data"]})
        return TrainedBackbone(candidate.resolve(), config, backbone)
    opened = ckpt_io.open_checkpoint(path)
    state, file = opened.checkpoint, opened.file
    if "config" not in state or "method" not in state:
        raise CheckpointError(f"{file} has no saved config or method weights; is it from `sslkit train`?")
    config = ckpt_io.config_of(state)
    return TrainedBackbone(file.resolve(), config, backbone_from_checkpoint(as_dict(config.backbone), state))


def as_subset(value: Any) -> int | None:
    """`eval.train_subset` / `eval.test_subset`: None (everything) or a number of images."""
    return None if value is None else int(value)


def split_features(ctx: EvalContext, kind: str, split: str, subset: int | None, batch_size: int) -> Features:
    """Features of one split for this evaluation, through the cache unless `eval.cache=false`."""
    trained = ctx.trained
    return load_features(kind, split, subset, ctx.data, backbone=trained.backbone if trained else None,
                         checkpoint=ctx.checkpoint, device=ctx.device, batch_size=batch_size,
                         cache_dir=ctx.cache_dir if bool(ctx.cfg.eval.get("cache", True)) else None)


def common_record(ctx: EvalContext, train_size: int, test: Features, train_cached: bool | None) -> dict[str, Any]:
    """Settings every evaluation record holds."""
    return {
        "checkpoint": str(ctx.checkpoint) if ctx.checkpoint else None,
        "backbone": ctx.trained.name if ctx.trained else None,
        "data": str(ctx.data["name"]),
        "image_size": int(ctx.data["image_size"]),
        "train_subset": as_subset(ctx.cfg.eval.train_subset),
        "test_subset": as_subset(ctx.cfg.eval.test_subset),
        "train_size": train_size,
        "test_size": len(test),
        "num_classes": test.num_classes,
        "feature_dim": int(test.feats.shape[1]),
        "device": str(ctx.device),
        "cache": {"dir": str(ctx.cache_dir) if test.path is not None else None,
                  "train_hit": train_cached, "test_hit": test.cached},
    }
