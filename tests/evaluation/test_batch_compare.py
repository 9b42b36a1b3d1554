"""The batch-size comparison: run planning (gradient caching above the chunk size), the up-front
DataError for impossible batches, and its md/json/png outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sslkit import cli as sslkit_cli
from sslkit.config import compose
from sslkit.errors import ConfigError
from sslkit.evaluation import batch_compare as bc
from sslkit.evaluation.linear import FastSettings, fast_probe
from tests.conftest import needs_fashion
from tests.evaluation.offline import offline, offline_knn

RUNS = "eval.runs=[{method:simclr,batch_size:16},{method:simclr,batch_size:32},{method:mocov2,batch_size:16}]"
TINY = ["data.subset=64", "head.hidden_dim=32", "eval.chunk_size=16", "eval.max_steps=1",
        "eval.train_subset=300", "eval.test_subset=100", "eval.k=[20]", "eval.fast_epochs=5"]


def test_runs_parse_from_the_documented_command_line_form():
    cfg = compose([RUNS], extra=["eval=batch_compare"])
    specs = bc.parse_runs(cfg.eval.runs)
    assert [(s.method, s.batch_size) for s in specs] == [("simclr", 16), ("simclr", 32), ("mocov2", 16)]
    cfg = compose(["eval.runs=[{method:mocov2,batch_size:8,overrides:['method.queue_size=64']}]"],
                  extra=["eval=batch_compare"])
    assert bc.parse_runs(cfg.eval.runs)[0].overrides == ("method.queue_size=64",)
    defaults = bc.parse_runs(compose([], extra=["eval=batch_compare"]).eval.runs)
    assert [s.label for s in defaults] == ["simclr@256", "simclr@8192", "mocov2@256"]
    for bad in ([], [{"method": "simclr"}], [{"method": "simclr", "batch_size": "big"}],
                [{"method": "simclr", "batch_size": 8, "lr": 1}],
                [{"method": "simclr", "batch_size": 8}] * 2):
        with pytest.raises(ConfigError):
            bc.parse_runs(bad)


def test_simclr_batches_above_the_chunk_size_use_gradient_caching(tmp_path):
    cfg = compose(["eval.chunk_size=16", "eval.epochs=3", "eval.max_steps=2"], extra=["eval=batch_compare"])
    base = bc.passed_on(["data.subset=64", "trainer.threads=1", "out=/elsewhere", "eval.k=[5]",
                         "data.batch_size=7", "seed=3"])
    assert base == ["data.subset=64", "trainer.threads=1", "seed=3"]
    plans = {(m, b): bc.run_overrides(base, cfg, bc.RunSpec(m, b), tmp_path / f"{m}{b}")
             for m, b in (("simclr", 16), ("simclr", 64), ("mocov2", 64))}
    assert plans["simclr", 64][1].method.chunk_size == 16
    assert plans["simclr", 16][1].method.chunk_size is None  # fits in one chunk: plain backward
    assert "chunk_size" not in plans["mocov2", 64][1].method  # MoCo's batch is not the negatives
    run_cfg = plans["simclr", 64][1]
    assert (run_cfg.data.batch_size, run_cfg.trainer.epochs, run_cfg.trainer.max_steps) == (64, 3, 2)
    assert run_cfg.out == str(tmp_path / "simclr64") and run_cfg.seed == 3


@needs_fashion
def test_a_batch_larger_than_the_dataset_is_the_loaders_data_error(tmp_path, capsys):
    code = sslkit_cli.main(["eval", "batch-compare", "data.subset=64", f"out={tmp_path}",
                            "eval.runs=[{method:simclr,batch_size:16},{method:simclr,batch_size:128}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("sslkit: error: data.batch_size=128 is larger than the 64")
    assert not (tmp_path / "runs").exists()  # checked before anything trained


def train_in_process(overrides: list[str], log: Path, label: str) -> dict:
    from sslkit.train import train

    train(compose(overrides))
    return {"train_seconds": 1.0, "peak_rss_mb": 123.0, "peak_cuda_mb": None}


@needs_fashion
def test_batch_compare_writes_table_json_and_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bc, "train_in_subprocess", train_in_process)
    code = sslkit_cli.main(["eval", "batch-compare", RUNS, *TINY, f"out={tmp_path}"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[-1].startswith("batch_compare: simclr@16 knn ") and out[-1].endswith("batch_compare.md")
    record = json.loads((tmp_path / "batch_compare.json").read_text())
    rows = record["rows"]
    assert [(r["method"], r["batch_size"], r["chunk_size"]) for r in rows] == [
        ("simclr", 16, None), ("simclr", 32, 16), ("mocov2", 16, None)]
    e = compose(TINY, extra=["eval=batch_compare"]).eval
    for r in rows:  # kNN and the fast probe recomputed here on each run's checkpoint
        run_dir = Path(r["run_dir"])
        assert r["steps"] == 1
        knn = offline_knn(run_dir, 300, 100, [20], float(e.temperature))
        assert r["knn_top1"] == knn[20]["top1"]
        (tr, tr_y, classes), (te, te_y, _) = offline(run_dir, "train", 300), offline(run_dir, "test", 100)
        fast = FastSettings(int(e.fast_epochs), float(e.fast_lr), int(e.fast_batch_size), 0.0, 0)
        assert r["linear_top1"] == pytest.approx(fast_probe(tr, tr_y, te, te_y, classes, fast)["top1"], abs=1e-9)
        assert r["peak_memory_mb"] == 123.0 and r["memory_kind"] == "CPU peak RSS"
        assert (Path(r["run_dir"]) / "checkpoints" / "last.pt").is_file()
    table = [ln for ln in (tmp_path / "batch_compare.md").read_text().splitlines() if ln.startswith("| ")]
    assert len(table) == 4 and "| simclr | 32 | 16 | 1 |" in table[2]
    assert (tmp_path / "batch_compare.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@needs_fashion
def test_batch_compare_cli_with_real_training_subprocesses(tmp_path, cli):
    res = cli("eval", "batch-compare", RUNS, *TINY, f"out={tmp_path}", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads((tmp_path / "batch_compare.json").read_text())["rows"]
    assert len(rows) == 3 and rows[1]["chunk_size"] == 16
    assert all(r["peak_memory_mb"] > 100 and r["train_seconds"] > 0 for r in rows)  # a real process' RSS
    assert (tmp_path / "batch_compare.md").is_file() and (tmp_path / "batch_compare.png").is_file()
    assert (tmp_path / "logs" / "simclr_b32.log").read_text().count("step 1/1") == 1
