"""torch.distributed set-up for processes started by torchrun, and starting torchrun for the user."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from sslkit.devices import World, pick_device
from sslkit.engine.hardware import cores_per_process
from sslkit.errors import ConfigError


def init_world(device_spec: str = "auto") -> World:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_spec, local_rank)
    if size > 1 and device.type == "cuda" and device.index != local_rank:
        # e.g. device=cuda:0 under torchrun: every rank on one GPU, which NCCL rejects obscurely
        raise ConfigError(f"device='{device_spec}' puts every process on one GPU; under torchrun use "
                          "device=auto or device=cuda (rank i uses GPU LOCAL_RANK)")
    if size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return World(rank, local_rank, size, device)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch_torchrun(nproc: int, argv: list[str], extra_env: dict[str, str] | None = None) -> int:
    """Re-run this command under `torchrun --standalone --nproc_per_node=nproc` and wait for it.

    torchrun is started as `python -m torch.distributed.run` with this interpreter, so the workers
    use the same environment as `sslkit` even when another `torchrun` comes first on PATH.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sslkit", *argv]
    env = dict(os.environ,
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(cores_per_process(nproc))),
               # torchrun passes these on to every worker once; the workers stop at an agreed step
               TORCHELASTIC_SIGNALS_TO_HANDLE="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", **(extra_env or {}))
    # torchrun runs in its own session, so a terminal's Ctrl-C reaches it once, through us, not twice
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    forward = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    previous = {s: signal.signal(s, lambda signum, frame: proc.send_signal(signum)) for s in forward}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
