"""Run a test's worker function in N gloo processes on the CPU, as torchrun would start them.

A worker is a module-level function `worker(rank, world, out_dir, *args)` in a test file. Each rank
is a fresh `python conftest.py` subprocess (MASTER_ADDR=127.0.0.1, a free port, OMP_NUM_THREADS=1)
that loads the test file by path, joins the group through `sslkit.engine.distributed.init_world`,
and runs the worker, which saves its results to `out_dir/rank{r}.pt` for the test to compare.
Subprocesses, not `mp.spawn`, so nothing depends on pytest's import mode; a deadline kills a hang.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(world: int, threads: int = 1) -> dict[str, str]:
    """os.environ plus a single-node rendezvous on a free local port and `threads` CPU threads each."""
    return dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world),
                OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")


def run_workers(fn: Callable[..., Any], out_dir: Path, *args: Any, world: int = 2,
                timeout: float = 120.0) -> None:
    """Run `fn(rank, world, out_dir, *args)` in `world` processes; fail with the failing rank's stderr."""
    env = worker_env(world)
    spec = json.dumps([fn.__code__.co_filename, fn.__name__, str(out_dir), list(args)])
    procs = []
    for rank in range(world):
        logs = (out_dir / f"rank{rank}.log").open("w")
        rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank))
        proc = subprocess.Popen([sys.executable, __file__, spec], stdout=logs, stderr=subprocess.STDOUT,
                                env=rank_env)
        procs.append((proc, logs))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p, _ in procs):
            failed = [r for r, (p, _) in enumerate(procs) if p.returncode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for p, logs in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            logs.close()
    bad = [r for r, (p, _) in enumerate(procs) if p.returncode != 0]
    if bad:
        text = "\n".join(f"--- rank {r} (exit {procs[r][0].returncode}) ---\n"
                         + (out_dir / f"rank{r}.log").read_text()[-4000:] for r in bad)
        pytest.fail(f"{fn.__name__} failed in {world} gloo processes (timeout {timeout:.0f}s):\n{text}")


def load_ranks(out_dir: Path, world: int = 2) -> list[dict[str, Any]]:
    """What each rank's worker saved as `out_dir/rank{r}.pt`."""
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(world)]


@pytest.fixture(scope="session")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict[str, Any]]]:
    """`ddp(worker, *args, world=2)`: run the worker in gloo processes and return each rank's results."""

    def run(fn: Callable[..., Any], *args: Any, world: int = 2,
            timeout: float = 120.0) -> list[dict[str, Any]]:
        out = tmp_path_factory.mktemp(fn.__name__)
        run_workers(fn, out, *args, world=world, timeout=timeout)
        return load_ranks(out, world)

    return run


def _child(spec: str) -> None:
    path, name, out_dir, args = json.loads(spec)
    torch.set_num_threads(1)
    module_spec = importlib.util.spec_from_file_location("_ddp_test_module", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    from sslkit.engine.distributed import init_world, shutdown

    world = init_world("cpu")  # the same set-up `sslkit train` does under torchrun: gloo on the CPU
    assert world.size == int(os.environ["WORLD_SIZE"]) and world.device.type == "cpu"
    try:
        getattr(module, name)(world.rank, world.size, Path(out_dir), *args)
    finally:
        shutdown()


if __name__ == "__main__":
    _child(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (seconds with torch loaded); results are already on disk
