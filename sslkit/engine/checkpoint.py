"""Checkpoints: one file holding everything needed to continue exactly, written atomically.

Format version 2 holds only tensors, numbers, strings and plain containers (the config is YAML
text, RNG states are tensors and lists), so it loads with `torch.load(weights_only=True)`: opening
a checkpoint can never run code. Version-1 files (which pickled numpy's RNG state) are converted
once, explicitly, by `sslkit checkpoint upgrade <file>`.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sslkit.errors import CheckpointError
from sslkit.files import save_atomic

FORMAT = "sslkit-checkpoint"
VERSION = 2
LAST = Path("checkpoints") / "last.pt"
PREV = Path("checkpoints") / "prev.pt"


def check_free_space(directory: Path, needed: int) -> None:
    """A one-line CheckpointError unless `directory` (or its nearest existing parent) has `needed` bytes free."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise CheckpointError(f"not enough disk space in {directory}: checkpoints need about {needed} bytes, "
                              f"{free} are free; free some space or choose another out=")


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, lists and numbers (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file from a run directory or a file path, or a one-line CheckpointError."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / LAST).is_file() or (p / PREV).is_file():
            return p / LAST
        raise CheckpointError(f"{p} is a directory without {LAST}; pass a run directory or a .pt checkpoint")
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist; pass a run directory (runs/...) or a .pt file")
    return p


def _read(file: Path) -> dict[str, Any]:
    """Load with weights_only=True: a file that needs any other class is refused, never unpickled."""
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign, or a pickle that wants to run code
        text = str(exc)
        found = re.search(r"GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise CheckpointError(
                f"refusing to load {file}: it asks to run {found.group(1) or found.group(2)} (a file with Python "
                f"objects other than tensors could run code); if it is an sslkit checkpoint from before format "
                f"{VERSION} that you trust, convert it with `sslkit checkpoint upgrade {file}`") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith("error:")),
                      lines[0] if lines else type(exc).__name__)
        raise CheckpointError(f"cannot read checkpoint {file}: not a torch file, or truncated ({detail})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not an sslkit checkpoint (use `sslkit export` files with torchvision/timm)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{file} is sslkit checkpoint format {ckpt.get('version')}, this sslkit reads "
                              f"format {VERSION}; convert it with `sslkit checkpoint upgrade {file}`")
    return ckpt


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load an sslkit checkpoint on the CPU, safely. A run directory whose last.pt is missing,
    truncated or unreadable falls back to its prev.pt with a one-line notice on stderr."""
    file = resolve(path)
    prev = file.parent / PREV.name
    if file.name == LAST.name and file.parent.name == LAST.parent.name and prev.is_file():
        try:
            if not file.is_file():
                raise CheckpointError(f"{file} is missing")
            return _read(file)
        except CheckpointError as exc:
            ckpt = _read(prev)
            print(f"sslkit: notice: {exc}; using the previous checkpoint {prev} "
                  f"(step {ckpt.get('state', {}).get('step')})", file=sys.stderr, flush=True)
            return ckpt
    return _read(file)


def run_dir_of(file: Path) -> Path:
    """The run directory a checkpoint file belongs to."""
    return file.parent.parent if file.parent.name == "checkpoints" else file.parent


def upgrade(file: Path, out: Path) -> int:
    """Convert a version-1 checkpoint (pickled numpy RNG state) to the current format; return its old version.

    This is the one place sslkit unpickles (`weights_only=False`): call it only on files you trust."""
    try:
        old = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {file}: {str(exc).strip().splitlines()[0]}") from None
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not an sslkit checkpoint")
    version = int(old.get("version", 1))
    if version == VERSION:
        return version
    rng = old.get("rng", {})
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    py_version, py_state, py_gauss = rng["python"]
    rng["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                    "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}
    rng["python"] = {"version": int(py_version), "state": [int(v) for v in py_state], "gauss": py_gauss}
    if not isinstance(old.get("config"), str):
        old["config"] = OmegaConf.to_yaml(OmegaConf.create(old["config"]))
    old["rng"], old["version"] = rng, VERSION
    save_atomic(old, out)
    _read(out)  # the result must load safely
    return version


def config_of(checkpoint: dict[str, Any]) -> DictConfig:
    """The config a checkpoint was trained with: plain YAML data only (`sslkit.config.config_from_text`)."""
    from sslkit.config import check_file_names, config_from_text

    return check_file_names(config_from_text(checkpoint.get("config"), "the checkpoint's config"),
                            "the checkpoint's config")


def load_run(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Path]:
    """A checkpoint (from a run directory or a file) and its run directory."""
    file = resolve(path)
    return load(file), run_dir_of(file)
