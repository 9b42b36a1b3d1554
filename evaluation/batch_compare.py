"""The plan and table of MoCo v2's Table 2 in miniature (batch-compare): the runs, their shared image
budget, each run's BN regime, and each trained run's scores. `sslkit.app.batch_compare` runs it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from sslkit.config import as_dict
from sslkit.contrastive.queue import queue_cap  # noqa: F401  (the plan's cap, used by the app and tests)
from sslkit.data.loader import steps_per_epoch
from sslkit.devices import pick_device
from sslkit.engine.outputs import method_slug
from sslkit.errors import ConfigError
from sslkit.files import read_metrics

from .context import load_trained
from .features import load_features
from .knn import as_ks, knn_accuracy, reported_k
from .linear import FastSettings, fast_probe

#: top-level keys of the command line that are passed on to every training run
TRAIN_KEYS = ("data", "trainer", "backbone", "aug", "optim", "head", "seed", "device")
#: keys each run sets itself (a command-line value for them is dropped)
OWN_KEYS = ("method", "data.batch_size", "trainer.epochs", "trainer.max_steps", "out", "method.chunk_size",
            "optim.warmup_fraction")


@dataclass(frozen=True)
class RunSpec:
    """One entry of `eval.runs`: {method, batch_size, overrides (optional list of key=value)}."""

    method: str
    batch_size: int
    overrides: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        return f"{self.method}@{self.batch_size}"

    @property
    def dirname(self) -> str:
        return f"{method_slug(self.method)}_b{self.batch_size}"


def parse_runs(runs: Any) -> list[RunSpec]:
    """`eval.runs` as RunSpecs; ConfigError on a malformed entry."""
    example = "eval.runs='[{method:simclr,batch_size:256},{method:mocov2,batch_size:256}]'"
    if not isinstance(runs, ListConfig | list) or not runs:
        raise ConfigError(f"eval.runs must be a non-empty list of {{method, batch_size}}, e.g. {example}")
    specs = []
    for entry in runs:
        item = as_dict(entry) if isinstance(entry, DictConfig) else entry
        if not isinstance(item, dict) or "method" not in item or "batch_size" not in item \
                or set(item) - {"method", "batch_size", "overrides"}:
            raise ConfigError(f"eval.runs entry {item!r} needs exactly method, batch_size (and optional "
                              f"overrides); e.g. {example}")
        try:
            batch = int(item["batch_size"])
        except (TypeError, ValueError):
            raise ConfigError(f"eval.runs: batch_size must be an integer, got {item['batch_size']!r}"
                              ) from None
        extra = item.get("overrides") or []
        if isinstance(extra, str):
            extra = [extra]
        specs.append(RunSpec(str(item["method"]), batch, tuple(str(o) for o in extra)))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"eval.runs has duplicate entries: {labels}")
    return specs


@dataclass(frozen=True)
class Budget:
    """The images every run sees: `epochs` passes over `n_images` pretraining images."""

    epochs: int
    n_images: int
    world: int = 1

    @property
    def images(self) -> int:
        return self.epochs * self.n_images

    def steps(self, batch_size: int) -> int:
        """Optimizer steps of a run at `batch_size`: as many whole batches as the budget holds."""
        return self.images // batch_size

    def run_epochs(self, batch_size: int) -> int:
        """Epochs the run's loader needs to deliver `steps` batches (drop_last drops a partial batch)."""
        return math.ceil(self.steps(batch_size) / steps_per_epoch(self.n_images, batch_size, self.world))


def plan_budget(cfg: DictConfig, specs: list[RunSpec], n_images: int) -> tuple[Budget, str | None]:
    """The shared image budget. When it gives the largest batch fewer than `eval.min_steps` steps, a
    one-line ConfigError saying what to change; with `eval.force=true`, a one-line notice instead."""
    e = cfg.eval
    world = int(cfg.trainer.devices)
    min_steps = int(e.min_steps)
    largest = max(s.batch_size for s in specs)
    if e.epochs is None:
        epochs = max(1, math.ceil(min_steps * largest / n_images))
    else:
        epochs = int(e.epochs)
        if epochs < 1:
            raise ConfigError(f"eval.epochs must be >= 1 (or null for automatic), got {epochs}")
    budget = Budget(epochs, n_images, world)
    steps = budget.steps(largest)
    notice = None
    if steps < min_steps:
        need = math.ceil(min_steps * largest / n_images)
        why = (f"batch {largest} takes only {steps} optimizer step(s) in {epochs} epoch(s) of {n_images} images, "
               f"fewer than eval.min_steps={min_steps}: too few for a large batch to show its benefit")
        if not bool(e.get("force", False)):
            raise ConfigError(f"{why}; use eval.epochs={need} (or eval.epochs=null), a smaller largest batch, "
                              f"or eval.force=true to run it anyway")
        notice = f"batch_compare: notice: {why} (eval.force=true); eval.epochs={need} would give {min_steps}"
    return budget, notice


def bn_regime(run_cfg: DictConfig) -> str:
    """How BatchNorm sees the batch in this run, in words for the table."""
    m = run_cfg.method
    batch = int(run_cfg.data.batch_size)
    if "chunk_size" in m:
        chunk = m.get("chunk_size")
        if chunk is None:
            return f"one BN over {batch} images x 2 views"
        per = min(int(chunk), batch)
        return f"BN per {per} views, one per image" + (" (gradient caching)" if batch > int(chunk) else "")
    if "shuffle_bn" in m:
        mode = str(m.shuffle_bn)
        groups = int(m.get("split_bn_groups", 8))
        if mode == "auto":
            mode = "ddp" if int(run_cfg.trainer.devices) > 1 else ("split" if groups > 1 else "none")
        return {"ddp": "shuffle-BN across ranks", "split": f"split-BN, {groups} groups of {batch // groups}",
                "none": f"one BN over {batch} images"}.get(mode, mode)
    return "method default"


def last_metrics(run_dir: Path) -> dict[str, Any]:
    """The last logged step and loss of a run."""
    losses = [r for r in read_metrics(run_dir) if "loss" in r]
    if not losses:
        return {"steps": 0, "final_loss": None}
    return {"steps": losses[-1]["step"], "final_loss": losses[-1]["loss"]}


def score_run(run_dir: Path, cfg: DictConfig) -> dict[str, Any]:
    """kNN and the fast linear probe on the run's final checkpoint (features cached in the run dir)."""
    e = cfg.eval
    trained = load_trained(run_dir)
    data = as_dict(trained.config.data)
    device = pick_device(str(cfg.device), 0)
    feats = {split: load_features("backbone", split, None if sub is None else int(sub), data,
                                  backbone=trained.backbone, checkpoint=trained.file, device=device,
                                  cache_dir=run_dir / "eval" / "cache")
             for split, sub in (("train", e.train_subset), ("test", e.test_subset))}
    tr, te = feats["train"], feats["test"]
    ks = as_ks(e.k)
    knn = knn_accuracy(tr.feats, tr.labels, te.feats, te.labels, ks, float(e.temperature), tr.num_classes)
    k = reported_k(ks)
    lin = fast_probe(tr.feats, tr.labels, te.feats, te.labels, tr.num_classes,
                     FastSettings(int(e.fast_epochs), float(e.fast_lr), int(e.fast_batch_size), 0.0,
                                  int(cfg.seed)), device)
    return {"knn_top1": knn[k]["top1"], "knn_top5": knn[k]["top5"], "knn_k": k,
            "knn_by_k": {str(kk): v["top1"] for kk, v in knn.items()},
            "linear_top1": lin["top1"], "linear_top5": lin["top5"],
            "train_size": len(tr), "test_size": len(te)}


def markdown(rows: list[dict[str, Any]], cfg: DictConfig, budget: Budget) -> str:
    """The comparison as a Markdown table with the settings above it."""
    e = cfg.eval
    kind = rows[0]["memory_kind"] if rows else ""
    lines = [
        "# Batch-size comparison (MoCo v2 Table 2 in miniature)", "",
        f"Data: {cfg.data.name}, {budget.n_images} pretraining images; every run sees {budget.epochs} epoch(s) "
        f"= {budget.images} images (within one batch); kNN k={rows[0]['knn_k'] if rows else ''}, "
        f"T={e.temperature:g}; fast linear probe {e.fast_epochs} epochs; "
        f"{rows[0]['train_size'] if rows else 0} train / {rows[0]['test_size'] if rows else 0} test images. "
        f"Peak memory: {kind}.", "",
        "| method | batch | images seen | steps | warm-up steps | BN regime | final loss | kNN top-1 "
        "| linear top-1 | train time (s) | peak memory (MB) |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        loss = f"{r['final_loss']:.3f}" if r["final_loss"] is not None else "-"
        lines.append(f"| {r['method']} | {r['batch_size']} | {r['images_seen']} | {r['steps']} "
                     f"| {r['warmup_steps']} | {r['bn_regime']} | {loss} "
                     f"| {r['knn_top1']:.2f} | {r['linear_top1']:.2f} | {r['train_seconds']:.1f} "
                     f"| {r['peak_memory_mb']:.0f} |")
    return "\n".join(lines) + "\n"
