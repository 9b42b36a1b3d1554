"""Progress for any long phase: a tqdm bar on a TTY, otherwise plain lines with rate and ETA.

Lines go out when the phase starts, at most every `SSLKIT_PROGRESS_SECONDS` (default 10 s) while it
runs, and when it ends, so no phase stays silent for more than that (issue 8: "never silent > 30 s").
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO


def line_interval() -> float:
    """Seconds between progress lines when not on a TTY."""
    try:
        return max(0.0, float(os.environ.get("SSLKIT_PROGRESS_SECONDS", "10")))
    except ValueError:
        return 10.0


def resolve_mode(mode: str, stream: TextIO) -> str:
    """"auto" is "bar" on a TTY and "lines" otherwise; "bar", "lines" and "none" are kept."""
    if mode != "auto":
        return mode
    return "bar" if stream.isatty() else "lines"


def duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """`update(n)` as work is done; `close()` (or leaving the `with` block) at the end."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", mode: str = "auto", initial: int = 0,
                 stream: TextIO | None = None, interval: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.mode = resolve_mode(mode, self.stream)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start_n = initial
        self.interval = line_interval() if interval is None else interval
        self.start = self.last_line = time.perf_counter()
        self.postfix = ""
        self.bar: Any = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                            file=self.stream, leave=True)
        elif self.mode == "lines":
            self._line("started")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return float("nan")
        return (self.total - self.n) / rate

    def _line(self, note: str = "") -> None:
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        rate = self.rate()
        text = f"{self.desc}: {done} {self.unit}{pct}"
        if self.n > self.start_n:
            text += f", {rate:.3g} {self.unit}/s"
            if note != "done":
                text += f", eta {duration(self.eta())}"
        if self.postfix:
            text += f" {self.postfix}"
        if note in ("started", "done"):
            text += f" [{note}{' in ' + duration(time.perf_counter() - self.start) if note == 'done' else ''}]"
        print(text, file=self.stream, flush=True)
        self.last_line = time.perf_counter()

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.set(self.n + n, postfix)

    def set(self, n: int, postfix: str | None = None) -> None:
        """Move to `n` done (for callers that count themselves)."""
        self.n = n
        if postfix is not None:
            self.postfix = postfix
        if self.bar is not None:
            self.bar.n = n
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.refresh()
        elif self.mode == "lines" and time.perf_counter() - self.last_line >= self.interval:
            self._line()

    def write(self, text: str) -> None:
        """A message that does not break the bar."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        elif self.mode != "none":
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines":
            self._line("done")
            self.mode = "closed"
