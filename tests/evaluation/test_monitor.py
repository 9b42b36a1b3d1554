"""The online kNN monitor: a pure epoch hook during training, and its records and plot in a run."""

from __future__ import annotations

import json

import torch

from sslkit.config import compose
from sslkit.evaluation.monitor import KnnMonitor
from sslkit.evaluation.plots import plot_training
from sslkit.files import read_metrics
from tests.conftest import TinyEncoder, needs_fashion

pytestmark = needs_fashion


def test_monitor_runs_every_n_epochs_and_leaves_the_encoder_as_it_was():
    cfg = compose(["trainer.monitor_subset=300", "eval.k=[20]", "data.image_size=28"])
    monitor = KnnMonitor(cfg, torch.device("cpu"), every=2)
    assert monitor.k == 20 and monitor.temperature == 0.1
    torch.manual_seed(0)
    encoder = TinyEncoder().train()
    encoder(torch.randn(4, 3, 28, 28)).sum().backward()
    grads = [p.grad.clone() for p in encoder.parameters()]
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    rng = torch.get_rng_state()

    assert monitor(1, encoder) == {}
    out = monitor(2, encoder)
    assert set(out) == {"knn_top1"} and 10.0 < out["knn_top1"] <= 100.0  # above chance, even random conv
    assert encoder.training
    assert all(torch.equal(p.grad, g) for p, g in zip(encoder.parameters(), grads, strict=True))
    assert all(torch.equal(v, state[k]) for k, v in encoder.state_dict().items())  # no BN update
    assert torch.equal(torch.get_rng_state(), rng)


def test_monitor_defaults_outside_the_knn_group():
    cfg = compose(["trainer.monitor_subset=50"], extra=["eval=linear"])
    monitor = KnnMonitor(cfg, torch.device("cpu"), every=1)
    assert (monitor.k, monitor.temperature) == (200, 0.1)
    torch.manual_seed(0)
    out = monitor(1, TinyEncoder())  # k is capped at the 50-image memory bank
    assert 0.0 <= out["knn_top1"] <= 100.0


def test_training_with_the_monitor_logs_knn_and_plots(trained_run):
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    knn = [r for r in records if "knn_top1" in r]
    assert [r["epoch"] for r in knn] == [1, 2] and [r["step"] for r in knn] == [4, 8]
    assert all(0.0 <= r["knn_top1"] <= 100.0 for r in knn)
    png = trained_run / "training.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_metrics(trained_run)[-1] == records[-1]


def test_plot_training_copes_with_a_torn_line_and_no_monitor(tmp_path):
    lines = [json.dumps({"step": s, "epoch": 0, "loss": 5.0 - s}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')
    assert len(read_metrics(tmp_path)) == 3
    assert plot_training(tmp_path).stat().st_size > 1000
