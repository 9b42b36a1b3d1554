"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from a user: printed as `error: <message>` with exit code 2, never a traceback."""

    exit_code = 2


class ConfigError(UserError):
    """An unknown key, group option or an invalid value in the configuration."""


class DataError(UserError):
    """A dataset that is missing, empty, corrupt or too small for the requested batch."""


class CheckpointError(UserError):
    """A checkpoint path that points at nothing, or a file that is not an sslkit checkpoint."""


def one_line(exc: BaseException) -> str:
    """The message of `exc` on one short line: no newlines, no C++ source location. An error
    re-raised from a DataLoader worker carries the worker's traceback in its message; its last line
    is the original `Type: message`."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1].strip()
    text = " ".join(lines)
    if len(lines) > 1 and "Traceback" in str(exc):
        _, sep, message = last.partition(": ")
        text = message if sep else last
    return re.sub(r"^.*\.(?:cpp|h):\d+, ", "", " ".join(text.split()))


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most similar to `word`, or None when nothing is close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def suggestion(word: str, choices: Iterable[str]) -> str:
    """A `did you mean 'x'?` fragment followed by the valid choices."""
    choices = sorted(set(choices))
    best = closest(word, choices)
    hint = f"did you mean '{best}'? " if best else ""
    return f"{hint}valid: {', '.join(choices)}"
