"""Stop requests: SIGINT, SIGTERM and SIGUSR1 set a flag that the training loop reads between steps.

The loop then finishes the step it is in (backward, optimizer, `after_step`: queue and EMA), writes
a checkpoint and raises `Interrupted`; the CLI exits with 128 + the signal number (130 for SIGINT,
143 for SIGTERM, 138 for SIGUSR1), so a scheduler can tell a clean stop from a crash. A second
SIGINT while the step finishes stops at once (KeyboardInterrupt), without writing a checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from sslkit.errors import UserError

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Interrupted(UserError):
    """Training stopped at a step boundary because of a signal; a checkpoint was written."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, forced: bool = False) -> None:
        name = signal.Signals(signum).name
        resume = f" (continue with trainer.resume={checkpoint.parent.parent})" if checkpoint is not None else ""
        if forced:
            where = (f"stopped at once by a second {name} during step {step + 1}; the last checkpoint is "
                     f"{checkpoint}{resume}" if checkpoint is not None else
                     f"stopped at once by a second {name} during step {step + 1}; no checkpoint was written yet")
            super().__init__(where)
        else:
            super().__init__(f"stopped by {name} after step {step}; checkpoint written: {checkpoint}{resume}")
        self.exit_code = 128 + signum
        self.signum = signum


class StopFlag:
    """The signal number of the first stop request, 0 while none came."""

    def __init__(self) -> None:
        self.signum = 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        if not self.signum:
            self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Install the flag-setting handlers for the block (main thread only; elsewhere the flag never sets)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag._handle) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
