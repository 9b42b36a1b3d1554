"""The batch-size comparison: run planning (gradient caching above the chunk size), the up-front
DataError for impossible batches, and its md/json/png outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sslkit.app import batch_compare as app_bc
from sslkit.app import cli as sslkit_cli
from sslkit.config import compose
from sslkit.errors import ConfigError
from sslkit.evaluation import batch_compare as bc
from sslkit.evaluation.linear import FastSettings, fast_probe
from tests.conftest import needs_fashion
from tests.evaluation.offline import offline, offline_knn

RUNS = "eval.runs=[{method:simclr,batch_size:16},{method:simclr,batch_size:32},{method:mocov2,batch_size:16}]"
TINY = ["data.subset=64", "head.hidden_dim=32", "eval.chunk_size=16", "eval.epochs=1", "eval.force=true",
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


def plan(overrides: list[str], n_images: int, tmp_path: Path):
    cfg = compose(overrides, extra=["eval=batch_compare"])
    specs = bc.parse_runs(cfg.eval.runs)
    budget, notice = bc.plan_budget(cfg, specs, n_images)
    runs = {s.label: app_bc.run_overrides(["trainer.threads=1"], cfg, s, tmp_path / s.dirname, budget) for s in specs}
    return budget, notice, runs


@pytest.mark.parametrize("n_images", [60000, 10000, 9000])
def test_by_default_every_run_sees_the_same_images_and_batch_8192_takes_30_steps(tmp_path, n_images):
    budget, notice, runs = plan([], n_images, tmp_path)
    assert notice is None
    assert budget.epochs == -(-30 * 8192 // n_images)  # the fewest whole epochs giving batch 8192 30 steps
    for label, (_, run_cfg, _) in runs.items():
        batch, steps = int(run_cfg.data.batch_size), int(run_cfg.trainer.max_steps)
        assert budget.images - batch < steps * batch <= budget.images, label  # equal images, within a batch
        # the loader delivers those steps: epochs x whole batches per epoch (drop_last)
        assert int(run_cfg.trainer.epochs) * (n_images // batch) >= steps
    assert int(runs["simclr@8192"][1].trainer.max_steps) >= 30
    assert int(runs["simclr@256"][1].trainer.max_steps) >= 30 * 32 - 32  # 32x the steps, not equal steps


def test_too_short_a_budget_is_refused_in_one_line_unless_forced(tmp_path):
    with pytest.raises(ConfigError) as err:
        plan(["eval.epochs=1"], 60000, tmp_path)
    text = str(err.value)
    assert "\n" not in text and "only 7 optimizer step(s)" in text and "eval.epochs=5" in text
    assert "eval.force=true" in text
    budget, notice, runs = plan(["eval.epochs=1", "eval.force=true"], 60000, tmp_path)
    assert budget.images == 60000 and int(runs["simclr@8192"][1].trainer.max_steps) == 7
    assert notice is not None and "\n" not in notice
    assert "only 7 optimizer step(s)" in notice and "eval.epochs=5" in notice


def test_both_simclr_runs_use_the_same_bn_regime_one_view_per_image_per_chunk(tmp_path):
    _, _, runs = plan(["eval.chunk_size=16", RUNS], 64, tmp_path)
    small, large, moco = (runs[k][1] for k in ("simclr@16", "simclr@32", "mocov2@16"))
    assert small.method.chunk_size == large.method.chunk_size == 16
    assert bc.bn_regime(small) == "BN per 16 views, one per image"
    assert bc.bn_regime(large) == "BN per 16 views, one per image (gradient caching)"
    assert "chunk_size" not in moco.method  # MoCo's batch is not its negatives
    assert bc.bn_regime(moco) == "split-BN, 8 groups of 2"


def test_simclr_runs_use_square_root_lr_scaling_by_default(tmp_path):
    """SimCLR appendix B.1: lr = 0.075 sqrt(B) for short runs; one rule for both batches."""
    from sslkit.engine.optim import scaled_lr

    _, _, runs = plan([], 60000, tmp_path)
    for label, batch in (("simclr@256", 256), ("simclr@8192", 8192)):
        optim = runs[label][1].optim
        assert optim.lr_scaling == "sqrt"
        assert scaled_lr(float(optim.lr), batch, str(optim.lr_scaling)) == pytest.approx(0.075 * batch ** 0.5)
    assert runs["mocov2@256"][1].optim.lr_scaling == "linear"  # MoCo keeps its own rule
    _, _, runs = plan(["eval.simclr_lr_scaling=linear"], 60000, tmp_path)
    optim = runs["simclr@8192"][1].optim
    assert scaled_lr(float(optim.lr), 8192, str(optim.lr_scaling)) == pytest.approx(9.6)  # 0.3 x 8192/256
    spec = "eval.runs=[{method:simclr,batch_size:256,overrides:['optim.lr_scaling=none']}]"
    _, _, runs = plan([spec], 60000, tmp_path)
    assert runs["simclr@256"][1].optim.lr_scaling == "none"  # a run's own choice wins


def test_warmup_and_decay_scale_with_each_runs_length(tmp_path):
    from sslkit.engine.schedule import lr_factor, warmup_steps

    _, _, runs = plan([], 60000, tmp_path)
    shapes = {}
    for label, (_, run_cfg, _) in runs.items():
        total = int(run_cfg.trainer.max_steps)
        warm = warmup_steps(run_cfg.optim, total, 60000 // int(run_cfg.data.batch_size))
        shapes[label] = warm / total
        assert lr_factor(total - 1, total, warm, str(run_cfg.optim.schedule)) < 0.01  # decays to the end
    assert shapes["simclr@256"] == pytest.approx(0.05, abs=1e-3)
    assert shapes["simclr@8192"] == pytest.approx(0.05, abs=1 / 35)  # 2 of 36 steps
    # MoCo v2 has no warm-up in the paper; at 32 px sslkit's small-image default (optim.warmup_epochs=auto)
    # gives it one, which batch-compare scales to the same 5% of its run
    assert shapes["mocov2@256"] == pytest.approx(0.05, abs=1e-3)
    cfg = compose(["data.image_size=96"], extra=["eval=batch_compare"])
    moco = next(s for s in bc.parse_runs(cfg.eval.runs) if s.method == "mocov2")
    budget, _ = bc.plan_budget(cfg, [moco], 60000)
    _, run_cfg, _ = app_bc.run_overrides(["data.image_size=96"], cfg, moco, tmp_path / "large", budget)
    assert warmup_steps(run_cfg.optim, 100, 10) == 0  # large images: none, as in the paper


def test_moco_queue_is_capped_below_the_dataset_with_a_notice(tmp_path):
    _, _, runs = plan([], 10000, tmp_path)
    ovr, run_cfg, notices = runs["mocov2@256"]
    assert int(run_cfg.method.queue_size) == 2048 < 10000 // 4
    assert len(notices) == 1 and "method.queue_size 65536 -> 2048" in notices[0]
    assert bc.queue_cap(60000) == 8192 and bc.queue_cap(64) == 16
    _, _, runs = plan(["eval.runs=[{method:mocov2,batch_size:256,overrides:['method.queue_size=1024']}]"], 10000,
                      tmp_path)
    assert int(runs["mocov2@256"][1].method.queue_size) == 1024 and runs["mocov2@256"][2] == []


def test_command_line_training_keys_are_passed_on():
    base = app_bc.passed_on(["data.subset=64", "trainer.threads=1", "out=/elsewhere", "eval.k=[5]",
                         "data.batch_size=7", "seed=3", "optim.warmup_fraction=0.5"])
    assert base == ["data.subset=64", "trainer.threads=1", "seed=3"]


@needs_fashion
def test_a_batch_larger_than_the_dataset_is_the_loaders_data_error(tmp_path, capsys):
    code = sslkit_cli.main(["eval", "batch-compare", "data.subset=64", f"out={tmp_path}",
                            "eval.runs=[{method:simclr,batch_size:16},{method:simclr,batch_size:128}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("sslkit: error: data.batch_size=128 is larger than the 64")
    assert not (tmp_path / "runs").exists()  # checked before anything trained


def train_in_process(overrides: list[str], log: Path, label: str) -> dict:
    from sslkit.app.train import train

    train(compose(overrides))
    return {"train_seconds": 1.0, "peak_rss_mb": 123.0, "peak_cuda_mb": None}


@needs_fashion
def test_batch_compare_writes_table_json_and_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(app_bc, "train_in_subprocess", train_in_process)
    code = sslkit_cli.main(["eval", "batch-compare", RUNS, *TINY, f"out={tmp_path}"])
    captured = capsys.readouterr()
    out, err = captured.out.strip().splitlines(), captured.err
    assert code == 0
    assert out[-1].startswith("batch_compare: simclr@16 knn ") and out[-1].endswith("batch_compare.md")
    record = json.loads((tmp_path / "batch_compare.json").read_text())
    rows = record["rows"]
    assert [(r["method"], r["batch_size"], r["chunk_size"]) for r in rows] == [
        ("simclr", 16, 16), ("simclr", 32, 16), ("mocov2", 16, None)]
    assert [r["steps"] for r in rows] == [4, 2, 4]  # one epoch of 64 images each
    for r in rows:
        assert r["images_seen"] == 64
    e = compose(TINY, extra=["eval=batch_compare"]).eval
    for r in rows:  # kNN and the fast probe recomputed here on each run's checkpoint
        run_dir = Path(r["run_dir"])
        knn = offline_knn(run_dir, 300, 100, [20], float(e.temperature))
        assert r["knn_top1"] == knn[20]["top1"]
        (tr, tr_y, classes), (te, te_y, _) = offline(run_dir, "train", 300), offline(run_dir, "test", 100)
        fast = FastSettings(int(e.fast_epochs), float(e.fast_lr), int(e.fast_batch_size), 0.0, 0)
        assert r["linear_top1"] == pytest.approx(fast_probe(tr, tr_y, te, te_y, classes, fast)["top1"], abs=1e-9)
        assert r["peak_memory_mb"] == 123.0 and r["memory_kind"] == "CPU peak RSS"
        assert (Path(r["run_dir"]) / "checkpoints" / "last.pt").is_file()
    assert rows[2]["queue_size"] == 16  # capped at a quarter of the 64 images
    table = [ln for ln in (tmp_path / "batch_compare.md").read_text().splitlines() if ln.startswith("| ")]
    assert len(table) == 4
    assert "| simclr | 32 | 64 | 2 | 0 | BN per 16 views, one per image (gradient caching) |" in table[2]
    assert "images seen" in table[0] and "BN regime" in table[0] and "peak memory" in table[0]
    assert "only 2 optimizer step(s)" in err and "method.queue_size 65536 -> 16" in err
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
    assert [r["images_seen"] for r in rows] == [64, 64, 64]
    assert (tmp_path / "logs" / "simclr_b32.log").read_text().count("trained 2 steps") == 1  # the child's own output


def test_child_training_progress_is_relayed(capsys):
    """A batch-compare run's "step N/T" lines become progress on stderr; the log keeps everything."""
    import io
    import sys

    from sslkit.app.children import _relay

    log = io.StringIO()
    code = _relay([sys.executable, "-c", "print('sslkit: mocov2'); print('step 1/4 loss=2'); print('step 4/4')"],
                  log, "mocov2@256")
    assert code == 0
    assert log.getvalue().splitlines() == ["sslkit: mocov2", "step 1/4 loss=2", "step 4/4"]
    err = capsys.readouterr().err.splitlines()  # not a TTY: lines
    assert err[0] == "batch_compare mocov2@256: 0/4 step (0%) [started]"
    assert err[-1].startswith("batch_compare mocov2@256: 4/4 step (100%)") and "[done in" in err[-1]
