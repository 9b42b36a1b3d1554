"""MoCo v2 Table 2 in miniature (Chen et al. 2020, arXiv 2003.04297): SimCLR at a small and a large
batch against MoCo v2 at the small batch, same data and epochs, each scored by kNN and the fast
linear probe, with wall time and peak memory per run.

Every training runs in a fresh `python -m sslkit.evaluation.child ... train` process (so peak RSS is
per run); SimCLR batches above `eval.chunk_size` use gradient caching (`method.chunk_size`), which
is how batch 8192 fits in the memory of one chunk. The runs' configs and batch sizes are checked
before any training starts, so a batch larger than the dataset is the loader's one-line DataError.
"""

from __future__ import annotations

import json
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
OWN_KEYS = ("method", "data.batch_size", "trainer.epochs", "trainer.max_steps", "out", "method.chunk_size")


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


def run_overrides(base: list[str], cfg: DictConfig, spec: RunSpec, run_dir: Path
                  ) -> tuple[list[str], DictConfig]:
    """The overrides of one training run and its composed config (validated before anything trains)."""
    e = cfg.eval
    ovr = [*base, *[str(o) for o in e.train_overrides], f"method={spec.method}", *spec.overrides,
           f"data.batch_size={spec.batch_size}", f"trainer.epochs={int(e.epochs)}", f"out={run_dir}"]
    if e.max_steps is not None:
        ovr.append(f"trainer.max_steps={int(e.max_steps)}")
    run_cfg = compose(ovr)
    if spec.batch_size > int(e.chunk_size) and "chunk_size" in run_cfg.method:
        ovr.append(f"method.chunk_size={int(e.chunk_size)}")
        run_cfg.method.chunk_size = int(e.chunk_size)  # what composing `ovr` again would give
    return ovr, run_cfg


def check_batch_sizes(cfg: DictConfig, specs: list[RunSpec]) -> None:
    """Raise the loader's DataError for a batch larger than the pretraining set, before training."""
    from sslkit.data import build_dataset
    from sslkit.data.loader import train_loader

    dataset = build_dataset(cfg.data, "pretrain")
    for spec in specs:
        train_loader(dataset, spec.batch_size, world=int(cfg.trainer.devices))


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
            "linear_top1": lin["top1"], "linear_top5": lin["top5"],
            "train_size": len(tr), "test_size": len(te)}


def markdown(rows: list[dict[str, Any]], cfg: DictConfig) -> str:
    """The comparison as a Markdown table with the settings above it."""
    e = cfg.eval
    kind = rows[0]["memory_kind"] if rows else ""
    lines = [
        "# Batch-size comparison (MoCo v2 Table 2 in miniature)", "",
        f"Data: {cfg.data.name}, {e.epochs} epoch(s)"
        + (f", at most {e.max_steps} steps" if e.max_steps else "")
        + f"; kNN k={rows[0]['knn_k'] if rows else ''}, T={e.temperature:g}; fast linear probe "
        f"{e.fast_epochs} epochs; {rows[0]['train_size'] if rows else 0} train / "
        f"{rows[0]['test_size'] if rows else 0} test images. Peak memory: {kind}.", "",
        "| method | batch | grad-cache chunk | steps | final loss | kNN top-1 | linear top-1 "
        "| train time (s) | peak memory (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        loss = f"{r['final_loss']:.3f}" if r["final_loss"] is not None else "-"
        lines.append(f"| {r['method']} | {r['batch_size']} | {r['chunk_size'] or '-'} | {r['steps']} "
                     f"| {loss} "
                     f"| {r['knn_top1']:.2f} | {r['linear_top1']:.2f} | {r['train_seconds']:.1f} "
                     f"| {r['peak_memory_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def run_batch_compare(overrides: list[str]) -> dict[str, Any]:
    """Train every `eval.runs` entry, evaluate each, write batch_compare.{md,json,png} in the output dir."""
    from .entry import write_json
    from .plots import plot_batch_compare

    start = time.perf_counter()
    if any(k == "eval" and group for k, group in parse_keys(overrides)):
        raise ConfigError("choose the evaluation with the subcommand, not with eval=...")
    cfg = compose(overrides, extra=["eval=batch_compare"])
    specs = parse_runs(cfg.eval.runs)
    out = output_dir(cfg, "batch_compare", None)
    base = passed_on(overrides)
    planned = [(spec, *run_overrides(base, cfg, spec, out / "runs" / spec.dirname)) for spec in specs]
    check_batch_sizes(cfg, specs)
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
        rows.append({
            "method": spec.method, "batch_size": spec.batch_size,
            "chunk_size": run_cfg.method.get("chunk_size"), "epochs": int(cfg.eval.epochs),
            **_last_metrics(run_dir), **trained, **scores,
            "peak_memory_mb": cuda if cuda is not None else trained["peak_rss_mb"],
            "memory_kind": "CUDA max allocated" if cuda is not None else "CPU peak RSS",
            "run_dir": str(run_dir), "overrides": ovr,
        })
    md = out / "batch_compare.md"
    md.write_text(markdown(rows, cfg))
    png = plot_batch_compare(rows, out / "batch_compare.png")
    seconds = time.perf_counter() - start
    parts = "; ".join(f"{r['method']}@{r['batch_size']} knn {r['knn_top1']:.1f}% lin {r['linear_top1']:.1f}% "
                      f"{r['train_seconds']:.0f}s {r['peak_memory_mb']:.0f}MB" for r in rows)
    record: dict[str, Any] = {
        "evaluation": "batch_compare", "rows": rows, "data": str(cfg.data.name),
        "epochs": int(cfg.eval.epochs),
        "max_steps": cfg.eval.max_steps, "chunk_size": int(cfg.eval.chunk_size),
        "settings": OmegaConf.to_container(cfg.eval, resolve=True), "markdown": str(md), "plot": str(png),
        "seconds": round(seconds, 3),
        "summary": f"batch_compare: {parts} ({len(rows)} runs, {seconds:.0f}s) -> {md}",
    }
    write_json(record, out / "batch_compare.json")
    return record
