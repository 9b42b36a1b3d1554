"""`sslkit eval detect` end to end on a tiny mosaic set, and its one-line errors."""

from __future__ import annotations

import json

import pytest

from sslkit.app.cli import main
from tests.conftest import needs_fashion

TINY = ["eval.init=random", "eval.mosaic.canvas=64", "eval.mosaic.train_size=8", "eval.mosaic.test_size=4",
        "eval.mosaic.max_objects=2", "eval.steps=2", "eval.batch_size=2", "eval.min_size=64", "eval.max_size=64",
        "eval.anchor_sizes=[8,16,32,64,128]", "eval.proposals=50", "eval.rois_per_image=32", "eval.box_head_dim=64",
        "eval.warmup_steps=1", "eval.checkpoint_every_steps=1"]


@needs_fashion
def test_eval_detect_writes_json_and_a_rerun_resumes(tmp_path, capsys):
    out = tmp_path / "det"
    assert main(["eval", "detect", *TINY, f"out={out}"]) == 0
    first = capsys.readouterr().out
    r = json.loads((out / "detect.json").read_text())
    assert "detect random: AP50=" in first and str(out / "detect.json") in first
    assert r["init"] == "random" and r["steps"] == 2 and r["train_size"] == 8 and r["test_size"] == 4
    assert r["num_classes"] == 10 and r["head"] == "c4" and r["bn"] == "train"  # the paper's recipe by default
    for key in ("AP", "AP50", "AP75"):
        assert r[key] == pytest.approx(r["torchmetrics"][key], abs=1e-3)
    assert (out / "detect_ckpt.pt").is_file()
    assert main(["eval", "detect", *TINY, f"out={out}"]) == 0  # finished run: resumes at step 2, trains nothing
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((out / "detect.json").read_text())["AP50"] == r["AP50"]


@pytest.mark.parametrize(("args", "message"), [
    (["eval.dataset=voc", "eval.init=random", "eval.root=/nonexistent"], "VOC 2007 trainval not found"),
    (["eval.dataset=coco", "eval.init=random"], "eval.dataset=coco needs eval.train_json"),
    ([], "needs checkpoint="),
    (["eval.init=imagenet"], "eval.init=imagenet; valid: checkpoint, random, supervised"),
    (["eval.init=random", "eval.bn=sync"], "eval.bn=sync synchronises BN across torchrun processes"),
])
def test_eval_detect_user_errors_are_one_line(args, message, capsys, tmp_path):
    assert main(["eval", "detect", *args, f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("sslkit: error:")
