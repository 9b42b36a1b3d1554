"""training.png: a panel per logged curve, the last record per step, and a callback that never raises."""

from __future__ import annotations

import json

from sslkit.evaluation.plots import _series, plot_training, training_plot_callback
from sslkit.files import read_metrics
from tests.conftest import needs_fashion
from tests.evaluation.pictures import assert_picture, has_colour

PURPLE = (148, 103, 189)  # tab:purple, the queue-fill curve


def _write(run, records):
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_series_keeps_the_last_record_of_a_step():
    records = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "loss": 2.5},  # resumed at 2
               {"step": 3, "epoch": 1, "knn_top1": 40.0}, {"step": 3, "loss": float("nan")}]
    assert _series(records, "loss")[:2] == [(1, 3.0), (2, 2.5)]
    assert _series(records, "knn_top1", "epoch") == [(1, 40.0)]
    assert _series(records, "acc") == []


def test_moco_run_gets_six_panels_with_the_queue_fill(tmp_path):
    records = [{"step": s, "epoch": 0, "loss": 6 - s / 10, "lr": 0.03, "images_per_s": 100.0 + s,
                "acc": s / 20, "queue_fill": min(1.0, s / 8)} for s in range(1, 21)]
    records += [{"step": 10, "epoch": 1, "knn_top1": 50.0}, {"step": 20, "epoch": 2, "knn_top1": 60.0}]
    _write(tmp_path, records)
    px = assert_picture(plot_training(tmp_path), (1386, 704))  # 3 x 2 panels of 4.2 x 3.2 in at 110 dpi
    assert has_colour(px, PURPLE)


def test_simclr_run_without_monitor_gets_three_panels(tmp_path):
    _write(tmp_path, [{"step": s, "epoch": 0, "loss": 5.0 / s, "lr": 0.3, "images_per_s": 50.0} for s in (1, 2, 3)])
    px = assert_picture(plot_training(tmp_path), (1386, 352))
    assert not has_colour(px, PURPLE)


def test_callback_warns_instead_of_raising(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    training_plot_callback(blocker)()  # cannot write file/training.png
    assert "could not plot" in capsys.readouterr().err


@needs_fashion
def test_training_refreshes_the_plot_at_each_checkpoint(tmp_path, monkeypatch):
    from sslkit.app.train import train
    from sslkit.config import compose
    from sslkit.evaluation import plots

    seen = []
    real = plots.plot_training
    monkeypatch.setattr(plots, "plot_training", lambda run: seen.append(len(read_metrics(run))) or real(run))
    train(compose(["data.subset=128", "data.batch_size=32", "trainer.max_steps=4", "method.queue_size=48",
                   "trainer.progress=none", "trainer.log_every_steps=1", "head.hidden_dim=64",
                   "trainer.checkpoint_every_steps=2", f"out={tmp_path / 'run'}"]))
    assert seen[0] == 2 and seen[-1] == 4  # drawn at the step-2 checkpoint, and at the end
    assert_picture(tmp_path / "run" / "training.png", (1386, 352 * 2))  # loss, lr, images/s; acc, queue fill
