"""Checkpoints: one file holding everything needed to continue exactly, written atomically."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslkit.errors import CheckpointError

FORMAT = "sslkit-checkpoint"
LAST = Path("checkpoints") / "last.pt"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over `path`:
    a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file from a run directory or a file path, or a one-line CheckpointError."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / LAST).is_file():
            return p / LAST
        raise CheckpointError(f"{p} is a directory without {LAST}; pass a run directory or a .pt checkpoint")
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist; pass a run directory (runs/...) or a .pt file")
    return p


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load an sslkit checkpoint on the CPU."""
    file = resolve(path)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or foreign file
        raise CheckpointError(f"cannot read checkpoint {file}: {str(exc).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not an sslkit checkpoint (use `sslkit export` files with torchvision/timm)")
    return ckpt


def run_dir_of(file: Path) -> Path:
    """The run directory a checkpoint file belongs to."""
    return file.parent.parent if file.parent.name == "checkpoints" else file.parent
