"""Shared pieces of the parser fuzz tests: the fast and slow hypothesis settings, the contract every
parser meets on hostile input, and a memory bound."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from sslkit.errors import UserError

#: examples per parser: in `make test` (derandomized, so the suite is stable) and in the slow run
FAST_EXAMPLES = 25
SLOW_EXAMPLES = 1000
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                                        HealthCheck.function_scoped_fixture]}
FAST = settings(max_examples=FAST_EXAMPLES, derandomize=True, database=None, **_COMMON)
SLOW = settings(max_examples=SLOW_EXAMPLES, database=None, **_COMMON)


def fuzz(*strategies: Any) -> Callable[[Callable[..., None]], tuple[Any, Any]]:
    """`test_x, test_x_slow = fuzz(strategy)(check)`: the same check, fast in `make test` and long under
    `-m slow`."""

    def make(check: Callable[..., None]) -> tuple[Any, Any]:
        fast = FAST(given(*strategies)(check))
        slow = pytest.mark.slow(SLOW(given(*strategies)(check)))
        return fast, slow

    return make


def user_error_or(call: Callable[[], Any]) -> Any:
    """`call()`'s result, or None when it raised a one-line UserError (the CLI's `sslkit: error:` and
    exit 2). Any other exception, a traceback for the user, fails the test."""
    try:
        return call()
    except UserError as exc:
        text = str(exc)
        assert text and "\n" not in text.strip() and "Traceback" not in text, text
        return None


@contextmanager
def peak_memory(limit_mb: float) -> Iterator[None]:
    """Fail when the Python and numpy allocations inside exceed `limit_mb` (tracemalloc's peak)."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit_mb * 2**20, f"peak {peak / 2**20:.1f} MB > {limit_mb} MB"
