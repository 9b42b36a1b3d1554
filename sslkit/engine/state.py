"""Where a run stands (epoch, step), and the checkpoint that holds it with everything else."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from sslkit.engine import checkpoint as ckpt
from sslkit.files import save_atomic
from sslkit.methods.base import SSLMethod


@dataclass
class TrainState:
    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0


def save_checkpoint(run_dir: Path, method: SSLMethod, optimizer: Optimizer, scheduler: LRScheduler,
                    scaler: torch.amp.GradScaler | None, state: TrainState, extra: dict[str, Any]) -> Path:
    """`<run dir>/checkpoints/last.pt`, atomically, the old one kept as prev.pt. `encoder` holds the weights
    of the network the method declares for evaluation and export (`SSLMethod.encoder()`)."""
    path = run_dir / ckpt.LAST
    save_atomic({
        "format": ckpt.FORMAT, "version": ckpt.VERSION, **extra,
        "method": method.state_dict(), "encoder": method.encoder().state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": ckpt.rng_state(), "state": asdict(state),
    }, path, keep_previous=run_dir / ckpt.PREV)
    ckpt.remove_stale_temps(run_dir)
    return path


def restore(checkpoint: dict[str, Any], method: SSLMethod, optimizer: Optimizer, scheduler: LRScheduler,
            scaler: torch.amp.GradScaler | None) -> TrainState:
    """Load a checkpoint written by `save_checkpoint` into freshly built objects."""
    method.load_state_dict(checkpoint["method"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler") is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    ckpt.set_rng_state(checkpoint["rng"])
    return TrainState(**checkpoint["state"])
