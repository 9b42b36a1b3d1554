"""`trainer.time_budget=<minutes>`: size the schedule to the time, instead of cutting a run short.

Before training, a copy of the method trains a few steps on the real loader (the first ones warm up
the loader and the kernels and are not counted); the seconds per step of the next ones fix the total
step count, so that the whole run (set-up, warm-up and the full cosine schedule) ends within the
budget. Random state, the sampler and the loader's generator are restored afterwards, so the run is
exactly the run with `trainer.max_steps=<that total>`; the total is written into `trainer.max_steps`
of config.yaml and of every checkpoint, and a resume keeps it. Lightning's `max_time` only stops.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sslkit.engine import checkpoint as ckpt
from sslkit.engine.logger import NullLogger
from sslkit.engine.loop import FitInputs, fit
from sslkit.errors import ConfigError

clock: Callable[[], float] = time.perf_counter  # tests replace it
WARMUP_STEPS = 3    # not timed: loader start, oneDNN/cuDNN primitive creation
MEASURE_STEPS = 5   # timed
TRIAL_STEPS = WARMUP_STEPS + MEASURE_STEPS
SAFETY = 0.95       # share of the remaining time planned for (checkpoints, end of epochs, noise)


def steps_within(budget_s: float, elapsed_s: float, step_s: float, safety: float = SAFETY) -> int:
    """How many steps of `step_s` seconds fit in what is left of `budget_s` after `elapsed_s`."""
    if budget_s <= 0:
        raise ConfigError(f"trainer.time_budget must be a positive number of minutes, got {budget_s / 60:g}")
    left = budget_s - elapsed_s
    if left <= 0 or step_s <= 0:
        return 1
    return max(1, int(math.floor(safety * left / step_s)))


class _Timer(NullLogger):
    """A logger that only notes when each step ended."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def tick(self, step: int) -> None:
        self.ends.append(clock())


def seconds_per_step(trial: FitInputs, warmup: int = WARMUP_STEPS, measure: int = MEASURE_STEPS) -> float:
    """Train `trial` (a copy of the run's method, with its own optimizer and a schedule of
    TRIAL_STEPS) for warmup + measure steps; the mean seconds of the measured steps.

    The global RNGs and the loader's generator are restored afterwards (the run's `fit` positions
    the sampler itself)."""
    warmup = max(1, warmup)
    rng = ckpt.rng_state()
    loader = trial.loader
    gen = loader.generator.get_state() if loader.generator is not None else None
    steps = warmup + measure
    timer = _Timer()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = replace(trial.settings, total_steps=steps, checkpoint_every=0, log_every=steps + 1)
            fit(replace(trial, settings=settings, run_dir=Path(tmp), logger=timer, checkpoint_extra={},
                        epoch_hooks=(), on_checkpoint=None))
    finally:
        ckpt.set_rng_state(rng)
        if gen is not None:
            loader.generator.set_state(gen)
    ends = timer.ends
    if len(ends) <= warmup:
        raise ConfigError("trainer.time_budget: the data ran out while timing the first steps; "
                          "use more data or trainer.max_steps instead")
    return (ends[-1] - ends[warmup - 1]) / (len(ends) - warmup)


def budget_minutes(value: Any) -> float | None:
    """`trainer.time_budget` as minutes (None: no budget); a one-line error for anything else."""
    if value is None or value == "":
        return None
    try:
        minutes = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"trainer.time_budget={value!r} is invalid: expected minutes (a number)") from None
    if not minutes > 0 or math.isinf(minutes):
        raise ConfigError(f"trainer.time_budget must be a positive number of minutes, got {value!r}")
    return minutes
