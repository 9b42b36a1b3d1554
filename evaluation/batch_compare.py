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
* every SimCLR run uses the same BN regime: BN over chunks of `eval.chunk_size` images holding both
  views of each image (per-device BN on B/chunk devices); batches above one chunk are trained by
  gradient caching in the memory of one chunk;
* MoCo's queue is capped at a quarter of the pretraining set, so that a query rarely meets a stale
  key of its own image (about K^2 / 2N^2 of the queries do).

Every training runs in a fresh `python -m sslkit.evaluation.child ... train` process (so peak RSS is
per run). The runs' configs and batch sizes are checked before any training starts.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig, ListConfig, OmegaConf

from sslkit.config import as_dict, compose
from sslkit.engine.distributed import pick_device
from sslkit.errors import ConfigError, UserError

from .context import load_trained, output_dir, parse_keys

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
        return f"{self.method.replace(':', '.').split('.')[-1]}_b{self.batch_size}"


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


def passed_on(overrides: list[str]) -> list[str]:
    """The command-line overrides that configure training (data, trainer, backbone, ...)."""
    out = []
    for text, (key, _) in zip(overrides, parse_keys(overrides), strict=True):
        if key.split(".")[0] in TRAIN_KEYS and key not in OWN_KEYS:
            out.append(text)
    return out


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
        from sslkit.data.loader import steps_per_epoch

        return math.ceil(self.steps(batch_size) / steps_per_epoch(self.n_images, batch_size, self.world))


def plan_budget(cfg: DictConfig, specs: list[RunSpec], n_images: int) -> tuple[Budget, str | None]:
    """The shared image budget and, when the largest batch gets fewer than `eval.min_steps` steps,
    a one-line notice saying why and what to change."""
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
        notice = (f"batch_compare: notice: batch {largest} takes only {steps} optimizer step(s) in {epochs} "
                  f"epoch(s) of {n_images} images, fewer than eval.min_steps={min_steps}: too few for a large "
                  f"batch to show its benefit; use eval.epochs={need} (or eval.epochs=null)")
    return budget, notice


def queue_cap(n_images: int) -> int:
    """The largest power of two <= n_images / 4 (at least 1)."""
    return 1 << max(0, int(math.floor(math.log2(max(1, n_images // 4)))))


def bn_regime(run_cfg: DictConfig) -> str:
    """How BatchNorm sees the batch in this run, in words for the table."""
    m = run_cfg.method
    batch = int(run_cfg.data.batch_size)
    if "chunk_size" in m:
        chunk = m.get("chunk_size")
        per = batch if chunk is None else min(int(chunk), batch)
        return f"BN per {per} images x 2 views" + (" (gradient caching)" if per < batch else "")
    if "shuffle_bn" in m:
        mode = str(m.shuffle_bn)
        groups = int(m.get("split_bn_groups", 8))
        if mode == "auto":
            mode = "ddp" if int(run_cfg.trainer.devices) > 1 else ("split" if groups > 1 else "none")
        return {"ddp": "shuffle-BN across ranks", "split": f"split-BN, {groups} groups of {batch // groups}",
                "none": f"one BN over {batch} images"}.get(mode, mode)
    return "method default"


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
    from sslkit.data import build_dataset
    from sslkit.data.loader import train_loader

    dataset = build_dataset(cfg.data, "pretrain")
    for spec in specs:
        train_loader(dataset, spec.batch_size, world=int(cfg.trainer.devices))
    return len(dataset)  # type: ignore[arg-type]


def _child_error(log: Path, label: str, code: int) -> UserError:
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    errors = [ln for ln in lines if ln.startswith("sslkit: error: ")]
    if errors:
        return UserError(f"batch_compare run {label}: {errors[-1][len('sslkit: error: '):]}")
    return UserError(f"batch_compare run {label} failed with exit code {code}; see {log}")


def _relay(cmd: list[str], log: TextIO, label: str) -> int:
    """Run `cmd`, copy its output into `log`, and show its training progress ("step N/T" lines)."""
    from sslkit.engine.progress import Progress

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy(),
                            text=True, bufsize=1)
    bar: Progress | None = None
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            log.write(line)
            step = re.match(r"step (\d+)/(\d+)", line)
            if step:
                bar = bar or Progress(int(step[2]), f"batch_compare {label}", "step")
                bar.set(int(step[1]))
    finally:
        if bar is not None:
            bar.close()
    return proc.wait()


def train_in_subprocess(overrides: list[str], log: Path, label: str) -> dict[str, Any]:
    """Train in a fresh process; wall time, peak RSS and (on CUDA) peak allocated memory."""
    report = log.with_suffix(".peak.json")
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "sslkit.evaluation.child", str(report), "train", *overrides]
    start = time.perf_counter()
    with log.open("w") as out:
        code = _relay(cmd, out, label)
    seconds = time.perf_counter() - start
    if code != 0:
        raise _child_error(log, label, code)
    peak = json.loads(report.read_text())
    return {"train_seconds": seconds, "peak_rss_mb": peak["peak_rss_mb"],
            "peak_cuda_mb": peak["peak_cuda_mb"]}


def _last_metrics(run_dir: Path) -> dict[str, Any]:
    from .plots import read_metrics

    losses = [r for r in read_metrics(run_dir) if "loss" in r]
    if not losses:
        return {"steps": 0, "final_loss": None}
    return {"steps": losses[-1]["step"], "final_loss": losses[-1]["loss"]}


def evaluate_run(run_dir: Path, cfg: DictConfig) -> dict[str, float]:
    """kNN and the fast linear probe on the run's final checkpoint (features cached in the run dir)."""
    from .features import load_features
    from .knn import as_ks, knn_accuracy, reported_k
    from .linear import FastSettings, fast_probe

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


def run_batch_compare(overrides: list[str]) -> dict[str, Any]:
    """Train every `eval.runs` entry, evaluate each, write batch_compare.{md,json,png} in the output dir."""
    from sslkit.data.loader import steps_per_epoch
    from sslkit.engine.schedule import warmup_steps

    from .entry import write_json
    from .plots import plot_batch_compare

    start = time.perf_counter()
    if any(k == "eval" and group for k, group in parse_keys(overrides)):
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
        scores = evaluate_run(run_dir, cfg)
        cuda = trained["peak_cuda_mb"]
        last = _last_metrics(run_dir)
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
