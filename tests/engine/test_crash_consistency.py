"""Issue 25: a kill at any instant of a checkpoint save loses nothing.

One tiny run checkpoints every step. During the save of step 3 the run directory is copied after
each stage of the save sequence: what a SIGKILL at that instant would leave on disk (a kill frees
nothing and finishes nothing; the page cache is what the next process reads). On each copy,
resume (through `sslkit train trainer.resume=`), `sslkit eval knn` and `sslkit export` must work,
and the resumed run must end bit-identical to the run that was never interrupted.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from sslkit.app.cli import main
from sslkit.app.train import train
from sslkit.config import compose
from sslkit.engine import checkpoint as ckpt
from sslkit.files import read_metrics, save_atomic
from tests.conftest import needs_fashion, run_cli

pytestmark = needs_fashion

# 128 images, batch 32: 4 steps, a checkpoint after each; the save of step 3 is the one killed
TINY = ["data.subset=128", "data.batch_size=32", "method.queue_size=48", "head.hidden_dim=16", "backbone.width=8",
        "trainer.max_steps=4", "trainer.checkpoint_every_steps=1", "trainer.progress=none",
        "trainer.log_every_steps=1", "trainer.precision=32", "trainer.channels_last=false", "data.num_workers=0"]
KILLED_SAVE = 3  # the third torch.save of the run: step 3, with last.pt (step 2) and prev.pt (step 1) on disk
# every instant of the save sequence: the temp file half written, complete and fsynced, the previous
# checkpoint hard-linked to a temporary name, that name renamed over prev.pt, the new file renamed over last.pt
POINTS = ("temp half written", "temp fsynced", "prev linked", "prev renamed", "last renamed")
EVAL = ["eval.train_subset=60", "eval.test_subset=30", "eval.k=[5]", "eval.batch_size=64", "data.num_workers=0"]


class SaveSpy:
    """Copies the run directory after each stage of one save: the state a kill there would leave."""

    def __init__(self, run_dir: Path, snapshots: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.run_dir, self.snapshots, self.saves, self.taken = run_dir, snapshots, 0, []
        real_save, real_fsync, real_link, real_replace = torch.save, os.fsync, os.link, os.replace

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            self.saves += 1
            if not self.active:
                return real_save(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            self.snap("temp half written")
            f.write(data[len(data) // 2:])

        def fsync(fd: int) -> None:
            real_fsync(fd)
            if self.active and "temp fsynced" not in self.taken:
                self.snap("temp fsynced")

        def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            real_link(src, dst, *args, **kwargs)
            if self.active:
                self.snap("prev linked")

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            real_replace(src, dst, *args, **kwargs)
            if self.active:
                self.snap("last renamed" if Path(dst).name == "last.pt" else "prev renamed")

        monkeypatch.setattr(torch, "save", save)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "link", link)
        monkeypatch.setattr(os, "replace", replace)

    @property
    def active(self) -> bool:
        return self.saves == KILLED_SAVE

    def snap(self, point: str) -> None:
        self.taken.append(point)
        shutil.copytree(self.run_dir, self.snapshots / point.replace(" ", "_"), symlinks=True)


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """The finished run (never interrupted) and a copy of its directory at each point of the killed save."""
    root = tmp_path_factory.mktemp("crash")
    with pytest.MonkeyPatch.context() as mp:
        spy = SaveSpy(root / "run", root, mp)
        run = train(compose([*TINY, f"out={root / 'run'}"]))
    return run, {p: root / p.replace(" ", "_") for p in spy.taken}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(run / ckpt.LAST, map_location="cpu", weights_only=True)
    assert saved["state"]["step"] == 4
    return saved["method"]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_any_point_of_a_save_loses_nothing(killed_runs, point, tmp_path, capsys):
    straight, snapshots = killed_runs
    assert point in snapshots, f"the save sequence never reached '{point}'"
    run = tmp_path / "run"
    shutil.copytree(snapshots[point], run, symlinks=True)
    # the kill's instant, as found on disk: last.pt always names a complete checkpoint
    assert ckpt.load(run / ckpt.LAST)["state"]["step"] == (3 if point == "last renamed" else 2)
    code, err = _cli(capsys, "eval", "knn", f"checkpoint={run}", *EVAL, f"out={tmp_path / 'knn'}")
    assert code == 0 and "notice" not in err, err
    code, err = _cli(capsys, "export", f"checkpoint={run}", f"out={tmp_path / 'backbone.pt'}")
    assert code == 0, err
    assert torch.load(tmp_path / "backbone.pt", weights_only=True)["conv1.weight"].shape[0] == 8

    code, err = _cli(capsys, "train", f"trainer.resume={run}")
    assert code == 0, err
    a, b = _weights(straight), _weights(run)
    assert a.keys() == b.keys() and {"queue.keys", "queue.ptr"} <= a.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)  # weights, queue, BN: bit for bit
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name not in ("last.pt", "prev.pt")]
    assert leftovers == []  # the temporaries the kill left are gone
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]  # each step logged once, none lost


def test_prev_is_a_copy_where_hard_links_are_not_supported(tmp_path, monkeypatch):
    def no_links(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    last, prev = tmp_path / "last.pt", tmp_path / "prev.pt"
    for step in range(3):
        save_atomic({"step": torch.tensor(step)}, last, keep_previous=prev)
    assert int(torch.load(last)["step"]) == 2 and int(torch.load(prev)["step"]) == 1
    assert os.stat(last).st_ino != os.stat(prev).st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]


def test_a_torn_last_is_never_kept_as_prev(tmp_path):
    last, prev = tmp_path / "last.pt", tmp_path / "prev.pt"
    save_atomic({"step": torch.tensor(1)}, last, keep_previous=prev)
    save_atomic({"step": torch.tensor(2)}, last, keep_previous=prev)
    last.write_bytes(last.read_bytes()[:100])  # a torn last.pt (a disk that lost a write)
    save_atomic({"step": torch.tensor(3)}, last, keep_previous=prev)
    assert int(torch.load(last)["step"]) == 3 and int(torch.load(prev)["step"]) == 1


def _one_notice(stderr: str, step: int) -> None:
    notices = [line for line in stderr.splitlines() if line.startswith("sslkit: notice:")]
    assert len(notices) == 1, stderr[-3000:]
    assert "last.pt is missing" in notices[0] and "prev.pt" in notices[0] and f"(step {step})" in notices[0]


def test_a_run_without_last_resumes_evaluates_and_exports_through_the_cli(killed_runs, tmp_path):
    """The issue's run directory: prev.pt, a stale temporary, and no last.pt."""
    _, snapshots = killed_runs
    run = tmp_path / "run"
    shutil.copytree(snapshots["temp fsynced"], run)
    (run / ckpt.LAST).unlink()
    step = ckpt.load(run / ckpt.PREV)["state"]["step"]
    assert step == 1 and any(p.name.startswith(".last.pt.") for p in (run / "checkpoints").iterdir())
    res = run_cli("eval", "knn", f"checkpoint={run}", *EVAL)
    assert res.returncode == 0, res.stderr[-3000:]
    _one_notice(res.stderr, step)
    res = run_cli("export", f"checkpoint={run}", f"out={tmp_path / 'b.pt'}")
    assert res.returncode == 0, res.stderr[-3000:]
    _one_notice(res.stderr, step)
    assert (tmp_path / "b.pt").is_file()
    res = run_cli("train", f"trainer.resume={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    _one_notice(res.stderr, step)
    assert ckpt.load(run)["state"]["step"] == 4
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt", "prev.pt"]


def _resolved(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, str]:
    opened = ckpt.open_checkpoint(path)
    return opened.file, opened.run_dir, capsys.readouterr().err


def test_one_resolution_for_a_run_dir_a_last_and_a_prev(killed_runs, tmp_path, capsys):
    _, snapshots = killed_runs
    run = tmp_path / "run"
    shutil.copytree(snapshots["prev renamed"], run)
    last, prev = run / ckpt.LAST, run / ckpt.PREV
    assert _resolved(run, capsys) == (last, run, "")
    assert _resolved(last, capsys) == (last, run, "")
    assert _resolved(prev, capsys) == (prev, run, "")
    last.unlink()
    for given in (run, last):
        file, run_dir, err = _resolved(given, capsys)
        assert (file, run_dir) == (prev, run) and err.count("\n") == 1 and "(step 2)" in err
    prev.write_bytes(b"torn")
    with pytest.raises(Exception, match="previous checkpoint cannot be used either"):
        ckpt.open_checkpoint(run)



def test_a_torn_metrics_line_breaks_neither_resume_nor_plots_nor_report(killed_runs, tmp_path, capsys, monkeypatch):
    from sslkit.evaluation.plots import plot_training
    from sslkit.evaluation.report import build_report

    _, snapshots = killed_runs
    run = tmp_path / "run"
    shutil.copytree(snapshots["temp fsynced"], run)  # last.pt at step 2; metrics hold steps 1-3
    (run / ".config.yaml.k1ll3d00").write_text("seed: 0\n")  # a killed config write's temporary
    with (run / "metrics.jsonl").open("ab") as f:  # killed inside a line, inside a UTF-8 character
        f.write(b'{"time": 1.0, "step": 4, "note": "\xe2\x82')
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    assert plot_training(run).is_file()
    html, counts = build_report(run)
    assert counts["pictures"] >= 1 and "sslkit run" in html

    config_before = (run / "config.yaml").read_text()
    seen: dict[str, str] = {}
    real_replace = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).name == "config.yaml":  # the instant before the rename: old text whole, new text whole
            seen["old"], seen["new"] = Path(dst).read_text(), Path(src).read_text()
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    code, err = _cli(capsys, "train", f"trainer.resume={run}")
    assert code == 0, err
    assert seen == {"old": config_before, "new": (run / "config.yaml").read_text()}
    # the torn line is gone, not glued to the next record; every step logged once
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
    assert (run / "metrics.jsonl").read_bytes().count(b"\n") == 4
    assert not [p.name for p in run.rglob(".*")]


def test_the_feature_cache_deletes_what_a_killed_writer_left_and_nothing_younger(tmp_path, monkeypatch):
    from sslkit.evaluation import features as F
    from tests.evaluation.test_eval_features import DATA, toy

    ds = toy(12)
    monkeypatch.setattr("sslkit.data.build_dataset", lambda data, split, subset: ds.subset(subset))
    key = F.cache_key("pixels", "train", 10, DATA, None)
    old, young = tmp_path / f".{key}.pt.k1ll3d00", tmp_path / f".{key}.pt.wr1t1ng0"
    old.write_bytes(b"half of a killed write")
    young.write_bytes(b"another evaluation writing now")
    os.utime(old, (1e9, 1e9))
    feats = F.load_features("pixels", "train", 10, DATA, cache_dir=tmp_path)
    assert feats.path is not None and feats.path.is_file()
    assert not old.exists() and young.exists()
