"""The docs' SimSiam example, run as a user would: its code block, through `sslkit train`."""

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, needs_fashion, run_cli

pytestmark = needs_fashion
DOC = ROOT / "docs" / "adding_a_method.md"
SMALL = ["data.subset=64", "data.batch_size=16", "trainer.max_steps=2", "trainer.progress=lines",
         "trainer.log_every_steps=1", "head.hidden_dim=64", "head.out_dim=32", "+method.pred_dim=16"]


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    (tmp_path / "my_simsiam.py").write_text(code)
    return tmp_path


def _env_run(user_dir: Path, *args: str):
    import os

    os.environ["PYTHONPATH"] = f"{user_dir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    try:
        return run_cli(*args)
    finally:
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]


def test_doc_example_is_about_40_lines(user_dir):
    lines = (user_dir / "my_simsiam.py").read_text().strip().splitlines()
    assert 30 <= len(lines) <= 45


def test_doc_example_trains_two_steps_through_the_cli(user_dir, tmp_path):
    out = tmp_path / "run"
    res = _env_run(user_dir, "train", "method=my_simsiam:SimSiam", *SMALL, f"out={out}")
    assert res.returncode == 0, res.stderr
    assert "step 2/2" in res.stdout
    from sslkit.engine.checkpoint import load

    saved = load(out)
    assert saved["state"]["step"] == 2
    assert any(k.startswith("predictor.") for k in saved["method"])
    assert "pred_dim: 16" in saved["config"]


def test_entry_point_registration(user_dir, tmp_path):
    dist = user_dir / "my_simsiam-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-simsiam\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[sslkit.methods]\nsiam = my_simsiam:SimSiam\n")
    listed = _env_run(user_dir, "methods")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^siam\s+Siamese encoder", listed.stdout, re.M)
    res = _env_run(user_dir, "train", "method=siam", *SMALL, f"out={tmp_path / 'ep'}")
    assert res.returncode == 0, res.stderr


def test_module_path_errors_are_one_line(user_dir):
    res = _env_run(user_dir, "train", "method=my_simsiam:Nope")
    assert res.returncode == 2
    assert res.stderr.strip() == ("sslkit: error: method 'my_simsiam:Nope': module 'my_simsiam' "
                                  "has no attribute 'Nope'")
    res = _env_run(user_dir, "train", "method=no_such_module:X")
    assert res.returncode == 2 and "cannot import module 'no_such_module'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
