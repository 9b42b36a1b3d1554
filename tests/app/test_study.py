"""`sslkit study`: the Table-1 rows are the paper's switches, every row sees the same images, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sslkit.app import cli as sslkit_cli
from sslkit.app import study
from sslkit.config import compose
from tests.conftest import needs_fashion


def test_table1_rows_are_the_papers_switches():
    cfgs = {row.label: compose(list(row.overrides)) for row in study.TABLE1}
    mlp = {k: c.head.kind == "mlp" for k, c in cfgs.items()}
    augplus = {k: c.aug.blur_p > 0 and c.aug.jitter_p == 0.8 for k, c in cfgs.items()}
    cos = {k: c.optim.schedule == "cosine" for k, c in cfgs.items()}
    assert mlp == {"MoCo v1": False, "(a) +MLP": True, "(b) +aug+": False, "(c) +MLP +aug+": True,
                   "(d) MoCo v2 (+cos)": True}
    assert augplus == {"MoCo v1": False, "(a) +MLP": False, "(b) +aug+": True, "(c) +MLP +aug+": True,
                       "(d) MoCo v2 (+cos)": True}
    assert cos == {"MoCo v1": False, "(a) +MLP": False, "(b) +aug+": False, "(c) +MLP +aug+": False,
                   "(d) MoCo v2 (+cos)": True}
    temps = {k: c.method.temperature for k, c in cfgs.items()}
    assert temps == {"MoCo v1": 0.07, "(a) +MLP": 0.2, "(b) +aug+": 0.07, "(c) +MLP +aug+": 0.2,
                     "(d) MoCo v2 (+cos)": 0.2}  # tau 0.2 with the MLP (paper, Sec. 2)


def test_summary_table_gives_mean_and_spread_over_seeds():
    rows = [{"row": "r", "batch_size": 8, "steps": 4, "warmup_steps": 1, "images_seen": 32,
             "knn_by_k": {"20": a, "200": b},
             "linear_top1": c, "final_loss": 1.0, "train_seconds": 2.0}
            for a, b, c in ((50.0, 40.0, 60.0), (52.0, 44.0, 62.0))]
    line = study.summary_table(rows, [20, 200]).splitlines()[2]
    assert line == "| r | 2 | 8 | 4 | 1 | 32 | 51.00 ± 1.41 | 42.00 ± 2.83 | 61.00 ± 1.41 | 1.00 ± 0.00 | 2.00 ± 0.00 |"


def train_in_process(overrides: list[str], log: Path, label: str) -> dict:
    from sslkit.app.train import train

    train(compose(overrides))
    return {"train_seconds": 1.0, "peak_rss_mb": 1.0, "peak_cuda_mb": None}


@pytest.mark.slow
@needs_fashion
def test_study_table1_trains_every_row_with_equal_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "train_in_subprocess", train_in_process)
    code = sslkit_cli.main(["study", "table1", "data.subset=64", "eval.batch_size=16", "eval.seeds=[0,1]",
                            "eval.min_steps=4", "head.hidden_dim=32", "eval.train_subset=300", "eval.test_subset=100",
                            "eval.k=[5,20]",
                            "eval.fast_epochs=2", "trainer.progress=none", f"out={tmp_path}"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "study.json").read_text())
    rows = record["rows"]
    assert len(rows) == 10 and {r["seed"] for r in rows} == {0, 1}
    assert {r["images_seen"] for r in rows} == {64} and {r["queue_size"] for r in rows} == {16}
    assert all(r["loss_curve"] and set(r["knn_by_k"]) == {"5", "20"} for r in rows)
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert len([ln for ln in (tmp_path / "study.md").read_text().splitlines() if ln.startswith("| (")]) == 4


def test_every_table1_row_gets_the_same_warmup(tmp_path):
    """Rows v1..(c) use MoCo v1's sgd_step (no warm-up of its own) and (d) MoCo v2's sgd (auto warm-up):
    the study gives every row eval.warmup_epochs, so (d) - (c) measures the cosine schedule alone."""
    from sslkit.data.loader import steps_per_epoch
    from sslkit.engine.schedule import warmup_steps
    from sslkit.evaluation.batch_compare import Budget

    cfg = compose(["eval.batch_size=128"], extra=["eval=study"])
    budget = Budget(1, 30720)
    warm = {}
    for row in study.TABLE1:
        run_cfg = compose(study.table1_overrides(cfg, [], row, 0, budget, tmp_path / row.slug))
        warm[row.label] = warmup_steps(run_cfg.optim, int(run_cfg.trainer.max_steps), steps_per_epoch(30720, 128, 1))
    assert set(warm.values()) == {48}, warm  # half an epoch of 240 steps, capped at 0.2 of the run
    cfg = compose(["eval.batch_size=128", "eval.train_overrides=['optim.warmup_epochs=0']"], extra=["eval=study"])
    for row in study.TABLE1:  # a train_overrides value wins, for every row alike
        run_cfg = compose(study.table1_overrides(cfg, [], row, 0, budget, tmp_path / row.slug))
        assert float(run_cfg.optim.warmup_epochs) == 0.0, row.label


def test_study_defaults_give_the_large_batch_min_steps():
    from sslkit.evaluation.batch_compare import RunSpec, plan_budget

    cfg = compose([], extra=["eval=study"])
    specs = [RunSpec("simclr", int(cfg.eval.batch_size)), RunSpec("simclr", int(cfg.eval.large_batch))]
    budget, notice = plan_budget(cfg, specs, 60000)  # the full Fashion-MNIST
    assert notice is None and budget.steps(8192) >= int(cfg.eval.min_steps) == 30


@needs_fashion
def test_a_study_budget_below_min_steps_is_refused_in_one_line(tmp_path, capsys):
    code = sslkit_cli.main(["study", "table2", "data.subset=2048", "eval.batch_size=16", "eval.large_batch=1024",
                            "eval.epochs=1", f"out={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("sslkit: error: batch 1024 takes only 2 optimizer step(s)") and "eval.force=true" in err[0]
    assert not list(tmp_path.glob("seed*/runs/*"))  # refused before anything trained


def test_table2_takes_per_run_overrides():
    from sslkit.evaluation.batch_compare import parse_runs

    cfg = compose(["eval.batch_size=128", "eval.large_batch=1024",
                   "eval.run_overrides.mocov2=['method.momentum=0.99','method.queue_size=4096']",
                   "eval.run_overrides.simclr_large=['method.temperature=0.2']"], extra=["eval=study"])
    runs = compose([study.table2_specs(cfg)], extra=["eval=batch_compare"]).eval.runs
    specs = {s.label: s.overrides for s in parse_runs(runs)}
    assert specs == {"simclr@128": (), "simclr@1024": ("method.temperature=0.2",),
                     "mocov2@128": ("method.momentum=0.99", "method.queue_size=4096")}
    with pytest.raises(Exception, match="run_overrides"):
        study.table2_specs(compose(["+eval.run_overrides.moco=['x=1']"], extra=["eval=study"]))
