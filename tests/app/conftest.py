"""App tests: one torch thread in-process (tiny ops; robust on a loaded 2-core machine)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _every_test_one_thread(one_torch_thread: None) -> None:
    """Applies tests/conftest.py's `one_torch_thread` to every test in this folder."""
