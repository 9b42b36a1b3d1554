"""Shared by the BYOL and SimSiam tests: a method built from a tiny composed config (a width-8,
small-stem ResNet-18 at 8 px, so evaluation and export can rebuild its encoder), trained through
`engine.fit` on in-memory images, straight through or interrupted and resumed."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig

from sslkit.build import build_method
from sslkit.config import compose, to_yaml
from sslkit.data.base import TensorImageDataset
from sslkit.data.loader import train_loader
from sslkit.devices import World
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.logger import NullLogger
from sslkit.engine.loop import FitInputs, LoopSettings, fit
from sslkit.engine.optim import build_optimizer
from sslkit.engine.schedule import build_scheduler
from sslkit.engine.signals import Interrupted
from sslkit.engine.state import TrainState, restore
from sslkit.methods.base import SSLMethod

IMAGES, BATCH, EPOCHS, SEED = 32, 8, 2, 5
STEPS = EPOCHS * IMAGES // BATCH  # 4 steps per epoch
WORLD = World(0, 0, 1, torch.device("cpu"))
TINY = ("backbone.width=8", "backbone.small_images=true", "data.image_size=8", f"data.batch_size={BATCH}")


def tiny_config(method: str, *overrides: str) -> DictConfig:
    """`method=<method>` at the paper's settings except sizes: a width-8 ResNet-18 at 8 px, small heads."""
    return compose([f"method={method}", *TINY, *overrides])


def dataset() -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    return TensorImageDataset(torch.randint(0, 255, (IMAGES, 3, 8, 8), generator=g, dtype=torch.uint8),
                              torch.arange(IMAGES) % 4, 4)


def make_views(images: torch.Tensor) -> list[torch.Tensor]:
    x = images.float() / 255
    return [x + 0.1 * torch.randn_like(x), x.flip(-1) + 0.1 * torch.randn_like(x)]  # draws from the global RNG


def parts(cfg: DictConfig) -> tuple[SSLMethod, Any, Any]:
    """The method, its optimizer (with its param rules) and schedule, as `sslkit train` builds them."""
    torch.manual_seed(0)
    method = build_method(cfg)
    opt = build_optimizer(method, cfg.optim, BATCH, method.param_rules())
    sched = build_scheduler(opt, cfg.optim, STEPS, STEPS // EPOCHS)
    return method, opt, sched


def run(run_dir: Path, cfg: DictConfig, method: SSLMethod, opt: Any, sched: Any,
        state: TrainState | None = None) -> TrainState:
    loader = train_loader(dataset(), BATCH, seed=SEED)
    settings = LoopSettings(epochs=EPOCHS, total_steps=STEPS, steps_per_epoch=STEPS // EPOCHS, log_every=1,
                            checkpoint_every=0, precision="32", channels_last=False)
    return fit(FitInputs(method, loader, make_views, opt, sched, WORLD, settings, run_dir, NullLogger(),
                         checkpoint_extra={"config": to_yaml(cfg)}), state)


def straight_and_resumed(tmp_path: Path, cfg: DictConfig, cls: type[SSLMethod], monkeypatch: pytest.MonkeyPatch,
                         on_step: Callable[[SSLMethod, float], None] | None = None,
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Path]:
    """The method's state after STEPS uninterrupted steps and after a run stopped by SIGINT at step 6
    (in epoch 1) and resumed from its checkpoint; and the resumed run's directory. `on_step(method,
    progress)` is called after each `after_step` of the straight run."""
    original = cls.after_step

    def recording(self: SSLMethod, progress: float) -> None:
        original(self, progress)
        if on_step is not None:
            on_step(self, progress)

    monkeypatch.setattr(cls, "after_step", recording)
    torch.manual_seed(123)
    method, opt, sched = parts(cfg)
    assert run(tmp_path / "straight", cfg, method, opt, sched).step == STEPS
    straight = {k: v.clone() for k, v in method.state_dict().items()}

    def stop_at_step_6(self: SSLMethod, progress: float) -> None:
        original(self, progress)
        if progress == pytest.approx(6 / STEPS):
            os.kill(os.getpid(), signal.SIGINT)  # epoch 1, after 2 of its 4 batches: stop at this step's end

    monkeypatch.setattr(cls, "after_step", stop_at_step_6)
    torch.manual_seed(123)
    method, opt, sched = parts(cfg)
    with pytest.raises(Interrupted):
        run(tmp_path / "resumed", cfg, method, opt, sched)
    monkeypatch.setattr(cls, "after_step", original)
    saved = ckpt.load(tmp_path / "resumed")
    assert saved["state"] == {"epoch": 1, "step": 6, "batch_in_epoch": 2}

    torch.manual_seed(999)  # the checkpoint's RNG state, not this, must drive the rest
    method, opt, sched = parts(cfg)
    state = run(tmp_path / "resumed", cfg, method, opt, sched, restore(saved, method, opt, sched, None))
    assert state.step == STEPS
    return straight, {k: v.clone() for k, v in method.state_dict().items()}, tmp_path / "resumed"


def assert_bit_exact(straight: dict[str, torch.Tensor], resumed: dict[str, torch.Tensor]) -> None:
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)
