"""Evaluation tests: one torch thread in-process (tiny ops; robust on a loaded 2-core machine) and a
CLI runner for real `python -m sslkit` subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    from tests.conftest import FASHION

    if not FASHION.exists():
        pytest.skip("Fashion-MNIST not installed (make data)")
    out = tmp_path_factory.mktemp("eval") / "run"
    res = sslkit("train", *TRAIN_SMALL, "trainer.epochs=2", "trainer.monitor_every_epochs=1",
                 "trainer.monitor_subset=500", f"out={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    return out
