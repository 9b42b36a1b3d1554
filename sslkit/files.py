"""Files written so that a crash never leaves half of one: atomic torch.save and JSON, and reading
a run's metrics. A bottom module: it imports nothing from sslkit but `sslkit.errors`."""

from __future__ import annotations

import errno
import glob
import json
import os
import secrets
import shutil
import tempfile
import time
import zipfile
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


def _fsync_dir(directory: Path) -> None:
    """Make renames and new names in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _complete(path: Path) -> bool:
    """Whether `path` ends with a zip end-of-central-directory record, as every file torch.save writes
    does: a cheap test (it reads the file's tail) that tells a torn file from a complete one."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _keep_as(current: Path, keep: Path) -> None:
    """Make `keep` a second name of `current` without moving `current`: a hard link to a temporary
    name renamed over `keep`; where hard links are not supported, a fsynced copy renamed over it."""
    while True:
        tmp = keep.with_name(f".{keep.name}.{secrets.token_hex(4)}")
        try:
            os.link(current, tmp)
            break
        except FileExistsError:
            continue
        except OSError:  # no hard links on this file system (some FUSE, SMB, ...): copy instead
            try:
                with current.open("rb") as src, open(tmp, "xb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                    dst.flush()
                    os.fsync(dst.fileno())
            except FileExistsError:
                continue
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            break
    try:
        os.replace(tmp, keep)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(*paths: Path, older_than: float = 0.0) -> list[Path]:
    """Delete the temporary files an interrupted `save_atomic` or `write_text_atomic` of each of
    `paths` (or a `keep_previous=` naming one) can leave beside it: `.<name>.` plus 8 characters.
    Only temporaries untouched for `older_than` seconds go: pass 0 only where no other process
    writes these files (a run's checkpoints: rank 0 alone saves them). Returns what it deleted."""
    gone = []
    now = time.time()
    for target in paths:
        if not target.parent.is_dir():
            continue
        for stale in target.parent.glob(f".{glob.escape(target.name)}.{'?' * 8}"):
            try:
                if older_than and now - stale.stat().st_mtime < older_than:
                    continue
                stale.unlink()
                gone.append(stale)
            except FileNotFoundError:
                pass
    return gone


def save_atomic(obj: Any, path: Path, keep_previous: Path | None = None) -> None:
    """torch.save `obj` so that `path` names a complete file at every instant, whatever kills the process.

    1. torch.save to a temporary `.<name>.XXXX` in the same directory, flush, fsync;
    2. with `keep_previous`: make it a second name of the current `path` (hard link, or a copy where
       links are unsupported) through its own temporary and a rename; `path` itself never moves;
       a torn `path` (no zip end record) is not kept, so it never replaces a good previous file;
    3. rename the new file over `path` (atomic), then fsync the directory.
    A kill at any point leaves `path` old or new, never missing nor half-written, and `keep_previous`
    the file before it (or, after step 2, a second copy of the old `path`). A full disk is a one-line
    CheckpointError; the old file stays."""
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
        if keep_previous is not None and path.is_file() and _complete(path):
            _keep_as(path, keep_previous)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path.parent, tensor_bytes(obj)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(text: str, path: Path) -> Path:
    """Write `text` to a fresh temporary file beside `path` (mkstemp: O_EXCL, so a planted symlink of that
    name is never followed), fsync it, rename it over `path` (a link at `path` is replaced, not written
    through) and fsync the directory: a kill leaves the old text or the new, never a torn file."""
    return write_bytes_atomic(text.encode("utf-8"), path)


def write_bytes_atomic(data: bytes, path: Path) -> Path:
    """`write_text_atomic` for bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
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
    """The records of `<run dir>/metrics.jsonl`: JSON objects whose `step` and `epoch`, when present, are
    numbers. A line torn by a kill (cut anywhere, even inside a character), bytes that are not UTF-8, a
    line nested past the parser's depth or any other value is skipped."""
    path = Path(run_dir) / METRICS
    records = []
    if path.is_file():
        for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(record, dict) and all(_is_number(record[k]) for k in ("step", "epoch") if k in record):
                records.append(record)
    return records


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
