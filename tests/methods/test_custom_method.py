"""The docs' two plug-in routes, run as a user would: each code block, through `sslkit train` — SimSiam
through the general `SSLMethod`, an in-batch InfoNCE method through `ContrastiveMethod`."""

import re
from pathlib import Path

import pytest

from sslkit.registry import METHODS
from tests.conftest import ROOT, needs_fashion, run_cli

pytestmark = needs_fashion
DOC = ROOT / "docs" / "adding_a_method.md"
SMALL = ["data.subset=64", "data.batch_size=16", "trainer.max_steps=2", "trainer.progress=lines",
         "trainer.log_every_steps=1", "head.hidden_dim=64", "head.out_dim=32", "+method.pred_dim=16"]


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    simsiam, inbatch = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[:2]
    (tmp_path / "my_simsiam.py").write_text(simsiam)
    (tmp_path / "my_inbatch.py").write_text(inbatch)
    return tmp_path


def _module(user_dir: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_doc_{name}", user_dir / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert re.search(r"^siam\s+siamese\s+Chen & He 2021, arXiv 2011.10566\s+Siamese encoder", listed.stdout, re.M)
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


def test_the_general_route_declares_a_fixed_predictor_rate(user_dir, monkeypatch):
    """SimSiam's `param_rules` reach the optimizer: over several scheduled steps the predictor's rate
    stays at its start while every other group follows the cosine."""
    import torch

    from sslkit.engine.optim import build_optimizer
    from sslkit.engine.schedule import build_scheduler
    from sslkit.methods import SSLMethod
    from tests.conftest import TinyEncoder

    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))  # the doc's @register_method, undone after
    doc = _module(user_dir, "my_simsiam")
    assert issubclass(doc.SimSiam, SSLMethod) and doc.SimSiam.family == "siamese"
    method = doc.SimSiam(TinyEncoder(8), 8, {"kind": "mlp", "hidden_dim": 16, "out_dim": 8}, pred_dim=4)
    opt = build_optimizer(method, {"name": "sgd", "lr": 0.1, "lr_scaling": "none"}, 256, method.param_rules())
    sched = build_scheduler(opt, {"schedule": "cosine", "warmup_epochs": 0}, 10, 10)
    pred = {id(p) for p in method.predictor.parameters()}
    fixed = [g for g in opt.param_groups if {id(p) for p in g["params"]} <= pred]
    rest = [g for g in opt.param_groups if not {id(p) for p in g["params"]} & pred]
    assert fixed and rest
    for step in range(1, 8):
        x = torch.rand(4, 3, 6, 6)
        method([x, x.flip(-1)]).loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        assert all(g["lr"] == 0.1 for g in fixed)
        expected = 0.1 * 0.5 * (1 + __import__("math").cos(__import__("math").pi * step / 10))
        assert all(abs(g["lr"] - expected) < 1e-12 for g in rest), step


def test_the_contrastive_route_is_nt_xent(user_dir, monkeypatch):
    """The ContrastiveMethod example's loss equals NT-Xent written out: -log softmax over the 2B-1 others."""
    import torch
    import torch.nn.functional as F

    from sslkit.methods import ContrastiveMethod
    from tests.conftest import TinyEncoder

    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    doc = _module(user_dir, "my_inbatch")
    torch.manual_seed(0)
    method = doc.InBatch(TinyEncoder(8), 8, {"kind": "mlp", "hidden_dim": 16, "out_dim": 8}, temperature=0.5)
    assert isinstance(method, ContrastiveMethod) and method.family == "contrastive"
    x1, x2 = torch.rand(6, 3, 6, 6), torch.rand(6, 3, 6, 6)
    loss = method([x1, x2]).loss
    z = torch.cat([F.normalize(method.head(method.backbone(v)), dim=1) for v in (x1, x2)])
    sim = z @ z.T / 0.5
    sim.fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(6, 12), torch.arange(0, 6)])
    torch.testing.assert_close(loss, F.cross_entropy(sim, positives))


def test_the_contrastive_route_trains_through_the_cli(user_dir, tmp_path):
    out = tmp_path / "inbatch"
    res = _env_run(user_dir, "train", "method=my_inbatch:InBatch", *SMALL[:-1], "method.temperature=0.3",
                   f"out={out}")
    assert res.returncode == 0, res.stderr
    assert "step 2/2" in res.stdout
