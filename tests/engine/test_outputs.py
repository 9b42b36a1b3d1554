"""Run naming: the one rule for runs/<time>_<method>_<backbone> and the other default folders."""

from __future__ import annotations

import re
from pathlib import Path

from sslkit.engine.outputs import backbone_name, default_run_dir, method_slug, timestamped


def test_run_names():
    assert method_slug("my_pkg.simsiam:SimSiam") == "SimSiam" and method_slug("mocov2") == "mocov2"
    assert backbone_name({"name": "timm", "timm_name": "vit_tiny"}) == "vit_tiny"
    assert backbone_name({"name": "resnet18", "timm_name": None}) == "resnet18"
    path = default_run_dir("my_pkg.simsiam:SimSiam", {"name": "resnet18"})
    assert path.parent == Path("runs") and re.fullmatch(r"\d{8}-\d{6}_SimSiam_resnet18", path.name)
    assert re.fullmatch(r"\d{8}-\d{6}_batch_compare", timestamped("batch_compare").name)


def test_claiming_a_run_dir_refuses_another_run_and_overwrite_removes_only_run_files(tmp_path):
    import pytest

    from sslkit.engine.outputs import claim_run_dir, is_run_dir
    from sslkit.errors import ConfigError

    empty = tmp_path / "empty"
    empty.mkdir()
    assert not is_run_dir(empty) and not is_run_dir(tmp_path / "missing") and claim_run_dir(empty, False) == empty
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert not is_run_dir(not_a_dir)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"0")
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "notes.txt").write_text("mine")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (run / "tb").symlink_to(outside, target_is_directory=True)
    assert is_run_dir(run)
    with pytest.raises(ConfigError, match="already holds a run; continue it with trainer.resume="):
        claim_run_dir(run, False)
    assert claim_run_dir(run, True) == run
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # run files gone, the user's file kept
    assert outside.is_dir()  # a linked folder is unlinked, not emptied through the link
