"""How a command ends: a user error is one line on stderr and its exit code, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from sslkit.engine.signals import Interrupted
from sslkit.errors import UserError, one_line


def exit_code(command: Callable[[], int]) -> int:
    """Run `command`; a UserError prints `sslkit: error: <one line>` (or `stopped` for a signal that
    stopped training) and returns its exit code; Ctrl-C outside training returns 130."""
    try:
        return command()
    except UserError as exc:
        kind = "stopped" if isinstance(exc, Interrupted) else "error"
        print(f"sslkit: {kind}: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # before or after training (inside it, the loop stops at a step boundary)
        print("sslkit: interrupted; nothing new was saved by this command", file=sys.stderr)
        return 130
