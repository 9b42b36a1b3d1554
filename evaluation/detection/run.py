"""Detection transfer: build the detector on a checkpoint's encoder (or a random / supervised
baseline), fine-tune it and score COCO-style AP. `sslkit.app.detect` is the command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset, Subset

from sslkit.config import as_dict
from sslkit.data.base import num_images
from sslkit.devices import World
from sslkit.engine.checkpoint import previous_of
from sslkit.engine.outputs import backbone_name
from sslkit.errors import ConfigError

INITS = ("checkpoint", "random", "supervised")


def _subset(ds: Dataset, n: Any) -> Dataset:
    return ds if n is None or int(n) >= num_images(ds) else Subset(ds, range(int(n)))


def _sizes(value: Any) -> int | list[int]:
    """`eval.min_size`: one size, or a list that torchvision samples from per training image (multi-scale)."""
    return int(value) if isinstance(value, int | float | str) else [int(v) for v in value]


def _encoder(cfg: DictConfig, init: str, trained: Any, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone the detector starts from, and what it took to make it."""
    from sslkit.nn.backbones import build_backbone

    if init == "checkpoint":
        return trained.backbone, {}
    torch.manual_seed(int(cfg.seed))
    backbone, dim = build_backbone(as_dict(cfg.backbone))
    if init == "random":
        return backbone, {}
    from .supervised import pretrain_supervised

    e = cfg.eval
    return backbone, pretrain_supervised(backbone, dim, as_dict(cfg.data), int(e.supervised_steps),
                                         int(e.supervised_batch_size), float(e.supervised_lr), int(cfg.seed), device)


def run(cfg: DictConfig, init: str, trained: Any, world: World, out_dir: Path) -> dict[str, Any]:
    from .data import build_detection_dataset
    from .metric import coco_ap, torchmetrics_ap
    from .model import build_detector
    from .train import FineTuneSettings, fine_tune, predict

    e = cfg.eval
    seed = int(cfg.seed)
    train_ds, num_classes = build_detection_dataset(as_dict(e), as_dict(cfg.data), "train", seed)
    test_ds, _ = build_detection_dataset(as_dict(e), as_dict(cfg.data), "test", seed)
    train_ds, test_ds = _subset(train_ds, e.train_subset), _subset(test_ds, e.test_subset)
    t0 = time.perf_counter()
    backbone, pretrain_info = _encoder(cfg, init, trained, world.device)
    pretrain_seconds = time.perf_counter() - t0
    bn = str(e.bn)
    if bn == "sync" and (world.size == 1 or world.device.type != "cuda"):  # torch's SyncBatchNorm is GPU-only
        raise ConfigError("eval.bn=sync synchronises BN across torchrun processes on GPUs (trainer.devices=N with "
                          "CUDA); on a CPU or in one process use eval.bn=train")
    torch.manual_seed(seed)  # the new layers (FPN, RPN, box head) start the same for every encoder
    model = build_detector(backbone, num_classes, head=str(e.head), bn=bn, trainable_stages=int(e.trainable_stages),
                           anchor_sizes=[int(a) for a in e.anchor_sizes], min_size=_sizes(e.min_size),
                           max_size=int(e.max_size), image_mean=list(cfg.data.mean), image_std=list(cfg.data.std),
                           box_head_dim=int(e.box_head_dim), rois_per_image=int(e.rois_per_image),
                           proposals=int(e.proposals), pre_nms_train=int(e.pre_nms_train),
                           pre_nms_test=int(e.pre_nms_test), post_nms_test=int(e.post_nms_test)).to(world.device)
    net: nn.Module = model
    if world.size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[world.device.index]
                                                  if world.device.type == "cuda" else None)
    settings = FineTuneSettings(int(e.steps), int(e.batch_size), float(e.lr), float(e.momentum),
                                float(e.weight_decay), int(e.warmup_steps), tuple(float(m) for m in e.milestones), seed)
    ckpt = out_dir / "detect_ckpt.pt"
    if not bool(e.resume) and world.is_main:
        ckpt.unlink(missing_ok=True)
        previous_of(ckpt).unlink(missing_ok=True)
    log = print if world.is_main else (lambda _msg: None)
    t1 = time.perf_counter()
    train_info = fine_tune(net, train_ds, settings, world, ckpt, int(e.checkpoint_every_steps), log)
    train_seconds = time.perf_counter() - t1
    t2 = time.perf_counter()
    preds, targets = predict(net, test_ds, int(e.eval_batch_size), world)
    ap = coco_ap(preds, targets)
    tm = torchmetrics_ap(preds, targets)
    eval_seconds = time.perf_counter() - t2
    b = cfg.backbone
    return {
        "evaluation": "detect", **ap, "torchmetrics": tm, "init": init,
        "checkpoint": str(trained.file) if trained else None,
        "backbone": backbone_name(b), "small_images": bool(b.get("small_images")),
        "dataset": str(e.dataset), "num_classes": num_classes, "train_size": num_images(train_ds),
        "test_size": num_images(test_ds), "head": str(e.head), "bn": bn, "world_size": world.size,
        "device": str(world.device), "metric": "pycocotools COCOeval bbox (101-point, IoU .50:.95)",
        "settings": {**settings.__dict__, "milestones": list(settings.milestones), "min_size": _sizes(e.min_size),
                     "max_size": int(e.max_size), "anchor_sizes": [int(a) for a in e.anchor_sizes],
                     "trainable_stages": int(e.trainable_stages), "box_head_dim": int(e.box_head_dim),
                     "rois_per_image": int(e.rois_per_image), "proposals": int(e.proposals),
                     "pre_nms_train": int(e.pre_nms_train), "pre_nms_test": int(e.pre_nms_test),
                     "post_nms_test": int(e.post_nms_test)},
        **train_info, **pretrain_info,
        "timing": {"pretrain": round(pretrain_seconds, 3), "train": round(train_seconds, 3),
                   "eval": round(eval_seconds, 3)},
    }


def summary(r: dict[str, Any], path: Path) -> str:
    what = Path(r["checkpoint"]).parent.parent.name if r["checkpoint"] else r["init"]
    return (f"detect {what}: AP50={r['AP50']:.1f} AP={r['AP']:.1f} AP75={r['AP75']:.1f} ({r['dataset']}, "
            f"{r['head']}, bn={r['bn']}, {r['steps']} steps x {r['settings']['batch_size']}, "
            f"{r['train_size']} train / {r['test_size']} test, {r['seconds']:.1f}s) -> {path}")
