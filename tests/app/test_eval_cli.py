"""`sslkit eval knn|linear` end to end through real subprocesses on a small Fashion-MNIST subset."""

from __future__ import annotations

import json

import pytest

from sslkit.config import compose
from tests.conftest import needs_fashion
from tests.evaluation.offline import offline_knn, offline_protocol

pytestmark = needs_fashion
SUBSETS = ("eval.train_subset=500", "eval.test_subset=500")  # the monitor's: one set of reference features
PIXEL_SUBSETS = ("eval.train_subset=1000", "eval.test_subset=200")


def summary_line(stdout: str) -> str:
    lines = stdout.strip().splitlines()
    assert lines, "nothing printed"
    return lines[-1]


def test_knn_writes_json_per_k_and_reuses_the_feature_cache(trained_run, cli):
    res = cli("eval", "knn", f"checkpoint={trained_run}", "eval.k=[10,20,200]", *SUBSETS)
    assert res.returncode == 0, res.stderr[-3000:]
    line = summary_line(res.stdout)
    assert line.startswith("knn top1=") and "k=200" in line and "500 train / 500 test" in line
    path = trained_run / "eval" / "knn.json"
    assert line.endswith(f"-> {path}")
    r = json.loads(path.read_text())
    for k in (10, 20, 200):  # the summary shows every requested k
        assert f"k={k} {r['results'][str(k)]['top1']:.2f}%" in line
    # stdout/stderr are pipes here, not a TTY: progress comes as plain lines, one split at a time
    progress = [ln for ln in res.stderr.splitlines() if ln.startswith("features ")]
    assert any(ln.startswith("features train: 0/500 img") for ln in progress), res.stderr[-2000:]
    assert any(ln.startswith("features train: 500/500 img") and "[done" in ln for ln in progress)
    assert any(ln.startswith("features test: 500/500 img") and "img/s" in ln for ln in progress)
    assert r["top1"] <= r["top5"] <= 100.0
    temperature = float(compose([], extra=["eval=knn"]).eval.temperature)
    expected = offline_knn(trained_run, 500, 500, [10, 20, 200], temperature)
    assert r["results"] == {str(k): v for k, v in expected.items()}  # kNN computed here on the same features
    assert r["results"]["200"]["top1"] == r["top1"]
    assert r["k"] == 200 and r["ks"] == [10, 20, 200] and r["temperature"] == 0.1
    assert (r["train_size"], r["test_size"], r["train_subset"], r["test_subset"]) == (500, 500, 500, 500)
    assert r["checkpoint"].endswith("checkpoints/last.pt") and r["data"] == "fashion_mnist"
    assert r["feature_dim"] == 512 and r["seconds"] > 0
    assert r["cache"]["train_hit"] is False and r["cache"]["test_hit"] is False
    cache_files = sorted((trained_run / "eval" / "cache").glob("*.pt"))
    assert len(cache_files) == 2
    stamps = [f.stat().st_mtime_ns for f in cache_files]

    again = cli("eval", "knn", f"checkpoint={trained_run / 'checkpoints' / 'last.pt'}", "eval.k=[10,20,200]",
                *SUBSETS)
    assert again.returncode == 0, again.stderr[-3000:]
    r2 = json.loads(path.read_text())
    assert r2["cache"]["train_hit"] is True and r2["cache"]["test_hit"] is True
    assert [f.stat().st_mtime_ns for f in cache_files] == stamps  # reused, not rewritten
    assert r2["results"] == r["results"]


def test_linear_fast_and_protocol(trained_run, cli):
    res = cli("eval", "linear", f"checkpoint={trained_run}", *SUBSETS, "eval.fast_epochs=10")
    assert res.returncode == 0, res.stderr[-3000:]
    assert summary_line(res.stdout).startswith("linear fast top1=")
    fast_file = trained_run / "eval" / "linear_fast.json"
    r = json.loads(fast_file.read_text())
    fast_text = fast_file.read_text()
    assert r["mode"] == "fast" and 10.0 < r["top1"] <= 100.0 and r["settings"]["epochs"] == 10
    assert r["train_size"] == 500 and r["test_size"] == 500

    protocol = ["eval.mode=protocol", "eval.epochs=1", "eval.train_subset=128", "eval.test_subset=500",
                "eval.batch_size=64"]
    res = cli("eval", "linear", f"checkpoint={trained_run}", *protocol)
    assert res.returncode == 0, res.stderr[-3000:]
    assert summary_line(res.stdout).startswith("linear protocol top1=")
    r = json.loads((trained_run / "eval" / "linear_protocol.json").read_text())
    assert r["mode"] == "protocol"
    top1, top5, last_loss = offline_protocol(trained_run, protocol, 128, 500)  # the same protocol in-process
    assert (r["top1"], r["top5"]) == pytest.approx((top1, top5), abs=1e-9)
    assert r["last_epoch_loss"] == pytest.approx(last_loss, rel=1e-5)
    assert fast_file.read_text() == fast_text  # each mode writes its own file
    s = r["settings"]
    assert (s["lr"], s["momentum"], s["weight_decay"]) == (30.0, 0.9, 0.0)
    assert (s["milestones"], s["epochs"]) == ([60, 80], 1)
    assert s["backbone_unchanged"] is True and r["train_size"] == 128


def test_missing_checkpoint_is_one_line_and_exit_2(cli):
    res = cli("eval", "knn", "checkpoint=/does/not/exist")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sslkit: error: ") and "/does/not/exist" in lines[0]


def test_pixel_baseline_needs_no_checkpoint(cli, tmp_path):
    res = cli("eval", "knn", "eval.features=pixels", "eval.k=[20,200]", *PIXEL_SUBSETS, f"out={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert summary_line(res.stdout).startswith("knn pixels top1=")
    r = json.loads((tmp_path / "knn.json").read_text())
    assert r["checkpoint"] is None and r["features"] == "pixels" and r["feature_dim"] == 32 * 32
    assert 55.0 < r["results"]["20"]["top1"] < 95.0  # raw pixels are a real, weak baseline
