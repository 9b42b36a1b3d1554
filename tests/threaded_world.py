"""A fake torch.distributed world of N threads in one process, for fast tests of collective wiring.

`ThreadedWorld(2).run(fn, monkeypatch)` runs `fn(rank)` in 2 threads while `torch.distributed`'s
`is_initialized`, `get_world_size`, `get_rank`, `all_gather`, `broadcast` and `all_reduce` act as a
2-process group would (sum for all_reduce). Code under test calls them through `torch.distributed`
as usual, so the exact code paths of a gloo run execute, in milliseconds instead of seconds of
process start-up. The real 2-process versions live in tests/distributed/.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist


class ThreadedWorld:
    def __init__(self, size: int, timeout: float = 30.0) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=timeout)
        self.slots: list[Any] = [None] * size
        self.local = threading.local()

    def rank(self) -> int:
        return int(self.local.rank)

    def _exchange(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order (a rendezvous of all threads)."""
        self.slots[self.rank()] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return out

    def all_gather(self, out: list[torch.Tensor], x: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        for o, v in zip(out, self._exchange(x.detach().clone()), strict=True):
            o.copy_(v)

    def broadcast(self, x: torch.Tensor, src: int = 0, *args: Any, **kwargs: Any) -> None:
        if not 0 <= src < self.size:
            raise ValueError(f"broadcast from rank {src} in a world of {self.size}")  # as gloo rejects it
        x.copy_(self._exchange(x.detach().clone())[src])

    def all_reduce(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        x.copy_(torch.stack(self._exchange(x.detach().clone())).sum(0))

    def run(self, fn: Callable[[int], Any], monkeypatch: pytest.MonkeyPatch) -> list[Any]:
        """`[fn(0), ..., fn(size-1)]`, each in its own thread inside the fake group."""
        for name, value in {"is_available": lambda: True, "is_initialized": lambda: True,
                            "get_world_size": lambda *a, **k: self.size, "get_rank": lambda *a, **k: self.rank(),
                            "all_gather": self.all_gather, "broadcast": self.broadcast,
                            "all_reduce": self.all_reduce}.items():
            monkeypatch.setattr(dist, name, value)
        results: list[Any] = [None] * self.size
        errors: list[BaseException] = []

        def target(rank: int) -> None:
            self.local.rank = rank
            try:
                results[rank] = fn(rank)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results
