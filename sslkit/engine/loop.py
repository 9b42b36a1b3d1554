"""The training loop. It drives any SSLMethod through the base class and knows nothing
method-specific: views in, StepOutput out, then backward, optimizer step and `after_step`."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from sslkit.data.loader import resumable_sampler
from sslkit.devices import World, all_reduce_max, all_reduce_mean_
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.logger import RunLogger
from sslkit.engine.parallel import wrap
from sslkit.engine.signals import Interrupted, StopFlag, stop_on_signals
from sslkit.engine.state import TrainState, save_checkpoint
from sslkit.errors import UserError
from sslkit.methods.base import SSLMethod, StepOutput

EpochHook = Callable[[int, nn.Module], dict[str, float]]
#: images (or a list of per-image views from the loader's workers) -> the views of one step
MakeViews = Callable[[Any], Sequence[Tensor]]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    total_steps: int
    steps_per_epoch: int
    log_every: int = 10
    checkpoint_every: int = 500
    precision: str = "32"
    channels_last: bool = False


@dataclass
class FitInputs:
    """Everything `fit` trains with. Rank 0 calls `on_checkpoint` after each checkpoint it writes;
    `epoch_hooks` run at each epoch end on the encoder (e.g. the kNN monitor)."""

    method: SSLMethod
    loader: DataLoader
    make_views: MakeViews
    optimizer: Optimizer
    scheduler: LRScheduler
    world: World
    settings: LoopSettings
    run_dir: Path
    logger: RunLogger
    scaler: torch.amp.GradScaler | None = None
    checkpoint_extra: dict[str, Any] = field(default_factory=dict)
    epoch_hooks: Sequence[EpochHook] = ()
    on_checkpoint: Callable[[], None] | None = None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16/fp16 autocast where the device supports it; a no-op otherwise (fp16 on CPU, "32")."""
    if precision == "bf16" and (device.type == "cpu" or torch.cuda.is_bf16_supported()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, list | tuple):
        return [_to_device(b, device) for b in batch]
    return batch.to(device, non_blocking=True)


def _memory_format(views: Sequence[Tensor], channels_last: bool) -> Sequence[Tensor]:
    if not channels_last:
        return views
    return [v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for v in views]


def fit(inputs: FitInputs, state: TrainState | None = None) -> TrainState:
    """Train until `settings.epochs` or `settings.total_steps`; checkpoint every N steps and each epoch.

    SIGINT, SIGTERM and SIGUSR1 stop it at the next step boundary: the step in progress finishes
    (including `after_step`), a checkpoint is written and `Interrupted` is raised.

    The run draws from the global RNGs (augmentations, dropout); however it ends, the caller gets them
    back as they were, as it gets its signal handlers back."""
    loop = _Loop(inputs, state or TrainState())
    outside = ckpt.rng_state()
    with stop_on_signals() as flag:
        try:
            return loop.run(flag)
        except KeyboardInterrupt:  # a second Ctrl-C: stop now; a checkpoint from inside a step would not resume exactly
            last = inputs.run_dir / ckpt.LAST
            raise Interrupted(signal.SIGINT, loop.state.step, last if last.is_file() else None, forced=True) from None
        finally:
            ckpt.set_rng_state(outside)


class _Loop:
    """One `fit`: the epoch loop, and its parts: a step, its log line, an epoch's end, a checkpoint."""

    def __init__(self, inputs: FitInputs, state: TrainState) -> None:
        self.i, self.state = inputs, state
        self.model = wrap(inputs.method, inputs.world)
        self.sampler = resumable_sampler(inputs.loader)
        self.trainable = [p for p in inputs.method.parameters() if p.requires_grad]
        self.window_start, self.window_images = time.time(), 0

    def run(self, flag: StopFlag) -> TrainState:
        i, s, settings = self.i, self.state, self.i.settings
        i.method.train()
        while s.epoch < settings.epochs and s.step < settings.total_steps:
            self.sampler.start_epoch(s.epoch, s.batch_in_epoch)
            stop = 0
            for images, _ in i.loader:
                out = self.step(images)
                if s.step % settings.log_every == 0 or s.step == settings.total_steps:
                    self.log(out)
                if settings.checkpoint_every and s.step % settings.checkpoint_every == 0:
                    self.checkpoint()
                stop = all_reduce_max(flag.signum, i.world.device)  # every rank stops at the same step
                if s.step >= settings.total_steps or stop:
                    break
            if s.batch_in_epoch >= settings.steps_per_epoch:  # a whole epoch, not a step budget, ended
                self.end_epoch()
            if stop and s.step < settings.total_steps:
                path = self.checkpoint()
                self.barrier()  # no rank leaves before rank 0's checkpoint exists
                raise Interrupted(stop, s.step, path)
        self.checkpoint()
        self.barrier()  # every rank returns after rank 0's final checkpoint exists
        return s

    def backward(self, loss: Tensor) -> None:
        (self.i.scaler.scale(loss) if self.i.scaler is not None else loss).backward()

    def step(self, images: Any) -> StepOutput:
        """One optimizer step on one batch: views, forward, backward, gradient sync, step, `after_step`."""
        i, s = self.i, self.state
        views = _memory_format(i.make_views(_to_device(images, i.world.device)), i.settings.channels_last)
        progress = s.step / i.settings.total_steps  # of the steps done before this one
        epoch = s.epoch + s.batch_in_epoch / i.settings.steps_per_epoch  # epochs done, a float
        with autocast(i.world.device, i.settings.precision):
            out: StepOutput = self.model(views, self.backward, progress, epoch)
        if not out.backward_done:
            self.backward(out.loss)
        if self.model is i.method and i.world.size > 1:
            all_reduce_mean_([p.grad for p in self.trainable if p.grad is not None])
        if i.scaler is not None:  # the method's hook sees true gradients (clipping thresholds)
            i.scaler.unscale_(i.optimizer)
        i.method.after_backward(progress)
        if i.scaler is not None:
            i.scaler.step(i.optimizer)
            i.scaler.update()
        else:
            i.optimizer.step()
        i.optimizer.zero_grad(set_to_none=True)
        i.scheduler.step()
        s.step += 1
        s.batch_in_epoch += 1
        i.method.after_step(s.step / i.settings.total_steps)
        self.window_images += self.sampler.batch_size * i.world.size
        i.logger.tick(s.step)
        return out

    def log(self, out: StepOutput) -> None:
        """The step's scalars (mean over ranks), learning rate and throughput; stop on a NaN loss."""
        i, s = self.i, self.state
        scalars = {k: float(v) for k, v in out.logs.items()}
        if i.world.size > 1:  # log (and NaN-check) the mean over ranks, not rank 0's share
            vals = torch.tensor(list(scalars.values()), dtype=torch.float64, device=i.world.device)
            all_reduce_mean_([vals])
            scalars = dict(zip(scalars, vals.tolist(), strict=True))
        if not math.isfinite(scalars.get("loss", float(out.loss.detach()))):
            last = i.run_dir / ckpt.LAST
            where = f"last good checkpoint: {last}" if last.is_file() else "no checkpoint was written yet"
            raise TrainingDiverged(f"loss became {scalars.get('loss')} at step {s.step}; lower optim.lr ({where})")
        elapsed = max(time.time() - self.window_start, 1e-9)
        scalars |= {"lr": i.optimizer.param_groups[0]["lr"], "images_per_s": self.window_images / elapsed}
        i.logger.log({"step": s.step, "epoch": s.epoch, **scalars})
        stalled = i.method.stall_check(s.step, scalars)  # the method's own health check
        if stalled:
            i.logger.message(stalled)
        i.logger.progress(s.step, scalars)
        self.window_start, self.window_images = time.time(), 0

    def end_epoch(self) -> None:
        """Next epoch: run the epoch hooks, log what they measured, checkpoint."""
        i, s = self.i, self.state
        s.epoch += 1
        s.batch_in_epoch = 0
        record: dict[str, float] = {}
        for hook in i.epoch_hooks:
            record |= hook(s.epoch, i.method.encoder())
        if record:
            i.logger.log({"step": s.step, "epoch": s.epoch, **record})
            i.logger.message(f"epoch {s.epoch}: " + " ".join(f"{k}={v:.4g}" for k, v in record.items()))
        i.method.train()
        self.checkpoint()

    def checkpoint(self) -> Path:
        """Rank 0 writes the checkpoint; under torchrun it holds every rank's RNG state (`rng_ranks`),
        gathered here from all ranks (every rank calls this), so each rank resumes its own stream."""
        i = self.i
        extra = i.checkpoint_extra
        if i.world.size > 1:
            states: list[Any] | None = [None] * i.world.size if i.world.is_main else None
            torch.distributed.gather_object(ckpt.rng_state(), states, dst=0)
            extra = {**extra, "rng_ranks": states}
        if i.world.is_main:
            save_checkpoint(i.run_dir, i.method, i.optimizer, i.scheduler, i.scaler, self.state, extra)
            if i.on_checkpoint is not None:
                i.on_checkpoint()
        return i.run_dir / ckpt.LAST

    def barrier(self) -> None:
        if self.i.world.size > 1:
            torch.distributed.barrier()
