"""MoCo v2 Table 2 in miniature (Chen et al. 2020, arXiv 2003.04297): SimCLR at a small and a large
batch against MoCo v2 at the small batch, each scored by kNN and the fast linear probe, with wall
time and peak memory per run.

The comparison is fair by construction:
* every run sees the same number of images (`eval.epochs` x the pretraining set, within one batch):
  each run trains `images // batch` steps, so the batch-8192 run takes 32x fewer steps than batch 256;
  with `eval.epochs: null` the budget is just large enough that the largest batch takes
  `eval.min_steps` optimizer steps;
* each run's schedule has the whole shape: runs that warm up do so for `eval.warmup_fraction` of
  their own length, and the cosine decays to the end of each run;
* every SimCLR run uses the same BN regime: BN over chunks of `eval.chunk_size` views, one view per
  image, the two views of an image never in one chunk (`methods/simclr.py: bn_chunks`); batches
  above one chunk are trained by gradient caching in the memory of one chunk;
* every SimCLR run scales its learning rate by `eval.simclr_lr_scaling`: `sqrt` (default) gives
  0.075 x sqrt(B), which SimCLR's appendix B.1 recommends for short runs and small batches; `linear`
  is 0.3 x B/256, the paper's rule for long runs;
* MoCo's queue is capped at a quarter of the pretraining set, so that a query rarely meets a stale
  key of its own image (about K^2 / 2N^2 of the queries do).

Every training runs in a fresh `python -m sslkit.app.child ... train` process (so peak RSS is
per run). The runs' configs and batch sizes are checked before any training starts.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sslkit import overrides as ov
from sslkit.app.children import train_in_subprocess
from sslkit.app.eval_setup import output_dir
from sslkit.config import compose
from sslkit.data import build_dataset
from sslkit.data.base import num_images
from sslkit.data.loader import steps_per_epoch, train_loader
from sslkit.engine.schedule import warmup_steps
from sslkit.errors import ConfigError
from sslkit.evaluation.batch_compare import (
    OWN_KEYS,
    TRAIN_KEYS,
    Budget,
    RunSpec,
    bn_regime,
    last_metrics,
    markdown,
    parse_runs,
    plan_budget,
    queue_cap,
    score_run,
)
from sslkit.evaluation.plots import plot_batch_compare
from sslkit.files import write_json


def passed_on(overrides: list[str]) -> list[str]:
    """The command-line overrides that configure training (data, trainer, backbone, ...)."""
    out = []
    for text, (key, _) in zip(overrides, ov.keys(overrides), strict=True):
        if key.split(".")[0] in TRAIN_KEYS and key not in OWN_KEYS:
            out.append(text)
    return out


def run_overrides(base: list[str], cfg: DictConfig, spec: RunSpec, run_dir: Path, budget: Budget
                  ) -> tuple[list[str], DictConfig, list[str]]:
    """The overrides of one training run, its composed config (validated before anything trains),
    and one-line notices about what was adjusted."""
    e = cfg.eval
    steps = budget.steps(spec.batch_size)
    ovr = [*base, *[str(o) for o in e.train_overrides], f"method={spec.method}", *spec.overrides,
           f"data.batch_size={spec.batch_size}", f"trainer.epochs={budget.run_epochs(spec.batch_size)}",
           f"trainer.max_steps={max(1, steps)}", f"out={run_dir}"]
    run_cfg = compose(ovr)
    extra, notices = [], []
    if "chunk_size" in run_cfg.method:  # every SimCLR run: the same per-chunk BN regime
        extra.append(f"method.chunk_size={int(e.chunk_size)}")
        if "optim.lr_scaling" not in {k for k, _ in ov.keys(ovr)}:  # one lr rule for every SimCLR run
            extra.append(f"optim.lr_scaling={e.simclr_lr_scaling}")
    if float(run_cfg.optim.get("warmup_epochs", 0.0)) > 0 and run_cfg.optim.get("warmup_fraction") is None:
        extra.append(f"optim.warmup_fraction={float(e.warmup_fraction)}")
    if "queue_size" in run_cfg.method and int(run_cfg.method.queue_size) > budget.n_images // 4:
        cap = queue_cap(budget.n_images)
        extra.append(f"method.queue_size={cap}")
        notices.append(f"batch_compare: notice: {spec.label}: method.queue_size {int(run_cfg.method.queue_size)} "
                       f"-> {cap}, at most a quarter of the {budget.n_images} images, so that queued keys of "
                       f"the query's own image are rare")
    if extra:
        ovr += extra
        run_cfg = compose(ovr)
    return ovr, run_cfg, notices


def check_batch_sizes(cfg: DictConfig, specs: list[RunSpec]) -> int:
    """Raise the loader's DataError for a batch larger than the pretraining set, before training;
    return the number of pretraining images."""
    dataset = build_dataset(cfg.data, "pretrain")
    for spec in specs:
        train_loader(dataset, spec.batch_size, world=int(cfg.trainer.devices))
    return num_images(dataset)


def run_batch_compare(overrides: list[str]) -> dict[str, Any]:
    """Train every `eval.runs` entry, evaluate each, write batch_compare.{md,json,png} in the output dir."""
    start = time.perf_counter()
    if ov.chooses(overrides, "eval"):
        raise ConfigError("choose the evaluation with the subcommand, not with eval=...")
    cfg = compose(overrides, extra=["eval=batch_compare"])
    specs = parse_runs(cfg.eval.runs)
    out = output_dir(cfg, "batch_compare", None)
    base = passed_on(overrides)
    n_images = check_batch_sizes(cfg, specs)
    budget, notice = plan_budget(cfg, specs, n_images)
    notices = [notice] if notice else []
    planned = []
    for spec in specs:
        ovr, run_cfg, adjusted = run_overrides(base, cfg, spec, out / "runs" / spec.dirname, budget)
        planned.append((spec, ovr, run_cfg))
        notices += adjusted
    for line in notices:
        print(line, file=sys.stderr, flush=True)
    rows = []
    for i, (spec, ovr, run_cfg) in enumerate(planned, 1):
        run_dir = out / "runs" / spec.dirname
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a rerun with the same out= replaces its runs
        print(f"batch_compare: training {spec.label} ({i}/{len(planned)}) -> {run_dir}", file=sys.stderr,
              flush=True)
        trained = train_in_subprocess(ovr, out / "logs" / f"{spec.dirname}.log", spec.label)
        scores = score_run(run_dir, cfg)
        cuda = trained["peak_cuda_mb"]
        last = last_metrics(run_dir)
        planned_steps = int(run_cfg.trainer.max_steps)
        rows.append({
            "method": spec.method, "batch_size": spec.batch_size,
            "chunk_size": run_cfg.method.get("chunk_size"), "epochs": int(run_cfg.trainer.epochs),
            "images_seen": int(last["steps"]) * spec.batch_size, "planned_steps": planned_steps,
            "warmup_steps": warmup_steps(run_cfg.optim, planned_steps,
                                         steps_per_epoch(n_images, spec.batch_size, budget.world)),
            "bn_regime": bn_regime(run_cfg), "queue_size": run_cfg.method.get("queue_size"),
            **last, **trained, **scores,
            "peak_memory_mb": cuda if cuda is not None else trained["peak_rss_mb"],
            "memory_kind": "CUDA max allocated" if cuda is not None else "CPU peak RSS",
            "run_dir": str(run_dir), "overrides": ovr,
        })
    md = out / "batch_compare.md"
    md.write_text(markdown(rows, cfg, budget))
    png = plot_batch_compare(rows, out / "batch_compare.png")
    seconds = time.perf_counter() - start
    parts = "; ".join(f"{r['method']}@{r['batch_size']} knn {r['knn_top1']:.1f}% lin {r['linear_top1']:.1f}% "
                      f"{r['train_seconds']:.0f}s {r['peak_memory_mb']:.0f}MB" for r in rows)
    record: dict[str, Any] = {
        "evaluation": "batch_compare", "rows": rows, "data": str(cfg.data.name),
        "epochs": budget.epochs, "images_per_run": budget.images, "pretrain_images": n_images,
        "chunk_size": int(cfg.eval.chunk_size), "notices": notices,
        "settings": OmegaConf.to_container(cfg.eval, resolve=True), "markdown": str(md), "plot": str(png),
        "seconds": round(seconds, 3),
        "summary": f"batch_compare: {parts} ({len(rows)} runs, {budget.images} images each, {seconds:.0f}s) -> {md}",
    }
    write_json(record, out / "batch_compare.json")
    return record
