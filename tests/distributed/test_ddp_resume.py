"""`sslkit train trainer.devices=2` end to end (the real CLI, which starts torchrun with 2 gloo workers):
rank 0 alone logs and checkpoints, and `trainer.resume=<run dir>` continues from the checkpoint's step."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow,  # ~30 s of gloo processes and CLI runs
              pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists()
                                 and not os.environ.get("SSLKIT_DATA"), reason="Fashion-MNIST not installed")]

TINY = ["method=mocov2", "data=fashion_mnist", "data.subset=256", "data.batch_size=32", "trainer.max_steps=3",
        "method.queue_size=128", "trainer.log_every_steps=1", "trainer.checkpoint_every_steps=2",
        "trainer.progress=lines", "device=cpu"]
BIN = Path(sys.executable).parent


def command(name: str) -> list[str]:
    """The installed console script next to this interpreter, else its `python -m` form."""
    script = BIN / name
    module = {"sslkit": "sslkit", "torchrun": "torch.distributed.run"}[name]
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def run(cmd: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    drop = ("OMP_NUM_THREADS", "WORLD_SIZE", "RANK", "LOCAL_RANK")  # as from a plain shell
    env = {k: v for k, v in os.environ.items() if k not in drop}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert proc.returncode == 0, \
        f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """3 steps of MoCo v2 / ResNet-18 on 2 CPU processes: `sslkit train trainer.devices=2 ...`."""
    cwd = tmp_path_factory.mktemp("ddp_cli")
    proc = run([*command("sslkit"), "train", *TINY, "trainer.devices=2", f"out={cwd / 'run'}"], cwd)
    return cwd / "run", proc


def test_rank0_alone_writes_one_checkpoint_and_one_log(first_run) -> None:
    run_dir, proc = first_run
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt", "prev.pt"]
    assert not (run_dir.parent / "runs").exists()
    ckpt = checkpoint(run_dir)
    assert ckpt["state"]["step"] == 3 and int(ckpt["method"]["queue.ptr"]) == (3 * 32) % 128
    assert steps(run_dir) == [1, 2, 3]  # one metrics line per step: no second writer
    assert len(list((run_dir / "tb").iterdir())) == 1
    out = proc.stdout
    assert out.count("sslkit: mocov2 on fashion_mnist (256 images), 2 x cpu, batch 32") == 1, out
    assert out.count("step 1/3 ") == 1 and out.count("trained 3 steps") == 1, out
    assert (run_dir / "backbone.pt").is_file()


def test_resume_continues_from_the_checkpoint_step(first_run, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(first_run[0], run_dir)  # leave the fixture's run as it was for the other tests
    proc = run([*command("sslkit"), "train", f"trainer.resume={run_dir}", "trainer.max_steps=6",
                "trainer.devices=2"], tmp_path)
    assert "step 4/6 " in proc.stdout and "step 1/6 " not in proc.stdout and "step 3/6 " not in proc.stdout
    assert proc.stdout.count("trained 3 steps (now at step 6)") == 1
    assert steps(run_dir) == [1, 2, 3, 4, 5, 6]
    ckpt = checkpoint(run_dir)
    assert ckpt["state"] == {"epoch": 0, "step": 6, "batch_in_epoch": 6}
    assert int(ckpt["method"]["queue.ptr"]) == (6 * 32) % 128  # 3 more pushes of 2 x 16 gathered keys
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt", "prev.pt"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_torchrun_module_form(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node=2 -m sslkit train ...` (no trainer.devices): the same 2-rank training."""
    rendezvous = ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]  # not the default 29500
    proc = run([*command("torchrun"), "--nproc_per_node=2", *rendezvous, "-m", "sslkit", "train", *TINY,
                f"out={tmp_path / 'run'}"], tmp_path)
    assert proc.stdout.count("2 x cpu, batch 32") == 1 and proc.stdout.count("trained 3 steps") == 1
    assert steps(tmp_path / "run") == [1, 2, 3]
    assert checkpoint(tmp_path / "run")["state"]["step"] == 3
