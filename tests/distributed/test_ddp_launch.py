"""`sslkit train trainer.devices=N` re-runs the command under torchrun with this interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sslkit.engine import distributed, hardware

pytestmark = pytest.mark.distributed


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    seen: list[tuple[list[str], dict[str, str]]] = []

    class FakePopen:
        def __init__(self, cmd: list[str], env: dict[str, str], start_new_session: bool = False) -> None:
            assert start_new_session  # signals reach torchrun once, through sslkit
            seen.append((cmd, env))

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    return seen


def test_launch_uses_this_interpreter_and_a_standalone_rendezvous(calls, monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert distributed.launch_torchrun(4, ["train", "trainer.devices=4", "data.batch_size=64"]) == 0
    cmd, env = calls[0]
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                   "-m", "sslkit", "train", "trainer.devices=4", "data.batch_size=64"]
    assert env["OMP_NUM_THREADS"] == "2"  # 8 usable cores over 4 processes
    assert "SIGUSR1" in env["TORCHELASTIC_SIGNALS_TO_HANDLE"].split(",")  # torchrun passes SIGUSR1 on


def test_launch_keeps_a_user_thread_count(calls, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    distributed.launch_torchrun(2, ["train"])
    assert calls[0][1]["OMP_NUM_THREADS"] == "3"
    assert hardware.cores_per_process(64) == 1


def test_single_process_world_needs_no_group(monkeypatch) -> None:
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    world = distributed.init_world("cpu")
    assert (world.rank, world.size, world.is_main, world.device.type) == (0, 1, True, "cpu")
    assert not distributed.dist.is_initialized()
