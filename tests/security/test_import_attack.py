"""The import attack of issue 26: a run whose checkpoint (and config.yaml) names the method
`pwnmod:X`, run from a directory that holds `pwnmod.py` (which writes a marker file when imported),
under `python -m sslkit` (the working directory is on sys.path). No command may import it: resume
refuses in one line (exit 2); eval, export and report never resolve the method and do their work."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sslkit.app.train import train
from sslkit.config import compose, to_yaml
from sslkit.files import save_atomic
from tests.conftest import sslkit
from tests.idx_files import write_idx_dataset

EVIL = "pwnmod:X"
PWNMOD = """from pathlib import Path
Path(__file__).with_name("MARKER").write_text("imported")

class X:
    pass
"""
TINY = ["data=fashion_mnist", "data.batch_size=16", "data.image_size=28", "method.queue_size=32",
        "head.hidden_dim=32", "head.out_dim=16", "trainer.max_steps=1", "trainer.precision=32",
        "trainer.channels_last=false", "trainer.progress=none", "trainer.monitor_every_epochs=0"]
EVAL = ["eval.train_subset=40", "eval.test_subset=20", "data.num_workers=0"]


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with pwnmod.py and a tampered run `evil/` (checkpoint and config.yaml)."""
    work = tmp_path_factory.mktemp("attack")
    data = work / "data"
    write_idx_dataset(data, n_train=64, n_test=32)
    run = train(compose([*TINY, f"data.root={data}", f"out={work / 'run'}"]))
    evil = work / "evil"
    shutil.copytree(run, evil)
    for file in (evil / "checkpoints" / "last.pt", evil / "checkpoints" / "prev.pt"):
        if file.is_file():
            state = torch.load(file, weights_only=True)
            cfg = OmegaConf.create(state["config"])
            cfg.method.name = EVIL
            state["config"] = to_yaml(cfg)
            save_atomic(state, file)
    cfg = OmegaConf.load(evil / "config.yaml")
    cfg.method.name = EVIL
    (evil / "config.yaml").write_text(to_yaml(cfg))
    (work / "pwnmod.py").write_text(PWNMOD)
    return work


def _run(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    res = sslkit(*args, cwd=work)
    assert not (work / "MARKER").exists(), f"sslkit {' '.join(args)} imported pwnmod: {res.stderr[-2000:]}"
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return res


def test_the_module_would_run_if_imported(attack):
    """The marker is a real tripwire: importing pwnmod from that directory writes it."""
    res = subprocess.run(["python3", "-c", "import pwnmod"], cwd=attack, capture_output=True, text=True)
    assert res.returncode == 0 and (attack / "MARKER").is_file()
    (attack / "MARKER").unlink()


def test_resume_refuses_a_checkpoint_that_names_a_module(attack):
    res = _run(attack, "train", "trainer.resume=evil")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sslkit: error: method 'pwnmod:X' comes from a file"), lines
    assert "method.name=pwnmod:X" in lines[0]  # how to resume a run of one's own plug-in
    # a lone checkpoint file, not only a run directory
    res = _run(attack, "train", f"trainer.resume={attack / 'evil' / 'checkpoints' / 'last.pt'}")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


EVALS = {"knn": ["eval.k=[5]"], "linear": ["eval.mode=fast", "eval.fast_epochs=1"], "retrieval": [], "embedding": []}
SLOW = pytest.mark.slow  # each is one more `python -m sslkit` start (~10 s on a loaded machine)


@pytest.mark.parametrize("evaluation", [e if e == "knn" else pytest.param(e, marks=SLOW) for e in EVALS])
def test_eval_never_resolves_the_method(attack, evaluation):
    res = _run(attack, "eval", evaluation, "checkpoint=evil", *EVAL, *EVALS[evaluation], f"out={attack / evaluation}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(res.stdout.strip().splitlines()) == 1


@SLOW
def test_detect_never_resolves_the_method(attack):
    """No detection data here: the checkpoint loads, then one line about the data; nothing imported."""
    res = _run(attack, "eval", "detect", "checkpoint=evil", f"data.root={attack / 'no_voc'}", "trainer.epochs=1",
               f"out={attack / 'detect'}")
    assert res.returncode in (0, 2), res.stderr[-2000:]
    assert len([line for line in res.stderr.splitlines() if line.startswith("sslkit: error")]) <= 1


def test_export_and_report_never_resolve_the_method(attack):
    res = _run(attack, "export", "checkpoint=evil", f"out={attack / 'backbone.pt'}")
    assert res.returncode == 0 and (attack / "backbone.pt").is_file(), res.stderr
    res = _run(attack, "report", "checkpoint=evil", f"out={attack / 'report.html'}")
    assert res.returncode == 0, res.stderr
    assert "pwnmod:X" in (attack / "report.html").read_text()  # shown as text, never imported
