"""The records of the kNN and linear-probe evaluations, from an EvalContext."""

from __future__ import annotations

import time
from typing import Any

from sslkit.data.base import num_images
from sslkit.errors import ConfigError

from .context import EvalContext, as_subset, common_record, split_features


def run_knn(ctx: EvalContext) -> dict[str, Any]:
    """Weighted kNN for every k of `eval.k` from one search; the headline is k=200 (else the largest)."""
    from .knn import as_ks, knn_accuracy, reported_k

    e = ctx.cfg.eval
    ks = as_ks(e.k)
    kind = str(e.features)
    train = split_features(ctx, kind, "train", as_subset(e.train_subset), int(e.batch_size))
    test = split_features(ctx, kind, "test", as_subset(e.test_subset), int(e.batch_size))
    start = time.perf_counter()
    results = knn_accuracy(train.feats, train.labels, test.feats, test.labels, ks, float(e.temperature),
                           max(train.num_classes, test.num_classes))
    knn_seconds = time.perf_counter() - start
    k = reported_k(ks)
    return {
        "evaluation": "knn", "top1": results[k]["top1"], "top5": results[k]["top5"], "k": k, "ks": ks,
        "temperature": float(e.temperature), "features": kind,
        "results": {str(kk): v for kk, v in results.items()},
        **common_record(ctx, len(train), test, train.cached),
        "timing": {"train_features": round(train.seconds, 3), "test_features": round(test.seconds, 3),
                   "knn": round(knn_seconds, 3)},
    }


def run_linear(ctx: EvalContext) -> dict[str, Any]:
    """The fast probe on cached features, or the MoCo protocol on augmented images."""
    from . import linear

    e = ctx.cfg.eval
    mode = str(e.mode)
    if mode not in ("fast", "protocol"):
        raise ConfigError(f"unknown eval.mode '{mode}'; valid: fast, protocol")
    test = split_features(ctx, "backbone", "test", as_subset(e.test_subset), int(e.batch_size))
    num_classes = test.num_classes
    if mode == "fast":
        train = split_features(ctx, "backbone", "train", as_subset(e.train_subset), int(e.batch_size))
        fast = linear.FastSettings(int(e.fast_epochs), float(e.fast_lr), int(e.fast_batch_size),
                                   float(e.fast_weight_decay), int(ctx.cfg.seed))
        out = linear.fast_probe(train.feats, train.labels, test.feats, test.labels, num_classes, fast,
                                ctx.device)
        settings: dict[str, Any] = {"epochs": fast.epochs, "lr": fast.lr, "batch_size": fast.batch_size,
                                    "weight_decay": fast.weight_decay, "optimizer": "sgd_nesterov_cosine",
                                    "standardised": True}
        return {"evaluation": "linear", "mode": mode, "top1": out["top1"], "top5": out["top5"],
                "train_top1": out["train_top1"], "settings": settings,
                **common_record(ctx, len(train), test, train.cached),
                "timing": {"train_features": round(train.seconds, 3), "test_features": round(test.seconds, 3),
                           "probe": round(out["probe_seconds"], 3)}}
    from sslkit.data import build_dataset

    assert ctx.trained is not None
    proto = linear.ProtocolSettings(int(e.epochs), float(e.lr), float(e.momentum), float(e.weight_decay),
                                    tuple(int(m) for m in e.milestones), int(e.batch_size), int(ctx.cfg.seed))
    dataset = build_dataset(ctx.data, "train", as_subset(e.train_subset))
    start = time.perf_counter()
    fc, last_loss = linear.train_protocol(ctx.trained.backbone, dataset, ctx.data, num_classes, proto,
                                          ctx.device)
    train_seconds = time.perf_counter() - start
    top1, top5 = linear.classifier_accuracy(fc, test.feats, test.labels)
    common = common_record(ctx, num_images(dataset), test, None)
    return {"evaluation": "linear", "mode": mode, "top1": top1, "top5": top5, "last_epoch_loss": last_loss,
            "settings": {"epochs": proto.epochs, "lr": proto.lr, "momentum": proto.momentum,
                         "weight_decay": proto.weight_decay, "milestones": list(proto.milestones),
                         "batch_size": proto.batch_size, "augmentation": "RandomResizedCrop(0.08-1)+flip",
                         "fc_init": "N(0, 0.01), bias 0", "backbone_unchanged": True},
            **common, "timing": {"test_features": round(test.seconds, 3), "train": round(train_seconds, 3)}}
