"""Run logging: metrics.jsonl, TensorBoard events and progress (tqdm on a TTY, plain lines otherwise).

Only rank 0 makes one; other ranks get a `NullLogger`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from sslkit.engine.progress import line_interval
from sslkit.files import write_text_atomic


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _truncate_after(path: Path, step: int) -> None:
    """Keep only the records of `path` (metrics.jsonl) logged at or before `step`."""
    if not path.is_file():
        return
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()

    def keep(line: str) -> bool:
        try:
            return int(json.loads(line).get("step", 0)) <= step
        except (ValueError, TypeError, AttributeError, RecursionError):  # a line cut off by a crash, or garbage
            return False

    kept = [line for line in lines if keep(line)]
    if len(kept) != len(lines) or not path.read_bytes().endswith(b"\n"):
        write_text_atomic("".join(line + "\n" for line in kept), path)


class RunLogger:
    """Appends one JSON line per logged step or epoch and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, total_steps: int, initial_step: int = 0, progress: str = "auto") -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        if initial_step:  # resuming: drop what was logged after the checkpoint (it is trained again)
            _truncate_after(run_dir / "metrics.jsonl", initial_step)
        self.metrics = (run_dir / "metrics.jsonl").open("a", buffering=1)
        # purge_step discards events at steps >= it: keep the checkpoint's own step, drop later ones
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=initial_step + 1 if initial_step else None)
        self.total = total_steps
        mode = progress if progress != "auto" else ("bar" if sys.stderr.isatty() else "lines")
        self.mode = mode
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True, unit="step")
        self.start = time.time()
        self.start_step = initial_step
        self.last_line = self.start
        self.last_text = ""

    def log(self, record: dict[str, Any]) -> None:
        """Write a record (must hold `step`); scalars go to TensorBoard under train/ or eval/."""
        record = {"time": round(time.time(), 3), **record}
        self.metrics.write(json.dumps(record) + "\n")
        step = int(record["step"])
        for key, value in record.items():
            if key not in ("time", "step", "epoch") and isinstance(value, int | float):
                self.tb.add_scalar(key if "/" in key else f"train/{key}", value, step)

    def _eta(self, step: int) -> float:
        done = step - self.start_step
        return (time.time() - self.start) / done * (self.total - step) if done else float("nan")

    def progress(self, step: int, scalars: dict[str, float]) -> None:
        text = " ".join(f"{k}={_fmt(v)}" for k, v in scalars.items())
        self.last_text = text
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(text, refresh=True)
        elif self.mode == "lines":
            print(f"step {step}/{self.total} {text} eta={self._eta(step):.0f}s", flush=True)
            self.last_line = time.time()

    def tick(self, step: int) -> None:
        """Every step: the bar moves; in line mode a line goes out when none has for a while."""
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()
        elif self.mode == "lines" and time.time() - self.last_line >= line_interval():
            rate = (step - self.start_step) / max(time.time() - self.start, 1e-9)
            print(f"step {step}/{self.total} {rate:.3g} steps/s eta={self._eta(step):.0f}s"
                  + (f" (last logged: {self.last_text})" if self.last_text else ""), flush=True)
            self.last_line = time.time()

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        elif self.mode != "none":
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.tb.close()
        self.metrics.close()


class NullLogger(RunLogger):
    """What non-zero ranks log: nothing."""

    def __init__(self) -> None:  # noqa: D107
        pass

    def log(self, record: dict[str, Any]) -> None:
        pass

    def progress(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def tick(self, step: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass
