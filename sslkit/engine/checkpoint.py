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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sslkit import files
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


def _pack_numpy(state: tuple[Any, ...]) -> dict[str, Any]:
    """numpy's legacy RNG state tuple as a tensor, a string and numbers (no pickled arrays)."""
    kind, keys, pos, has_gauss, gauss = state
    return {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _pack_python(state: tuple[Any, ...]) -> dict[str, Any]:
    """`random.getstate()` as numbers and a list."""
    version, py_state, py_gauss = state
    return {"version": int(version), "state": [int(v) for v in py_state], "gauss": py_gauss}


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, lists and numbers (loadable with weights_only=True)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _pack_numpy(tuple(np.random.get_state())),
        "python": _pack_python(random.getstate()),
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


def previous_of(file: Path) -> Path:
    """The file `save_atomic(..., keep_previous=)` keeps beside `file`: prev.pt for last.pt, else X.prev.pt."""
    return file.with_name(PREV.name) if file.name == LAST.name else file.with_name(f"{file.stem}.prev{file.suffix}")


def _candidates(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """The file `path` names and the one to fall back to: a run directory or a last.pt -> (last.pt,
    prev.pt); a prev.pt -> (prev.pt, None); another file -> (it, its X.prev.pt where one exists)."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not ((p / LAST).is_file() or (p / PREV).is_file()):
            raise CheckpointError(f"{p} is a directory without {LAST} or {PREV}; pass a run directory or a .pt "
                                  "checkpoint")
        return p / LAST, p / PREV
    fallback = None if p.name == PREV.name else previous_of(p)
    if fallback is not None and not fallback.is_file():
        fallback = None
    if not p.is_file() and fallback is None:
        raise CheckpointError(f"checkpoint '{path}' does not exist; pass a run directory (runs/...) or a .pt file")
    return p, fallback


def locate(path: str | os.PathLike[str]) -> Path:
    """The existing checkpoint file `path` names (a run directory, a file, or its prev when the file is
    missing), without reading it: for `sslkit checkpoint upgrade` and the report."""
    file, fallback = _candidates(path)
    return file if file.is_file() or fallback is None else fallback


def _read(file: Path, check: bool = True) -> dict[str, Any]:
    """Load with weights_only=True: a file that needs any other class is refused, never unpickled.
    `check`: it must be an sslkit checkpoint of this format version (else any dict)."""
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
    if not check and isinstance(ckpt, dict):
        return ckpt
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not an sslkit checkpoint (use `sslkit export` files with torchvision/timm)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{file} is sslkit checkpoint format {ckpt.get('version')}, this sslkit reads "
                              f"format {VERSION}; convert it with `sslkit checkpoint upgrade {file}`")
    return ckpt


@dataclass(frozen=True)
class Opened:
    """A loaded checkpoint, the file it was read from (prev.pt after a fallback) and its run directory."""

    checkpoint: dict[str, Any]
    file: Path
    run_dir: Path


def _step(ckpt: dict[str, Any]) -> Any:
    state = ckpt.get("state")
    return state.get("step") if isinstance(state, dict) else ckpt.get("step")


def open_checkpoint(path: str | os.PathLike[str], check: bool = True) -> Opened:
    """THE resolution of a checkpoint path, shared by resume, every `sslkit eval`, export, report and the
    detection resume: a run directory, a last.pt or a prev.pt (or any .pt), loaded on the CPU, safely.
    When the file is missing, truncated or unreadable and its previous file exists (prev.pt beside
    last.pt), that one is loaded instead, with one `sslkit: notice:` line on stderr naming its step.
    `check=False` accepts any dict of tensors (the detection checkpoint) instead of an sslkit checkpoint."""
    file, fallback = _candidates(path)
    if fallback is None:
        ckpt = _read(file, check)
    else:
        try:
            if not file.is_file():
                raise CheckpointError(f"{file} is missing")
            ckpt = _read(file, check)
        except CheckpointError as exc:
            try:
                ckpt = _read(fallback, check)
            except CheckpointError as older:
                raise CheckpointError(f"{exc}, and its previous checkpoint cannot be used either: {older}") from None
            print(f"sslkit: notice: {exc}; using the previous checkpoint {fallback} (step {_step(ckpt)})",
                  file=sys.stderr, flush=True)
            file = fallback
    return Opened(ckpt, file, run_dir_of(file))


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`open_checkpoint(path).checkpoint`."""
    return open_checkpoint(path).checkpoint


RUN_FILES = ("config.yaml", "metrics.jsonl", "backbone.pt")  # written atomically beside the checkpoints


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete the temporaries an interrupted save left in a run directory: of its checkpoints, config,
    metrics rewrite and export. Rank 0 alone writes them, so none of them is another process's."""
    return files.remove_stale_temps(run_dir / LAST, run_dir / PREV, *(run_dir / name for name in RUN_FILES))


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
    rng["numpy"], rng["python"] = _pack_numpy(rng["numpy"]), _pack_python(rng["python"])
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
    """A checkpoint (from a run directory or a file) and its run directory: `open_checkpoint`."""
    opened = open_checkpoint(path)
    return opened.checkpoint, opened.run_dir
