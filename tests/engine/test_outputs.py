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
