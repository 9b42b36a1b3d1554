"""`sslkit train`: config -> data -> method -> engine.fit -> run directory."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from sslkit.app.export import export_backbone
from sslkit.augment import AugRecipe, BatchedAugment, MultiView, per_image_transform, resolve_backend
from sslkit.build import build_method
from sslkit.config import as_dict, to_yaml
from sslkit.contrastive.queue import queue_notice
from sslkit.data import bad_count, build_dataset
from sslkit.data.loader import steps_per_epoch, train_loader
from sslkit.devices import World
from sslkit.engine import budget as time_budget
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.distributed import init_world, shutdown
from sslkit.engine.hardware import Machine, fit_to_machine
from sslkit.engine.logger import NullLogger, RunLogger
from sslkit.engine.loop import FitInputs, LoopSettings, MakeViews, fit
from sslkit.engine.optim import build_optimizer
from sslkit.engine.outputs import claim_run_dir, default_run_dir
from sslkit.engine.schedule import build_scheduler
from sslkit.engine.state import TrainState, restore
from sslkit.errors import ConfigError
from sslkit.files import tensor_bytes
from sslkit.methods.base import ContrastiveMethod


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def new_run_dir(cfg: DictConfig, world: World) -> Path:
    """`out=` or runs/<time>_<method>_<backbone>; the same path on every rank."""
    if cfg.out:
        path = Path(str(cfg.out))
        if world.is_main:
            claim_run_dir(path, bool(cfg.trainer.get("overwrite", False)))
    else:
        path = default_run_dir(str(cfg.method.name), as_dict(cfg.backbone))
    if world.size > 1:
        holder = [str(path)]
        dist.broadcast_object_list(holder, src=0)
        path = Path(holder[0])
    return path


def _views_maker(cfg: DictConfig, dataset: Any, n_views: int, device: torch.device) -> tuple[Any, MakeViews]:
    recipe = AugRecipe.from_config(as_dict(cfg.aug))
    backend = resolve_backend(str(cfg.aug.backend), bool(getattr(dataset, "in_memory", False)))
    if backend == "per_image":  # workers make the views
        return dataset.with_transform(MultiView(per_image_transform(recipe), n_views)), lambda views: views
    aug = BatchedAugment(recipe).to(device)
    return dataset, lambda images: [aug(images) for _ in range(n_views)]


def _monitor_hooks(cfg: DictConfig, world: World) -> list[Callable[[int, nn.Module], dict[str, float]]]:
    every = int(cfg.trainer.monitor_every_epochs or 0)
    if every <= 0 or not world.is_main:
        return []
    from sslkit.evaluation.monitor import KnnMonitor

    return [KnnMonitor(cfg, world.device, every)]


def _plot_callback(run_dir: Path, world: World) -> Callable[[], None]:
    from sslkit.evaluation.plots import training_plot_callback

    return training_plot_callback(run_dir) if world.is_main else lambda: None


def train(cfg: DictConfig, resume_from: dict[str, Any] | None = None) -> Path:
    """Train `cfg.method`; return the run directory. `resume_from` is a loaded checkpoint."""
    world = init_world(str(cfg.device))
    try:
        return _train(cfg, world, resume_from)
    finally:
        shutdown()


def _method_on_device(cfg: DictConfig, world: World, dataset: Any) -> tuple[ContrastiveMethod, Any, MakeViews,
                                                                             Machine]:
    """The method (on its device, SyncBN and channels_last applied), the dataset, its views and the machine fit."""
    method = build_method(cfg)
    dataset, make_views = _views_maker(cfg, dataset, method.n_views, world.device)
    machine = fit_to_machine(cfg, world.device, method.encoder(), not getattr(dataset, "in_memory", False))
    if cfg.trainer.sync_bn and world.size > 1:
        if world.device.type != "cuda":
            raise ConfigError("trainer.sync_bn=true needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                              "on CPU MoCo uses shuffle-BN across ranks instead")
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    method.to(world.device)
    if machine.channels_last:  # NHWC: faster convolutions on GPUs and on oneDNN CPUs
        method.to(memory_format=torch.channels_last)
    return method, dataset, make_views, machine


def _settings(cfg: DictConfig, spe: int, machine: Machine) -> LoopSettings:
    total = spe * int(cfg.trainer.epochs)
    if cfg.trainer.max_steps is not None:
        total = min(total, int(cfg.trainer.max_steps))
    if total <= 0:
        raise ConfigError(f"nothing to train: trainer.epochs={cfg.trainer.epochs}, "
                          f"trainer.max_steps={cfg.trainer.max_steps}")
    return LoopSettings(epochs=int(cfg.trainer.epochs), total_steps=total, steps_per_epoch=spe,
                        log_every=int(cfg.trainer.log_every_steps),
                        checkpoint_every=int(cfg.trainer.checkpoint_every_steps),
                        precision=machine.precision, channels_last=machine.channels_last)


def _trial(cfg: DictConfig, method: ContrastiveMethod, loader: DataLoader, make_views: MakeViews, world: World,
           settings: LoopSettings, scaler: torch.amp.GradScaler | None) -> FitInputs:
    """What the time budget is measured on: a copy of the method with its own optimizer and schedule."""
    trial = copy.deepcopy(method)
    optimizer = build_optimizer(trial, cfg.optim, int(cfg.data.batch_size))
    scheduler = build_scheduler(optimizer, cfg.optim, time_budget.TRIAL_STEPS, settings.steps_per_epoch)
    return FitInputs(trial, loader, make_views, optimizer, scheduler, world, settings, Path(), NullLogger(), scaler)


def _fit_budget(cfg: DictConfig, trial: FitInputs, began: float, minutes: float) -> tuple[LoopSettings, str]:
    """Settings whose total steps end within `trainer.time_budget`, and a note for the first line."""
    step_s = time_budget.seconds_per_step(trial)
    settings, world = trial.settings, trial.world
    planned = [time_budget.steps_within(minutes * 60, time_budget.clock() - began, step_s)]
    if world.size > 1:  # every rank runs rank 0's plan
        dist.broadcast_object_list(planned, src=0)
    total = min(settings.total_steps, int(planned[0]))
    OmegaConf.update(cfg, "trainer.max_steps", total)  # recorded in config.yaml and the checkpoint
    return replace(settings, total_steps=total), f" (trainer.time_budget={minutes:g} min at {step_s:.3g} s/step)"


def _prepare_run_dir(cfg: DictConfig, world: World, run_dir: Path, resumed: TrainState | None,
                     method: ContrastiveMethod) -> None:
    """Write config.yaml into `run_dir` (after a free-space check) and seed each rank's augmentations."""
    if resumed is None:
        seed_everything(int(cfg.seed) + 1000 * world.rank + 1)  # different augmentations per rank
    elif world.rank > 0:  # the checkpoint holds rank 0's RNG state; keep the ranks' augmentations apart
        seed_everything(int(cfg.seed) + 1000 * world.rank + 1 + resumed.step)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.check_free_space(run_dir, checkpoint_bytes(method))
        (run_dir / "config.yaml").write_text(to_yaml(cfg))


def _train(cfg: DictConfig, world: World, resume_from: dict[str, Any] | None) -> Path:
    began = time_budget.clock()
    minutes = time_budget.budget_minutes(cfg.trainer.get("time_budget"))
    seed_everything(int(cfg.seed))  # the same initial weights and queue on every rank
    dataset = build_dataset(cfg.data, "pretrain")
    method, dataset, make_views, machine = _method_on_device(cfg, world, dataset)
    batch = int(cfg.data.batch_size)
    loader = train_loader(dataset, batch, world=world.size, rank=world.rank, seed=int(cfg.seed),
                          num_workers=machine.workers)
    settings = _settings(cfg, steps_per_epoch(len(dataset), batch, world.size), machine)
    scaler = torch.amp.GradScaler("cuda") if machine.precision == "fp16" and world.device.type == "cuda" else None
    optimizer = build_optimizer(method, cfg.optim, batch)
    budget_note = ""
    # claimed before the budget is timed: a refused out= costs no timed steps
    run_dir = new_run_dir(cfg, world) if resume_from is None else Path(str(cfg.out))
    if minutes is not None and resume_from is None:  # a resume keeps the total in its config
        trial = _trial(cfg, method, loader, make_views, world, settings, scaler)
        settings, budget_note = _fit_budget(cfg, trial, began, minutes)
    scheduler = build_scheduler(optimizer, cfg.optim, settings.total_steps, settings.steps_per_epoch)
    state = restore(resume_from, method, optimizer, scheduler, scaler) if resume_from is not None else TrainState()
    _prepare_run_dir(cfg, world, run_dir, state if resume_from is not None else None, method)
    logger = (RunLogger(run_dir, settings.total_steps, state.step, str(cfg.trainer.progress)) if world.is_main
              else NullLogger())
    logger.message(f"sslkit: {cfg.method.name} on {cfg.data.name} ({len(dataset)} images), {world.size} x "
                   f"{world.device.type}, batch {batch}, {settings.total_steps} steps{budget_note}, "
                   f"{machine.describe()}, run dir {run_dir}")
    if machine.warning:
        logger.message(machine.warning)
    if "queue_size" in cfg.method and (notice := queue_notice(int(cfg.method.queue_size), len(dataset))):
        logger.message(notice)  # K >= N: a query's own stale keys are among its negatives
    start, start_step = time.time(), state.step
    inputs = FitInputs(method, loader, make_views, optimizer, scheduler, world, settings, run_dir, logger, scaler,
                       {"config": to_yaml(cfg)}, _monitor_hooks(cfg, world), _plot_callback(run_dir, world))
    try:
        state = fit(inputs, state)
    finally:
        logger.close()
    if world.is_main:
        _finish(method, run_dir, world, state.step - start_step, state.step, time.time() - start, bad_count(dataset))
    return run_dir


def _finish(method: ContrastiveMethod, run_dir: Path, world: World, done: int, step: int, seconds: float,
            bad: int) -> None:
    """backbone.pt, training.png and the last line."""
    export_backbone(method.encoder(), run_dir / "backbone.pt")
    _plot_callback(run_dir, world)()  # training.png for every run
    what = f"trained {done} steps (now at step {step})" if done != step else f"trained {done} steps"
    if done == 0:
        what = f"nothing to train: the run already ended at step {step}"
    skipped = f"; skipped {bad} unreadable image{'s' if bad != 1 else ''} (warned above)" if bad else ""
    print(f"{what} in {seconds:.0f}s{skipped}; run dir: {run_dir}", flush=True)


def checkpoint_bytes(method: ContrastiveMethod) -> int:
    """Disk a run needs for checkpoints: last.pt, prev.pt and the one being written (each about the
    method's state plus one optimizer buffer per trainable parameter), and backbone.pt."""
    state = tensor_bytes(dict(method.state_dict()))
    trainable = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    return 3 * (state + trainable) + tensor_bytes(dict(method.encoder().state_dict()))
