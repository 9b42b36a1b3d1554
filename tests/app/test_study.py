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
    rows = [{"row": "r", "batch_size": 8, "steps": 4, "images_seen": 32, "knn_by_k": {"20": a, "200": b},
             "linear_top1": c, "final_loss": 1.0, "train_seconds": 2.0}
            for a, b, c in ((50.0, 40.0, 60.0), (52.0, 44.0, 62.0))]
    line = study.summary_table(rows, [20, 200]).splitlines()[2]
    assert line == "| r | 2 | 8 | 4 | 32 | 51.00 ± 1.41 | 42.00 ± 2.83 | 61.00 ± 1.41 | 1.00 ± 0.00 | 2.00 ± 0.00 |"


def train_in_process(overrides: list[str], log: Path, label: str) -> dict:
    from sslkit.app.train import train

    train(compose(overrides))
    return {"train_seconds": 1.0, "peak_rss_mb": 1.0, "peak_cuda_mb": None}


@pytest.mark.slow
@needs_fashion
def test_study_table1_trains_every_row_with_equal_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "train_in_subprocess", train_in_process)
    code = sslkit_cli.main(["study", "table1", "data.subset=64", "eval.batch_size=16", "eval.seeds=[0,1]",
                            "head.hidden_dim=32", "eval.train_subset=300", "eval.test_subset=100", "eval.k=[5,20]",
                            "eval.fast_epochs=2", "trainer.progress=none", f"out={tmp_path}"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "study.json").read_text())
    rows = record["rows"]
    assert len(rows) == 10 and {r["seed"] for r in rows} == {0, 1}
    assert {r["images_seen"] for r in rows} == {64} and {r["queue_size"] for r in rows} == {16}
    assert all(r["loss_curve"] and set(r["knn_by_k"]) == {"5", "20"} for r in rows)
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert len([ln for ln in (tmp_path / "study.md").read_text().splitlines() if ln.startswith("| (")]) == 4
