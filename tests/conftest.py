"""Shared fixtures: a tiny BN encoder, subprocess CLI runner, and the Fashion-MNIST guard."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

# Property tests (hypothesis): a bounded number of small examples, no per-example deadline (a loaded
# machine is slow, not wrong). `HYPOTHESIS_PROFILE=ci` draws the same examples on every run (CI,
# `make mutation`); `=thorough` draws many more.
settings.register_profile("default", max_examples=25, deadline=None, database=None)
settings.register_profile("ci", max_examples=25, deadline=None, database=None, derandomize=True)
settings.register_profile("thorough", max_examples=500, deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


class TinyEncoder(nn.Module):
    """conv-BN-ReLU-pool: a backbone with BatchNorm that runs in milliseconds."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: a second thread only adds contention on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_encoder() -> TinyEncoder:
    torch.manual_seed(0)
    return TinyEncoder()


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`python -m sslkit ARGS` in a subprocess, as a user would run it."""
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "sslkit", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=timeout)


needs_fashion = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed (make data)")


def sslkit(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`python -m sslkit ARGS` as a user runs it (single-threaded: small models, shared CPUs)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "sslkit", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=timeout)


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return sslkit


TRAIN_SMALL = ("method=mocov2", "data.subset=256", "data.batch_size=64", "method.queue_size=256",
               "head.hidden_dim=64", "trainer.log_every_steps=1")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny MoCo v2 run (2 epochs of 4 steps) with the kNN monitor on after every epoch."""
    if not FASHION.exists():
        pytest.skip("Fashion-MNIST not installed (make data)")
    out = tmp_path_factory.mktemp("eval") / "run"
    res = sslkit("train", *TRAIN_SMALL, "trainer.epochs=2", "trainer.monitor_every_epochs=1",
                 "trainer.monitor_subset=500", f"out={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    return out
