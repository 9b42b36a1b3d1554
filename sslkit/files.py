"""Files written so that a crash never leaves half of one: atomic torch.save and JSON, and reading
a run's metrics. A bottom module: it imports nothing from sslkit but `sslkit.errors`."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sslkit.errors import CheckpointError

METRICS = "metrics.jsonl"


def tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors in a nested structure: a lower bound on its file size."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _no_space(directory: Path, needed: int) -> CheckpointError:
    free = shutil.disk_usage(directory).free if directory.exists() else 0
    return CheckpointError(f"no space left in {directory} for a checkpoint: it needs about {needed} bytes, "
                           f"{free} are free; the previous checkpoint there is intact")


def save_atomic(obj: Any, path: Path, keep_previous: Path | None = None) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over `path`:
    a crash leaves the old file or the new one, never half of one. With `keep_previous`, the old
    `path` is moved there first. A full disk is a one-line CheckpointError; the old file stays."""
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
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path.parent, tensor_bytes(obj)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: Path) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (numpy, pyarrow, FAISS, ONNX):
    on success it is fsynced and renamed over `path`, on any error removed; `path` is never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(record: dict[str, Any], path: Path) -> Path:
    """`record` as indented JSON, written atomically."""
    return write_text_atomic(json.dumps(record, indent=2) + "\n", path)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of `<run dir>/metrics.jsonl` (a torn last line is skipped)."""
    path = Path(run_dir) / METRICS
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
