"""`sslkit eval {knn,linear,batch-compare,retrieval,embedding}`: compose, evaluate, write JSON, summarise."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sslkit.errors import ConfigError, suggestion

from .context import EvalContext, load_context
from .features import Features, load_features

EVALUATIONS = ("knn", "linear", "batch_compare", "retrieval", "embedding", "detect")


def run_evaluation(name: str, overrides: list[str]) -> dict[str, Any]:
    """Run evaluation `name` with Hydra-style `overrides`; return the JSON record plus `summary`."""
    if name not in EVALUATIONS:
        raise ConfigError(f"unknown evaluation '{name}'; {suggestion(name, EVALUATIONS)}")
    start = time.perf_counter()
    if name == "batch_compare":
        from .batch_compare import run_batch_compare

        return run_batch_compare(list(overrides))
    if name == "detect":
        from .detection.run import run_detect

        return run_detect(list(overrides))
    ctx = load_context(name, list(overrides))
    from sslkit.data import decodes_images
    from sslkit.engine.hardware import apply_cpu_split

    split = apply_cpu_split(ctx.device, decodes_images(str(ctx.data["name"])), ctx.cfg.trainer.get("threads"),
                            ctx.data.get("num_workers"))
    ctx.data["num_workers"] = split.workers  # feature extraction and the linear probe's loader
    result = _runner(name)(ctx)
    result["seconds"] = round(time.perf_counter() - start, 3)
    path = ctx.out_dir / result_name(name, ctx.cfg)
    result["summary"] = summary(name, result, path)
    write_json(result, path)
    return result


def _runner(name: str) -> Callable[[EvalContext], dict[str, Any]]:
    if name == "retrieval":
        from .retrieval import run_retrieval

        return run_retrieval
    if name == "embedding":
        from .embedding import run_embedding

        return run_embedding
    return run_knn if name == "knn" else run_linear


def result_name(name: str, cfg: Any) -> str:
    """knn.json; each linear probe mode has its own file (linear_fast.json, linear_protocol.json)."""
    return f"linear_{cfg.eval.mode}.json" if name == "linear" else f"{name}.json"


def write_json(record: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return path


def split_features(ctx: EvalContext, kind: str, split: str, subset: int | None, batch_size: int) -> Features:
    """Features of one split for this evaluation, through the cache unless `eval.cache=false`."""
    trained = ctx.trained
    return load_features(kind, split, subset, ctx.data, backbone=trained.backbone if trained else None,
                         checkpoint=ctx.checkpoint, device=ctx.device, batch_size=batch_size,
                         cache_dir=ctx.cache_dir if bool(ctx.cfg.eval.get("cache", True)) else None)


def _subset(value: Any) -> int | None:
    return None if value is None else int(value)


def _common(ctx: EvalContext, train_size: int, test: Features, train_cached: bool | None) -> dict[str, Any]:
    """Settings every evaluation record holds."""
    return {
        "checkpoint": str(ctx.checkpoint) if ctx.checkpoint else None,
        "backbone": ctx.trained.name if ctx.trained else None,
        "data": str(ctx.data["name"]),
        "image_size": int(ctx.data["image_size"]),
        "train_subset": _subset(ctx.cfg.eval.train_subset),
        "test_subset": _subset(ctx.cfg.eval.test_subset),
        "train_size": train_size,
        "test_size": len(test),
        "num_classes": test.num_classes,
        "feature_dim": int(test.feats.shape[1]),
        "device": str(ctx.device),
        "cache": {"dir": str(ctx.cache_dir) if test.path is not None else None,
                  "train_hit": train_cached, "test_hit": test.cached},
    }


def run_knn(ctx: EvalContext) -> dict[str, Any]:
    """Weighted kNN for every k of `eval.k` from one search; the headline is k=200 (else the largest)."""
    from .knn import as_ks, knn_accuracy, reported_k

    e = ctx.cfg.eval
    ks = as_ks(e.k)
    kind = str(e.features)
    train = split_features(ctx, kind, "train", _subset(e.train_subset), int(e.batch_size))
    test = split_features(ctx, kind, "test", _subset(e.test_subset), int(e.batch_size))
    start = time.perf_counter()
    results = knn_accuracy(train.feats, train.labels, test.feats, test.labels, ks, float(e.temperature),
                           max(train.num_classes, test.num_classes))
    knn_seconds = time.perf_counter() - start
    k = reported_k(ks)
    return {
        "evaluation": "knn", "top1": results[k]["top1"], "top5": results[k]["top5"], "k": k, "ks": ks,
        "temperature": float(e.temperature), "features": kind,
        "results": {str(kk): v for kk, v in results.items()},
        **_common(ctx, len(train), test, train.cached),
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
    test = split_features(ctx, "backbone", "test", _subset(e.test_subset), int(e.batch_size))
    num_classes = test.num_classes
    if mode == "fast":
        train = split_features(ctx, "backbone", "train", _subset(e.train_subset), int(e.batch_size))
        fast = linear.FastSettings(int(e.fast_epochs), float(e.fast_lr), int(e.fast_batch_size),
                                   float(e.fast_weight_decay), int(ctx.cfg.seed))
        out = linear.fast_probe(train.feats, train.labels, test.feats, test.labels, num_classes, fast,
                                ctx.device)
        settings: dict[str, Any] = {"epochs": fast.epochs, "lr": fast.lr, "batch_size": fast.batch_size,
                                    "weight_decay": fast.weight_decay, "optimizer": "sgd_nesterov_cosine",
                                    "standardised": True}
        return {"evaluation": "linear", "mode": mode, "top1": out["top1"], "top5": out["top5"],
                "train_top1": out["train_top1"], "settings": settings,
                **_common(ctx, len(train), test, train.cached),
                "timing": {"train_features": round(train.seconds, 3), "test_features": round(test.seconds, 3),
                           "probe": round(out["probe_seconds"], 3)}}
    from sslkit.data import build_dataset

    assert ctx.trained is not None
    proto = linear.ProtocolSettings(int(e.epochs), float(e.lr), float(e.momentum), float(e.weight_decay),
                                    tuple(int(m) for m in e.milestones), int(e.batch_size), int(ctx.cfg.seed))
    dataset = build_dataset(ctx.data, "train", _subset(e.train_subset))
    start = time.perf_counter()
    fc, last_loss = linear.train_protocol(ctx.trained.backbone, dataset, ctx.data, num_classes, proto,
                                          ctx.device)
    train_seconds = time.perf_counter() - start
    top1, top5 = linear.classifier_accuracy(fc, test.feats, test.labels)
    common = _common(ctx, len(dataset), test, None)  # type: ignore[arg-type]
    return {"evaluation": "linear", "mode": mode, "top1": top1, "top5": top5, "last_epoch_loss": last_loss,
            "settings": {"epochs": proto.epochs, "lr": proto.lr, "momentum": proto.momentum,
                         "weight_decay": proto.weight_decay, "milestones": list(proto.milestones),
                         "batch_size": proto.batch_size, "augmentation": "RandomResizedCrop(0.08-1)+flip",
                         "fc_init": "N(0, 0.01), bias 0", "backbone_unchanged": True},
            **common, "timing": {"test_features": round(test.seconds, 3), "train": round(train_seconds, 3)}}


def summary(name: str, r: dict[str, Any], path: Path) -> str:
    """One line: the headline accuracy, the settings that matter, sizes, time, and the JSON path."""
    if "headline" in r:  # the picture evaluations say their own headline
        return f"{r['headline']}, {r['seconds']:.1f}s) -> {path}"
    sizes = f"{r['train_size']} train / {r['test_size']} test"
    if name == "knn":
        what = "pixels " if r["features"] == "pixels" else ""
        every = ", ".join(f"k={k} {r['results'][str(k)]['top1']:.2f}%" for k in r["ks"])
        return (f"knn {what}top1={r['top1']:.2f}% top5={r['top5']:.1f}% (k={r['k']}, T={r['temperature']:g}; "
                f"top1 at every k: {every}; {sizes}, {r['seconds']:.1f}s) -> {path}")
    s = r["settings"]
    detail = f"{s['epochs']} epochs, lr={s['lr']:g}"
    return (f"linear {r['mode']} top1={r['top1']:.2f}% top5={r['top5']:.1f}% ({detail}, {sizes}, "
            f"{r['seconds']:.1f}s) -> {path}")
