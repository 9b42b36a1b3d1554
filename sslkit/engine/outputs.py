"""Where results go: `out=` must be a directory sslkit can write, and never another run's."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sslkit.errors import ConfigError

#: What `sslkit train` writes into a run directory; any of them marks the directory as a run.
RUN_FILES = ("config.yaml", "checkpoints", "metrics.jsonl", "tb", "backbone.pt", "eval", "training.png")


def writable_dir(path: Path, key: str = "out") -> Path:
    """Create `path` (a directory) or a one-line ConfigError naming why it cannot be one."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is an existing file; {key}= must name a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {key}={path}: {exc.strerror or exc}") from None
    probe = path / ".sslkit-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write into {key}={path}: {exc.strerror or exc}") from None
    return path


def new_file(path: Path, key: str = "out") -> Path:
    """`path` for a new file: its directory is writable and nothing is there yet."""
    if path.is_dir():
        raise ConfigError(f"{key}={path} is a directory; {key}= must name a new file")
    if path.exists():
        raise ConfigError(f"{key}={path} exists; sslkit does not overwrite files it did not create "
                          "(choose a new path or delete it)")
    writable_dir(path.parent, key)
    return path


def check_links(run_dir: Path) -> Path:
    """`run_dir`, or a one-line ConfigError when one of its RUN_FILES is a symlink that resolves outside it:
    sslkit writes into a run directory (resume, eval, report), and never through a link out of it."""
    root = run_dir.resolve()
    for name in RUN_FILES:
        entry = run_dir / name
        if entry.is_symlink() and not entry.resolve().is_relative_to(root):
            raise ConfigError(f"{entry} is a symlink to {entry.resolve()}, outside the run directory; sslkit does "
                              "not write through links out of a run directory (replace the link, or pass out=)")
    return run_dir


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def claim_run_dir(path: Path, overwrite: bool) -> Path:
    """`path` for a new run: refused when it holds another run, unless `overwrite` (then its run files go)."""
    if is_run_dir(path):
        if not overwrite:
            raise ConfigError(f"out={path} already holds a run; continue it with trainer.resume={path}, "
                              "choose a new out=, or pass trainer.overwrite=true to replace it")
        for name in RUN_FILES:
            target = path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    return writable_dir(path)


def method_slug(method: str) -> str:
    """A method's name for file names: `mocov2`, or `SimSiam` for `my_pkg.simsiam:SimSiam`."""
    return method.replace(":", ".").split(".")[-1]


def backbone_name(backbone: Mapping[str, Any]) -> str:
    """A backbone config's name: the torchvision name, or the timm model's."""
    return str(backbone["timm_name"] if backbone["name"] == "timm" else backbone["name"])


def timestamped(*parts: str) -> Path:
    """runs/<time>_<parts joined by _>: where a command writes when `out=` is not given."""
    return Path("runs") / "_".join((time.strftime("%Y%m%d-%H%M%S"), *parts))


def default_run_dir(method: str, backbone: Mapping[str, Any]) -> Path:
    """runs/<time>_<method>_<backbone> for a training run; each name keeps only [A-Za-z0-9._-] (a timm
    name like `hf-hub:org/model` or `../x` cannot make a path)."""
    return timestamped(*(safe_name(n) for n in (method_slug(method), backbone_name(backbone))))


def safe_name(name: str) -> str:
    """`name` as one file-name component: characters outside [A-Za-z0-9._-] become `_`, no leading dot."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"
