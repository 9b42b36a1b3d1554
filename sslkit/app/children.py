"""Training runs in fresh child processes (`python -m sslkit.app.child`), their output relayed to a
log file and their progress shown here; peak memory measured per run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from sslkit.engine.progress import Progress
from sslkit.errors import UserError


def _child_error(log: Path, label: str, code: int) -> UserError:
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    errors = [ln for ln in lines if ln.startswith("sslkit: error: ")]
    if errors:
        return UserError(f"batch_compare run {label}: {errors[-1][len('sslkit: error: '):]}")
    return UserError(f"batch_compare run {label} failed with exit code {code}; see {log}")


def _relay(cmd: list[str], log: TextIO, label: str) -> int:
    """Run `cmd`, copy its output into `log`, and show its training progress ("step N/T" lines)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy(),
                            text=True, bufsize=1)
    bar: Progress | None = None
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            log.write(line)
            step = re.match(r"step (\d+)/(\d+)", line)
            if step:
                bar = bar or Progress(int(step[2]), f"batch_compare {label}", "step")
                bar.set(int(step[1]))
    finally:
        if bar is not None:
            bar.close()
    return proc.wait()


def train_in_subprocess(overrides: list[str], log: Path, label: str) -> dict[str, Any]:
    """Train in a fresh process; wall time, peak RSS and (on CUDA) peak allocated memory."""
    report = log.with_suffix(".peak.json")
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "sslkit.app.child", str(report), "train", *overrides]
    start = time.perf_counter()
    with log.open("w") as out:
        code = _relay(cmd, out, label)
    seconds = time.perf_counter() - start
    if code != 0:
        raise _child_error(log, label, code)
    peak = json.loads(report.read_text())
    return {"train_seconds": seconds, "peak_rss_mb": peak["peak_rss_mb"],
            "peak_cuda_mb": peak["peak_cuda_mb"]}
