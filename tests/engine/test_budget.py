"""trainer.time_budget sizes the schedule from timed first steps (issue 8, item 4), with a fake clock."""

import itertools

import pytest
import torch
import yaml

from sslkit.app.train import train
from sslkit.config import compose
from sslkit.engine import budget
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.checkpoint import config_of
from sslkit.errors import ConfigError
from tests.conftest import needs_fashion

BASE = ["data.subset=128", "data.batch_size=32", "method.queue_size=48", "trainer.progress=none",
        "trainer.log_every_steps=1", "head.hidden_dim=64", "trainer.checkpoint_every_steps=0",
        "trainer.channels_last=false", "trainer.precision=32"]  # the timed probes could pick differently


def test_steps_within():
    assert budget.steps_within(600, 60, 0.5) == 1026  # floor(0.95 * 540 / 0.5)
    assert budget.steps_within(600, 60, 0.5, safety=1.0) == 1080
    assert budget.steps_within(600, 700, 0.5) == 1  # already over: one step, not zero or negative
    assert budget.steps_within(600, 599.9, 0.5) == 1  # a fraction of a step left: still one
    assert budget.steps_within(600, 0, 0.0) == 1  # an unmeasurably fast step: one, not a division by zero
    assert budget.steps_within(600, 0, -1.0) == 1
    with pytest.raises(ConfigError, match="time_budget must be a positive number of minutes, got -0.5"):
        budget.steps_within(-30, 0, 1.0)
    with pytest.raises(ConfigError, match="got 0$"):
        budget.steps_within(0, 0, 1.0)


def _trial(epochs: int):
    from tests.engine.test_loop_wiring import fit_inputs, parts

    return fit_inputs(None, *parts(), epochs=epochs, log_every=10)  # 4 steps per epoch


def test_seconds_per_step_times_the_steps_after_the_warmup_and_restores_the_rngs(monkeypatch):
    ends = iter([1.0, 3.0, 6.0, 10.0, 15.0, 21.0, 28.0, 36.0])  # step i ends at 1, 3, 6, ... (i-th gap: i)
    monkeypatch.setattr(budget, "clock", lambda: next(ends))
    trial = _trial(epochs=5)  # room for 20 steps: the trial itself must stop at 3 + 5
    torch.manual_seed(11)
    before = torch.get_rng_state()
    generator = trial.loader.generator.get_state()
    assert budget.TRIAL_STEPS == 8
    assert budget.seconds_per_step(trial) == pytest.approx((36.0 - 6.0) / 5)  # steps 4..8 after 3 untimed
    assert torch.equal(torch.get_rng_state(), before) and torch.equal(trial.loader.generator.get_state(), generator)
    assert next(ends, None) is None  # exactly 8 steps were trained, each ended once


def test_seconds_per_step_with_too_little_data_is_one_line(monkeypatch):
    monkeypatch.setattr(budget, "clock", itertools.count().__next__)
    for warmup in (4, 6):  # one epoch: 4 steps, all warm-up
        with pytest.raises(ConfigError, match="the data ran out while timing the first steps"):
            budget.seconds_per_step(_trial(epochs=1), warmup=warmup, measure=5)
    assert budget.seconds_per_step(_trial(epochs=1), warmup=2, measure=5) == 1.0  # 2 timed steps of 1 s each


def test_budget_minutes_validation():
    assert budget.budget_minutes(None) is None and budget.budget_minutes(2) == 2.0
    for bad in ("soon", -1, 0, float("inf")):
        with pytest.raises(ConfigError, match="trainer.time_budget"):
            budget.budget_minutes(bad)


@pytest.mark.slow  # two trainings (~25 s); the budget arithmetic stays in make test
@needs_fashion
def test_budget_fixes_the_total_and_the_run_equals_that_many_steps(tmp_path, monkeypatch):
    ticks = itertools.count()  # every reading of the clock is one second later
    monkeypatch.setattr(budget, "clock", lambda: float(next(ticks)))
    run = train(compose(BASE + ["trainer.time_budget=0.25", f"out={tmp_path / 'budget'}"]))
    # began at 0 s; 3 + 5 timed steps end at 1..8 s -> 1 s/step; planning reads 9 s:
    # floor(0.95 * (15 - 9) / 1) = 5 steps, recorded in config.yaml and in the checkpoint
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"] == 5
    saved = ckpt.load(run)
    assert saved["state"]["step"] == 5
    assert yaml.safe_load(saved["config"])["trainer"]["max_steps"] == 5

    monkeypatch.setattr(budget, "clock", __import__("time").perf_counter)
    plain = train(compose(BASE + ["trainer.max_steps=5", f"out={tmp_path / 'plain'}"]))
    a, b = ckpt.load(plain)["method"], saved["method"]
    for key in a:  # timing the copy left no trace: the same run as max_steps=5
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)

    def no_timing(*args, **kwargs):
        raise AssertionError("a resume must keep the recorded schedule, not time again")

    monkeypatch.setattr(budget, "seconds_per_step", no_timing)
    cfg = config_of(saved)
    assert cfg.trainer.max_steps == 5 and cfg.trainer.time_budget == 0.25
    train(cfg, saved)  # already at step 5 of 5: returns without re-planning


@needs_fashion
def test_a_refused_out_costs_no_timed_steps(tmp_path, monkeypatch):
    def no_timing(*args, **kwargs):
        raise AssertionError("the run directory must be claimed before the budget is timed")

    run = tmp_path / "taken"
    train(compose(BASE + ["trainer.max_steps=1", f"out={run}"]))
    monkeypatch.setattr(budget, "seconds_per_step", no_timing)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(compose(BASE + ["trainer.time_budget=0.25", f"out={run}"]))
