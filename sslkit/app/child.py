"""`python -m sslkit.app.child <report.json> train <overrides...>`: `sslkit train` (the app's train
command, not the CLI parser) in a fresh process that then writes its exit code and peak memory
(RSS, and CUDA when used) to `report.json`.

A fresh process per training run is what makes peak RSS measurable per run: ru_maxrss cannot be
reset within a process.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident set size of this process and its waited-for children, in MB."""
    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) * scale


def main(argv: list[str]) -> int:
    report, command, overrides = Path(argv[0]), argv[1], argv[2:]
    if command != "train":
        raise SystemExit(f"sslkit.app.child: only `train` runs in a child process, not {command!r}")
    from sslkit.app.exits import exit_code
    from sslkit.app.launch import train_command

    code = 1
    try:
        code = exit_code(lambda: train_command(overrides))
    finally:
        cuda_mb = None
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                cuda_mb = torch.cuda.max_memory_allocated() / 1024**2
        report.write_text(json.dumps({"exit_code": code, "peak_rss_mb": peak_rss_mb(),
                                      "peak_cuda_mb": cuda_mb}))
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
