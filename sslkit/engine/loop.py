"""The training loop. It drives any ContrastiveMethod through the base class and knows nothing
method-specific: views in, StepOutput out, then backward, optimizer step and `after_step`."""

from __future__ import annotations

import contextlib
import inspect
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from sslkit.contrastive.distributed import all_reduce_mean_, broadcast_
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.distributed import World
from sslkit.engine.logger import RunLogger
from sslkit.engine.signals import Interrupted, StopFlag, stop_on_signals
from sslkit.errors import UserError
from sslkit.methods.base import ContrastiveMethod

EpochHook = Callable[[int, nn.Module], dict[str, float]]
MakeViews = Callable[[Any], Sequence[Tensor]]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class TrainState:
    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    total_steps: int
    log_every: int = 10
    checkpoint_every: int = 500
    precision: str = "32"
    channels_last: bool = False


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


def save_checkpoint(run_dir: Path, method: ContrastiveMethod, optimizer: Optimizer, scheduler: LRScheduler,
                    scaler: torch.amp.GradScaler | None, state: TrainState, extra: dict[str, Any]) -> Path:
    path = run_dir / ckpt.LAST
    ckpt.save_atomic({
        "format": ckpt.FORMAT, "version": ckpt.VERSION, **extra,
        "method": method.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": ckpt.rng_state(), "state": asdict(state),
    }, path, keep_previous=run_dir / ckpt.PREV)
    return path


def restore(checkpoint: dict[str, Any], method: ContrastiveMethod, optimizer: Optimizer, scheduler: LRScheduler,
            scaler: torch.amp.GradScaler | None) -> TrainState:
    """Load a checkpoint written by `save_checkpoint` into freshly built objects."""
    method.load_state_dict(checkpoint["method"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler") is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    ckpt.set_rng_state(checkpoint["rng"])
    return TrainState(**checkpoint["state"])


def _wrap(method: ContrastiveMethod, world: World) -> nn.Module:
    if world.size == 1:
        return method
    for tensor in method.state_dict().values():  # every rank starts from rank 0's weights, queue, buffers
        broadcast_(tensor)
    if method.custom_backward:  # gradient caching runs several backwards; sync grads by hand instead
        return method
    ids = [world.device.index] if world.device.type == "cuda" else None
    # Buffers (queue, BN statistics) were broadcast once above; syncing them every forward would
    # send the whole queue each step. torch >= 2.14 names the switch forward_sync_buffers.
    no_sync = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(method, device_ids=ids, **no_sync)


def _stop_requested(flag: StopFlag, world: World) -> int:
    """The signal that asked to stop (0: none); under torchrun every rank agrees (max over ranks)."""
    if world.size == 1:
        return flag.signum
    t = torch.tensor([flag.signum], dtype=torch.int64, device=world.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def fit(method: ContrastiveMethod, loader: DataLoader, make_views: MakeViews, optimizer: Optimizer,
        scheduler: LRScheduler, world: World, settings: LoopSettings, run_dir: Path, logger: RunLogger,
        state: TrainState | None = None, scaler: torch.amp.GradScaler | None = None,
        checkpoint_extra: dict[str, Any] | None = None, epoch_hooks: Sequence[EpochHook] = (),
        on_checkpoint: Callable[[], None] | None = None) -> TrainState:
    """Train until `settings.epochs` or `settings.total_steps`; checkpoint every N steps and each epoch
    (rank 0 calls `on_checkpoint` after each one).

    SIGINT, SIGTERM and SIGUSR1 stop it at the next step boundary: the step in progress finishes
    (including `after_step`), a checkpoint is written and `Interrupted` is raised."""
    state = state or TrainState()
    with stop_on_signals() as flag:
        try:
            return _fit(method, loader, make_views, optimizer, scheduler, world, settings, run_dir, logger, state,
                        scaler, checkpoint_extra or {}, epoch_hooks, flag, on_checkpoint)
        except KeyboardInterrupt:  # a second Ctrl-C: stop now; a checkpoint from inside a step would not resume exactly
            last = run_dir / ckpt.LAST
            raise Interrupted(signal.SIGINT, state.step, last if last.is_file() else None, forced=True) from None


def _fit(method: ContrastiveMethod, loader: DataLoader, make_views: MakeViews, optimizer: Optimizer,
         scheduler: LRScheduler, world: World, settings: LoopSettings, run_dir: Path, logger: RunLogger,
         state: TrainState, scaler: torch.amp.GradScaler | None, extra: dict[str, Any],
         epoch_hooks: Sequence[EpochHook], flag: StopFlag,
         on_checkpoint: Callable[[], None] | None = None) -> TrainState:
    model = _wrap(method, world)
    method.set_backward(lambda loss: (scaler.scale(loss) if scaler is not None else loss).backward())
    batch_sampler = loader.batch_sampler
    sampler, per_rank_batch = batch_sampler.sampler, batch_sampler.batch_size  # type: ignore[union-attr]
    trainable = [p for p in method.parameters() if p.requires_grad]
    steps_per_epoch = sampler.num_samples // per_rank_batch  # type: ignore[attr-defined]

    def checkpoint() -> Path:
        if world.is_main:
            save_checkpoint(run_dir, method, optimizer, scheduler, scaler, state, extra)
            if on_checkpoint is not None:
                on_checkpoint()
        return run_dir / ckpt.LAST

    method.train()
    window_start, window_images = time.time(), 0
    stop = 0
    while state.epoch < settings.epochs and state.step < settings.total_steps:
        sampler.set_epoch(state.epoch)  # type: ignore[attr-defined]
        sampler.skip = state.batch_in_epoch * per_rank_batch  # type: ignore[attr-defined]
        for images, _ in loader:
            views = _memory_format(make_views(_to_device(images, world.device)), settings.channels_last)
            with autocast(world.device, settings.precision):
                out = model(views)
            if not out.backward_done:
                method._backward(out.loss)
            if model is method and world.size > 1:
                all_reduce_mean_([p.grad for p in trainable if p.grad is not None])
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state.step += 1
            state.batch_in_epoch += 1
            method.after_step(state.step / settings.total_steps)
            window_images += per_rank_batch * world.size
            logger.tick(state.step)
            if state.step % settings.log_every == 0 or state.step == settings.total_steps:
                scalars = {k: float(v) for k, v in out.logs.items()}
                if world.size > 1:  # log (and NaN-check) the mean over ranks, not rank 0's share
                    vals = torch.tensor(list(scalars.values()), dtype=torch.float64, device=world.device)
                    all_reduce_mean_([vals])
                    scalars = dict(zip(scalars, vals.tolist(), strict=True))
                if not math.isfinite(scalars.get("loss", float(out.loss.detach()))):
                    last = run_dir / ckpt.LAST
                    where = (f"last good checkpoint: {last}" if last.is_file()
                             else "no checkpoint was written yet")
                    raise TrainingDiverged(f"loss became {scalars.get('loss')} at step {state.step}; lower "
                                           f"optim.lr ({where})")
                elapsed = max(time.time() - window_start, 1e-9)
                scalars |= {"lr": optimizer.param_groups[0]["lr"], "images_per_s": window_images / elapsed}
                logger.log({"step": state.step, "epoch": state.epoch, **scalars})
                stalled = method.stall_check(state.step, scalars)  # the method's own health check
                if stalled:
                    logger.message(stalled)
                logger.progress(state.step, scalars)
                window_start, window_images = time.time(), 0
            if settings.checkpoint_every and state.step % settings.checkpoint_every == 0:
                checkpoint()
            stop = _stop_requested(flag, world)
            if state.step >= settings.total_steps or stop:
                break
        if state.batch_in_epoch >= steps_per_epoch:  # a whole epoch, not a step budget, ended
            state.epoch += 1
            state.batch_in_epoch = 0
            record: dict[str, float] = {}
            for hook in epoch_hooks:
                record |= hook(state.epoch, method.encoder())
            if record:
                logger.log({"step": state.step, "epoch": state.epoch, **record})
                logger.message(f"epoch {state.epoch}: " + " ".join(f"{k}={v:.4g}" for k, v in record.items()))
            method.train()
            checkpoint()
        if stop and state.step < settings.total_steps:
            path = checkpoint()
            if world.size > 1:
                torch.distributed.barrier()  # no rank leaves before rank 0's checkpoint exists
            raise Interrupted(stop, state.step, path)
    checkpoint()
    if world.size > 1:
        torch.distributed.barrier()  # every rank returns after rank 0's final checkpoint exists
    return state
