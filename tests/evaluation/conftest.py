"""Evaluation tests: one torch thread in-process (tiny ops; robust on a loaded 2-core machine). The
`cli` runner and the `trained_run` fixture live in tests/conftest.py (the app tests use them too)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
