"""prev.pt fallback, a full disk while checkpointing, the free-space check, run directories that are
never shared, and TensorBoard/metrics that keep every point across resumes."""

import errno
import json
from collections import namedtuple

import pytest

from sslkit.app.launch import resume_config
from sslkit.app.train import train
from sslkit.config import compose
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.checkpoint import load_run
from sslkit.errors import CheckpointError
from tests.app.test_cli_errors import _one_line_error
from tests.conftest import needs_fashion, run_cli

pytestmark = needs_fashion
BASE = ["data.subset=64", "data.batch_size=32", "method.queue_size=64", "head.hidden_dim=32",
        "trainer.progress=none", "trainer.log_every_steps=1"]


def _resume(run_dir, max_steps):
    saved, _ = load_run(str(run_dir))
    cfg = resume_config(str(run_dir), [f"trainer.max_steps={max_steps}"])[0]  # what `sslkit train` does
    return train(cfg, saved)


def test_full_disk_while_checkpointing_is_one_line_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    run = train(compose(BASE + ["trainer.max_steps=2", f"out={tmp_path / 'r'}"]))
    before = (run / ckpt.LAST).read_bytes()

    def no_space(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", no_space)
    with pytest.raises(CheckpointError) as err:
        _resume(run, 3)
    message = str(err.value)
    assert "no space left in" in message and str(run / "checkpoints") in message and "bytes" in message
    assert "\n" not in message
    monkeypatch.undo()
    assert (run / ckpt.LAST).read_bytes() == before  # intact, and still loads
    assert ckpt.load(run)["state"]["step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt", "prev.pt"]  # no temp files


def test_free_space_is_checked_before_training(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(CheckpointError, match=r"not enough disk space .* 1000 are free"):
        train(compose(BASE + ["trainer.max_steps=2", f"out={tmp_path / 'r'}"]))
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # refused before the first step


@pytest.mark.slow  # ~20 s of CLI; the missing-last case: test_crash_consistency.py
def test_truncated_last_falls_back_to_prev_through_the_cli(tmp_path):
    out = tmp_path / "r"
    res = run_cli("train", *BASE, "trainer.max_steps=2", "trainer.checkpoint_every_steps=1", f"out={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert ckpt.load(out / "checkpoints" / "prev.pt")["state"]["step"] >= 1
    last = out / ckpt.LAST
    last.write_bytes(last.read_bytes()[:1000])  # a torn write from a crashed disk
    res = run_cli("train", f"trainer.resume={out}", "trainer.max_steps=3")
    assert res.returncode == 0, res.stderr[-3000:]
    notice = [line for line in res.stderr.splitlines() if line.startswith("sslkit: notice:")]
    assert len(notice) == 1 and "prev.pt" in notice[0] and "cannot read checkpoint" in notice[0]
    assert ckpt.load(out)["state"]["step"] == 3


@pytest.mark.slow  # a CLI subprocess run of ~15 s: make test-slow
def test_out_of_another_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    out = tmp_path / "reuse"
    assert run_cli("train", *BASE, "trainer.max_steps=1", f"out={out}").returncode == 0
    (out / "eval").mkdir()
    (out / "eval" / "knn.json").write_text("{}")
    first = (out / ckpt.LAST).read_bytes()
    res = run_cli("train", "method=simclr", *BASE[:2], "trainer.max_steps=1", f"out={out}")
    _one_line_error(res, f"out={out} already holds a run", "trainer.resume=", "trainer.overwrite=true")
    assert (out / ckpt.LAST).read_bytes() == first

    res = run_cli("train", "method=simclr", *BASE[:2], "trainer.max_steps=1", "trainer.log_every_steps=1",
                  "trainer.overwrite=true", f"out={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (out / "eval").exists()  # the old run's results went with it
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert "simclr" in ckpt.load(out)["config"]


@pytest.mark.slow  # a CLI subprocess run of ~15 s: make test-slow
def test_export_never_overwrites_a_file_it_did_not_create(tmp_path):
    out = tmp_path / "r"
    assert run_cli("train", *BASE, "trainer.max_steps=1", f"out={out}").returncode == 0
    before = (out / ckpt.LAST).read_bytes()
    _one_line_error(run_cli("export", f"checkpoint={out}", f"out={out / ckpt.LAST}"), "exists", "does not overwrite")
    assert (out / ckpt.LAST).read_bytes() == before
    (tmp_path / "mine.txt").write_text("keep me")
    _one_line_error(run_cli("export", f"checkpoint={out}", f"out={tmp_path / 'mine.txt'}"), "does not overwrite")
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.slow  # a CLI subprocess run of ~15 s: make test-slow
def test_tensorboard_and_metrics_keep_every_point_across_two_resumes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(compose(BASE + ["trainer.max_steps=2", f"out={tmp_path / 'r'}"]))
    _resume(run, 4)
    # a crash after step 5 logged but before its checkpoint: step 5 is trained (and logged) again
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 5, "loss": 99.0}) + "\n")
    _resume(run, 6)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]

