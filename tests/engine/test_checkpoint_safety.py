"""Checkpoints load with weights_only=True: a hostile file runs no code; old files upgrade explicitly."""

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from sslkit.engine import checkpoint as ckpt
from sslkit.errors import CheckpointError
from sslkit.files import save_atomic
from tests.app.test_cli_errors import _one_line_error
from tests.conftest import run_cli

EVIL = """import os, torch
class E:
    def __reduce__(self):
        return (os.system, ('touch pwned',))
torch.save({'format': 'sslkit-checkpoint', 'x': E()}, 'evil.pt')
"""


@pytest.fixture
def evil(tmp_path):
    subprocess.run([sys.executable, "-c", EVIL], cwd=tmp_path, check=True)
    assert (tmp_path / "evil.pt").is_file() and not (tmp_path / "pwned").exists()
    return tmp_path


@pytest.mark.parametrize("args", [("eval", "knn", "checkpoint=evil.pt"), ("export", "checkpoint=evil.pt"),
                                  ("train", "trainer.resume=evil.pt")])
def test_malicious_checkpoint_runs_no_code(evil, args):
    res = run_cli(*args, cwd=evil)
    _one_line_error(res, "refusing to load evil.pt", "sslkit checkpoint upgrade")
    assert not (evil / "pwned").exists()


def test_loading_in_process_refuses_too(evil):
    with pytest.raises(CheckpointError, match="refusing to load"):
        ckpt.load(evil / "evil.pt")
    assert not (evil / "pwned").exists()


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # a cached Gaussian in numpy's state
    state = ckpt.rng_state()
    expected = _draws()
    save_atomic({"rng": state}, tmp_path / "r.pt")
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    assert _draws() == expected


def test_upgrade_converts_a_version_1_checkpoint(tmp_path):
    np.random.seed(5), random.seed(6)
    old_rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    expected = _draws()
    file = tmp_path / "old.pt"
    torch.save({"format": ckpt.FORMAT, "version": 1, "config": "seed: 0\n", "rng": old_rng,
                "state": {"epoch": 0, "step": 1, "batch_in_epoch": 1}}, file)
    _one_line_error(run_cli("export", f"checkpoint={file}"), "sslkit checkpoint upgrade")

    res = run_cli("checkpoint", "upgrade", str(file))
    assert res.returncode == 0, res.stderr
    assert "can run code" in res.stderr and "upgraded" in res.stdout
    assert (tmp_path / "old.pt.v1.bak").is_file()
    new = ckpt.load(file)
    assert new["version"] == ckpt.VERSION and new["state"]["step"] == 1
    ckpt.set_rng_state(new["rng"])
    assert _draws() == expected


def test_upgrade_of_a_missing_file_is_one_line(tmp_path):
    _one_line_error(run_cli("checkpoint", "upgrade", str(tmp_path / "nope.pt")), "does not exist")


def test_a_gpu_runs_rng_state_restores_on_a_machine_without_cuda(monkeypatch):
    """A run saved on a GPU and resumed on a CPU: the CUDA generators' states are skipped, the rest restored."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    state = ckpt.rng_state()
    expected = torch.rand(3)
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # what get_rng_state_all() saved on the GPU machine
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda _: pytest.fail("set a CUDA state without CUDA"))
    ckpt.set_rng_state(state)
    torch.testing.assert_close(torch.rand(3), expected)
