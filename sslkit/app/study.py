"""`sslkit study table1|table2`: the MoCo v2 paper's ablations (arXiv 2003.04297, Tables 1 and 2) in
miniature, with several seeds, one command each.

table1 trains each MoCo row (v1, (a) +MLP, (b) +aug+, (c) +MLP+aug+, (d) v2 with cosine) at the same
batch, with the same number of images and the same warm-up; table2 runs the fair `batch-compare` (SimCLR
at a small and a large batch, MoCo v2 at the small batch) once per seed. Every run is scored by kNN at
every `eval.k` and the fast linear probe; the study writes `study.md` (mean and spread over seeds),
`study.json` (every run, with its loss curve) and `study.png` (accuracy vs training wall time, and the
loss curves, so a stalled run is visible).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sslkit import overrides as ov
from sslkit.app.batch_compare import check_batch_sizes, passed_on, run_batch_compare
from sslkit.app.children import train_in_subprocess
from sslkit.app.eval_setup import output_dir
from sslkit.config import compose
from sslkit.data.loader import steps_per_epoch
from sslkit.engine.schedule import warmup_steps
from sslkit.errors import ConfigError
from sslkit.evaluation.batch_compare import Budget, RunSpec, plan_budget, queue_cap, score_run
from sslkit.evaluation.plots import save_figure
from sslkit.files import read_metrics, write_json

TABLES = ("table1", "table2")
#: the runs of Table 2, as keys of `eval.run_overrides`
TABLE2_RUNS = ("simclr_small", "simclr_large", "mocov2")


@dataclass(frozen=True)
class Row:
    """One row of a table: its label in the paper and the overrides that make it."""

    label: str
    overrides: tuple[str, ...]

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.label).strip("_").lower()


#: MoCo v2 Table 1: the MoCo v1 rows differ by the MLP head (tau 0.2 with it, as the paper), aug+, cosine
TABLE1 = (
    Row("MoCo v1", ("method=mocov1",)),
    Row("(a) +MLP", ("method=mocov1", "head=mlp", "method.temperature=0.2")),
    Row("(b) +aug+", ("method=mocov1", "aug=mocov2")),
    Row("(c) +MLP +aug+", ("method=mocov1", "head=mlp", "aug=mocov2", "method.temperature=0.2")),
    Row("(d) MoCo v2 (+cos)", ("method=mocov2",)),
)


def loss_curve(run_dir: Path) -> list[list[float]]:
    """[[step, loss], ...] from the run's metrics."""
    return [[int(r["step"]), float(r["loss"])] for r in read_metrics(run_dir)
            if isinstance(r.get("loss"), int | float) and "step" in r]


def eval_settings(cfg: DictConfig) -> list[str]:
    """The evaluation keys of the study, as batch-compare overrides (it scores every run)."""
    e = cfg.eval
    ks = ",".join(str(int(k)) for k in e.k)
    out = [f"eval.k=[{ks}]", f"eval.temperature={float(e.temperature)}", f"eval.fast_epochs={int(e.fast_epochs)}",
           f"eval.fast_lr={float(e.fast_lr)}", f"eval.fast_batch_size={int(e.fast_batch_size)}"]
    for key in ("train_subset", "test_subset"):
        if e[key] is not None:
            out.append(f"eval.{key}={int(e[key])}")
    return out


def table1_overrides(cfg: DictConfig, base: list[str], row: Row, seed: int, budget: Budget, run_dir: Path
                     ) -> list[str]:
    """The training overrides of one Table-1 row: the same batch, images and warm-up for every row
    (`eval.warmup_epochs`, before `eval.train_overrides` so that one there wins), then the row's switches;
    MoCo's queue capped at a quarter of the data as in batch-compare."""
    e = cfg.eval
    batch = int(e.batch_size)
    steps = budget.steps(batch)
    extra = [str(o) for o in e.train_overrides]
    warm = str(e.warmup_epochs)
    if warm == "auto":  # what `auto` resolves to on this data (sgd_step takes only numbers)
        warm = str(compose([*base, "method=mocov2", "optim.warmup_epochs=auto"]).optim.warmup_epochs)
    ovr = [*base, f"optim.warmup_epochs={warm}", *extra, *row.overrides,
           f"data.batch_size={batch}", f"trainer.epochs={budget.run_epochs(batch)}",
           f"trainer.max_steps={max(1, steps)}", f"seed={seed}", f"out={run_dir}"]
    if int(compose(ovr).method.queue_size) > budget.n_images // 4:  # as batch-compare: no stale own keys
        ovr.append(f"method.queue_size={queue_cap(budget.n_images)}")
    return ovr


def table1_runs(cfg: DictConfig, base: list[str], out: Path, seed: int, budget: Budget) -> list[dict[str, Any]]:
    """Train and score every Table-1 row for one seed."""
    e = cfg.eval
    batch = int(e.batch_size)
    eval_cfg = compose([*eval_settings(cfg), f"seed={seed}", f"device={cfg.device}"], extra=["eval=batch_compare"])
    rows = []
    for i, row in enumerate(TABLE1, 1):
        run_dir = out / f"seed{seed}" / row.slug
        if run_dir.exists():
            shutil.rmtree(run_dir)
        ovr = table1_overrides(cfg, base, row, seed, budget, run_dir)
        run_cfg = compose(ovr)
        planned = int(run_cfg.trainer.max_steps)
        warm = warmup_steps(run_cfg.optim, planned, steps_per_epoch(budget.n_images, batch, budget.world))
        print(f"study table1: seed {seed}: training {row.label} ({i}/{len(TABLE1)}) -> {run_dir}",
              file=sys.stderr, flush=True)
        trained = train_in_subprocess(ovr, out / "logs" / f"seed{seed}_{row.slug}.log", row.label)
        scores = score_run(run_dir, eval_cfg)
        curve = loss_curve(run_dir)
        rows.append({"table": "table1", "row": row.label, "seed": seed, "batch_size": batch,
                     "steps": curve[-1][0] if curve else 0, "images_seen": (curve[-1][0] if curve else 0) * batch,
                     "warmup_steps": warm, "queue_size": int(run_cfg.method.queue_size),
                     "final_loss": curve[-1][1] if curve else None,
                     "loss_curve": curve, **trained, **scores, "run_dir": str(run_dir), "overrides": ovr})
    return rows


def _hydra_str(text: str) -> str:
    """`text` as a quoted string inside a Hydra override value."""
    if "'" in text:
        raise ConfigError(f"eval.run_overrides: {text!r} contains a single quote; not supported")
    return f"'{text}'"


def table2_specs(cfg: DictConfig) -> str:
    """`eval.runs` of Table 2: SimCLR at the small and the large batch, MoCo v2 at the small batch, each
    with its `eval.run_overrides` entry."""
    e = cfg.eval
    small, large = int(e.batch_size), int(e.large_batch)
    own = e.run_overrides
    unknown = set(own) - set(TABLE2_RUNS)
    if unknown:
        raise ConfigError(f"eval.run_overrides has unknown run(s) {sorted(unknown)}; valid: {', '.join(TABLE2_RUNS)}")
    entries = []
    for name, method, batch in (("simclr_small", "simclr", small), ("simclr_large", "simclr", large),
                                ("mocov2", "mocov2", small)):
        extra = [str(o) for o in (own.get(name) or [])]
        tail = f",overrides:[{','.join(_hydra_str(o) for o in extra)}]" if extra else ""
        entries.append(f"{{method:{method},batch_size:{batch}{tail}}}")
    return "eval.runs=[" + ",".join(entries) + "]"


def table2_runs(cfg: DictConfig, base: list[str], out: Path, seed: int) -> list[dict[str, Any]]:
    """The fair batch-compare for one seed, its rows relabelled as Table 2's."""
    e = cfg.eval
    epochs = "null" if e.epochs is None else str(int(e.epochs))
    extra = [str(o) for o in e.train_overrides]
    overrides = [*base, f"seed={seed}", f"out={out / f'seed{seed}'}", table2_specs(cfg),
                 f"eval.chunk_size={int(e.chunk_size)}", f"eval.epochs={epochs}", f"eval.min_steps={int(e.min_steps)}",
                 f"eval.force={str(bool(e.force)).lower()}", f"eval.simclr_lr_scaling={e.simclr_lr_scaling}",
                 f"eval.warmup_fraction={float(e.warmup_fraction)}", *eval_settings(cfg)]
    if extra:
        overrides.append("eval.train_overrides=[" + ",".join(_hydra_str(o) for o in extra) + "]")
    record = run_batch_compare(overrides)
    rows = []
    for r in record["rows"]:
        label = f"{'SimCLR' if r['method'] == 'simclr' else 'MoCo v2'} b{r['batch_size']}"
        rows.append({"table": "table2", "row": label, "seed": seed, **r,
                     "loss_curve": loss_curve(Path(r["run_dir"]))})
    return rows


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summary_table(rows: list[dict[str, Any]], ks: list[int]) -> str:
    """Markdown: one line per row of the paper's table, mean ± sample std over seeds."""
    labels = list(dict.fromkeys(r["row"] for r in rows))
    head = "| row | seeds | batch | steps | warm-up steps | images seen | " + " | ".join(f"kNN k={k}" for k in ks) \
        + " | linear | final loss | train time (s) |"
    lines = [head, "|---|---:|---:|---:|---:|---:|" + "---:|" * len(ks) + "---:|---:|---:|"]
    for label in labels:
        rs = [r for r in rows if r["row"] == label]
        knn = [_mean_spread([r["knn_by_k"][str(k)] for r in rs]) for k in ks]
        losses = [r["final_loss"] for r in rs if r.get("final_loss") is not None]
        lines.append(f"| {label} | {len(rs)} | {rs[0]['batch_size']} | {rs[0]['steps']} "
                     f"| {rs[0].get('warmup_steps', '-')} | {rs[0]['images_seen']} | "
                     + " | ".join(knn) + f" | {_mean_spread([r['linear_top1'] for r in rs])} "
                     f"| {_mean_spread(losses)} | {_mean_spread([r['train_seconds'] for r in rs])} |")
    return "\n".join(lines) + "\n"


def plot_study(rows: list[dict[str, Any]], path: Path, k: int) -> Path:
    """Accuracy (kNN at k, and linear) vs training wall time, one marker per run; loss curves beside."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    labels = list(dict.fromkeys(r["row"] for r in rows))
    for i, label in enumerate(labels):
        colour = f"C{i % 10}"
        rs = [r for r in rows if r["row"] == label]
        ax_acc.scatter([r["train_seconds"] for r in rs], [r["knn_by_k"][str(k)] for r in rs], color=colour,
                       marker="o", label=f"{label} kNN")
        ax_acc.scatter([r["train_seconds"] for r in rs], [r["linear_top1"] for r in rs], color=colour,
                       marker="x")
        for j, r in enumerate(rs):
            curve = r.get("loss_curve") or []
            if curve:
                ax_loss.plot([c[0] for c in curve], [c[1] for c in curve], color=colour, alpha=0.8,
                             label=label if j == 0 else None)
    ax_acc.set(xlabel="training wall time (s)", ylabel="top-1 (%)",
               title=f"accuracy vs wall time (o: kNN k={k}, x: linear probe)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=7)
    ax_loss.set(xlabel="optimizer step", ylabel="training loss", title="loss curves (every seed)")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    return save_figure(fig, path)


def run_study(table: str, overrides: list[str]) -> dict[str, Any]:
    """Run `table` ("table1" or "table2") for every seed; write study.{md,json,png} in the output dir."""
    if table not in TABLES:
        raise ConfigError(f"unknown study '{table}'; valid: {', '.join(TABLES)}")
    if ov.chooses(overrides, "eval"):
        raise ConfigError("the study chooses its evaluation; set eval.* keys, not eval=...")
    start = time.perf_counter()
    cfg = compose(overrides, extra=["eval=study"])
    e = cfg.eval
    seeds = [int(s) for s in e.seeds]
    if not seeds:
        raise ConfigError("eval.seeds must list at least one seed, e.g. eval.seeds=[0,1]")
    ks = [int(k) for k in e.k]
    out = output_dir(cfg, f"study_{table}", None)
    base = [o for o in passed_on(overrides) if not o.startswith("seed=")]
    rows: list[dict[str, Any]] = []
    if table == "table1":
        specs = [RunSpec("mocov2", int(e.batch_size))]
        n_images = check_batch_sizes(cfg, specs)  # the loader's DataError
        budget, notice = plan_budget(cfg, specs, n_images)  # min_steps at the batch: refused unless eval.force
        if notice:
            print(notice.replace("batch_compare:", "study table1:"), file=sys.stderr, flush=True)
        for seed in seeds:
            rows += table1_runs(cfg, base, out, seed, budget)
    else:
        for seed in seeds:
            rows += table2_runs(cfg, base, out, seed)
    k = 200 if 200 in ks else max(ks)
    md_text = (f"# sslkit study {table}\n\n{len(seeds)} seed(s) {seeds}; data {cfg.data.name}; "
               f"kNN T={float(e.temperature):g}; fast linear probe {int(e.fast_epochs)} epochs.\n\n"
               + summary_table(rows, ks))
    md = out / "study.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(md_text)
    png = plot_study(rows, out / "study.png", k)
    seconds = time.perf_counter() - start
    record = {"study": table, "seeds": seeds, "rows": rows, "markdown": str(md), "plot": str(png),
              "seconds": round(seconds, 3),
              "summary": f"study {table}: {len(rows)} runs in {seconds:.0f}s -> {md}"}
    write_json(record, out / "study.json")
    return record
