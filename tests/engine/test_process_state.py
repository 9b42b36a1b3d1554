"""A training run or an evaluation inside a longer process (a notebook, a sweep, a study) leaves the
process as it found it: signal handlers, torch threads, default dtype, grad and autocast state,
`torch.backends` flags, the working directory and environment, and the global RNGs (the run's
random draws stay inside the run). Checked after `engine.fit`, after a fit stopped by a signal
(at a step boundary, and at once by a second Ctrl-C) and after an evaluation run in-process."""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import numpy as np
import pytest
import torch

from sslkit.engine.loop import FitInputs, LoopSettings, fit
from sslkit.engine.signals import Interrupted
from tests.conftest import needs_fashion

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def process_state() -> dict[str, Any]:
    b = torch.backends
    return {
        "signals": {s: signal.getsignal(s) for s in SIGNALS},
        "threads": (torch.get_num_threads(), torch.get_num_interop_threads()),
        "dtype": torch.get_default_dtype(),
        "grad": (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), torch.is_anomaly_enabled()),
        "autocast": {d: (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cpu", "cuda")},
        "backends": (b.cudnn.enabled, b.cudnn.benchmark, b.cudnn.deterministic, b.cudnn.allow_tf32,
                     b.cuda.matmul.allow_tf32, b.cuda.matmul.allow_fp16_reduced_precision_reduction,
                     b.mkldnn.enabled, b.opt_einsum.enabled, torch.get_float32_matmul_precision(),
                     torch.are_deterministic_algorithms_enabled()),
        "cwd": os.getcwd(),
        # torch sets TORCHINDUCTOR_CACHE_DIR itself the first time an optimizer steps
        "env": {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR")},
        "rng": (torch.get_rng_state(), random.getstate(), np.random.get_state()),
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key in before:
        if key == "rng":
            (t0, p0, n0), (t1, p1, n1) = before[key], after[key]
            assert torch.equal(t0, t1), "the global torch RNG moved"
            assert p0 == p1, "python's random moved"
            assert n0[0] == n1[0] and np.array_equal(n0[1], n1[1]) and n0[2:] == n1[2:], "numpy's RNG moved"
        else:
            assert after[key] == before[key], key


def handler(signum, frame):  # the caller's own handler, which a run must put back
    raise AssertionError("not called")


@pytest.fixture
def callers_handlers():
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    yield
    for s, h in previous.items():
        signal.signal(s, h)


def fit_inputs(tmp_path, precision: str = "32", signal_at: int = 0, second: bool = False) -> FitInputs:
    """test_loop_wiring's tiny MoCo for 8 steps; `signal_at`: SIGTERM (or two SIGINTs) after that step."""
    from sslkit.data.loader import train_loader
    from sslkit.engine.logger import NullLogger
    from sslkit.methods.mocov2 import MoCoV2
    from tests.engine.test_loop_wiring import BATCH, EPOCHS, SEED, STEPS, WORLD, dataset, make_views, parts

    method, opt, sched = parts()
    if signal_at:
        def after_step(progress: float) -> None:
            MoCoV2.after_step(method, progress)
            if progress == pytest.approx(signal_at / STEPS):
                os.kill(os.getpid(), signal.SIGINT if second else signal.SIGTERM)
                if second:
                    os.kill(os.getpid(), signal.SIGINT)  # the step has not finished: stop at once

        method.after_step = after_step  # type: ignore[method-assign]
    settings = LoopSettings(epochs=EPOCHS, total_steps=STEPS, steps_per_epoch=STEPS // EPOCHS, log_every=1,
                            checkpoint_every=0, precision=precision)
    loader = train_loader(dataset(), BATCH, seed=SEED)
    torch.manual_seed(7)  # the caller's RNG state (parts() seeded with 0)
    return FitInputs(method, loader, make_views, opt, sched, WORLD, settings, tmp_path, NullLogger())


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_fit_leaves_the_process_as_it_found_it(tmp_path, callers_handlers, one_torch_thread, precision):
    inputs = fit_inputs(tmp_path, precision)
    before = process_state()
    state = fit(inputs)
    assert state.step == 8
    assert_same(before, process_state())


def test_a_fit_stopped_by_a_signal_leaves_the_process_as_it_found_it(tmp_path, callers_handlers,
                                                                     one_torch_thread):
    inputs = fit_inputs(tmp_path, signal_at=3)
    before = process_state()
    with pytest.raises(Interrupted) as stop:
        fit(inputs)
    assert stop.value.signum == signal.SIGTERM and stop.value.exit_code == 143
    last = tmp_path / "checkpoints" / "last.pt"
    assert str(stop.value) == (f"stopped by SIGTERM after step 3; checkpoint written: {last}"
                               f" (continue with trainer.resume={tmp_path})")
    assert_same(before, process_state())


@pytest.mark.parametrize("at", [3, 5])  # before and after the first checkpoint (epoch 1 ends at step 4)
def test_a_fit_stopped_at_once_by_a_second_ctrl_c_leaves_the_process_as_it_found_it(tmp_path, callers_handlers,
                                                                                     one_torch_thread, at):
    inputs = fit_inputs(tmp_path, signal_at=at, second=True)
    before = process_state()
    with pytest.raises(Interrupted) as stop:
        fit(inputs)
    assert stop.value.exit_code == 130
    # the second SIGINT lands in step `at`'s after_step, when the counter already reads `at`
    where = (f"the last checkpoint is {tmp_path / 'checkpoints' / 'last.pt'} (continue with trainer.resume={tmp_path})"
             if at == 5 else "no checkpoint was written yet")
    assert str(stop.value) == f"stopped at once by a second SIGINT during step {at + 1}; {where}"
    assert_same(before, process_state())


def test_the_caller_can_still_stop_the_process_after_fit(tmp_path, one_torch_thread):
    """Python's Ctrl-C handler is back after a run: SIGINT raises KeyboardInterrupt again. (Installed
    here: a process started in the background by a shell inherits SIGINT ignored.)"""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        fit(fit_inputs(tmp_path))
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)  # the handler runs at the next bytecode; the sleep is interrupted at once
    finally:
        signal.signal(signal.SIGINT, previous)


@needs_fashion
def test_an_evaluation_in_process_leaves_the_process_as_it_found_it(tmp_path, callers_handlers, one_torch_thread):
    from sslkit.app.evaluate import run_evaluation

    torch.manual_seed(3)
    before = process_state()
    result = run_evaluation("knn", ["eval.features=pixels", "eval.k=[5]", "eval.train_subset=100",
                                    "eval.test_subset=50", "trainer.threads=2", f"out={tmp_path}"])  # tests: 1 thread
    assert result["top1"] > 0
    assert_same(before, process_state())


def test_ctrl_c_after_another_stop_signal_still_finishes_the_step():
    """Only a second SIGINT stops at once; SIGINT after SIGTERM or SIGUSR1 keeps the first request."""
    from sslkit.engine.signals import StopFlag

    for first in (signal.SIGTERM, signal.SIGUSR1):
        flag = StopFlag()
        flag._handle(first, None)
        try:
            flag._handle(signal.SIGINT, None)
        except KeyboardInterrupt:  # caught here: pytest would take it for the user's Ctrl-C and stop the session
            pytest.fail(f"SIGINT after {first.name} stopped at once")
        assert flag.signum == first
    flag = StopFlag()
    flag._handle(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        flag._handle(signal.SIGINT, None)
    flag = StopFlag()  # SIGTERM (15) or SIGHUP (1) after a Ctrl-C: still at the step's end, not at once
    flag._handle(signal.SIGINT, None)
    for later in (signal.SIGTERM, signal.SIGHUP):
        try:
            flag._handle(later, None)
        except KeyboardInterrupt:
            pytest.fail(f"{later.name} after SIGINT stopped at once")
