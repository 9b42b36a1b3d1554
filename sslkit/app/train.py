"""`sslkit train`: config -> data -> method -> engine.fit -> run directory."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from sslkit.app.export import export_backbone
from sslkit.augment import AugRecipe, BatchedAugment, MultiView, per_image_transform, resolve_backend
from sslkit.augment.views import BatchedViews, PerImageViews, views_from_config
from sslkit.build import build_method
from sslkit.config import as_dict
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
from sslkit.engine.outputs import check_links, claim_run_dir, default_run_dir
from sslkit.engine.schedule import build_scheduler
from sslkit.engine.state import TrainState, restore
from sslkit.errors import ConfigError
from sslkit.files import tensor_bytes, write_text_atomic
from sslkit.methods.base import SSLMethod
from sslkit.plan import RunPlan, make_plan


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def claim_new_run(cfg: DictConfig) -> Path:
    """The directory of a new run, claimed (the one call of claim_run_dir on the train path):
    `out=`, else runs/<time>_<method>_<backbone>."""
    path = Path(str(cfg.out)) if cfg.out else default_run_dir(str(cfg.method.name), as_dict(cfg.backbone))
    return claim_run_dir(path, bool(cfg.trainer.get("overwrite", False)))


def new_run_dir(cfg: DictConfig, world: World) -> Path:
    """A new run's directory when the caller has not claimed one (a direct `train(cfg)`, a user's
    own torchrun): rank 0 claims it; the same path on every rank."""
    path = claim_new_run(cfg) if world.is_main else Path()
    if world.size > 1:
        holder = [str(path)]
        dist.broadcast_object_list(holder, src=0)
        path = Path(holder[0])
    return path


def _views_maker(cfg: DictConfig, dataset: Any, method: SSLMethod, device: torch.device) -> tuple[Any, MakeViews]:
    """The views of a step: the config's `views` (named view recipes, each with its size and count) or
    the method's `n_views` copies of the `aug` recipe; made in DataLoader workers (per-image backend) or
    on the batch (batched backend)."""
    backend = resolve_backend(str(cfg.aug.backend), bool(getattr(dataset, "in_memory", False)))
    if cfg.get("views") is None:
        recipe = AugRecipe.from_config(as_dict(cfg.aug))
        n_views = method.n_views
        if method.needs_local_views:
            raise ConfigError(f"method '{cfg.method.name}' needs local crops but views=null gives {n_views} "
                              f"global views; use views=dino or views={{set: swav, n_local: 6}}")
        if backend == "per_image":  # workers make the views
            return dataset.with_transform(MultiView(per_image_transform(recipe), n_views)), lambda views: views
        aug = BatchedAugment(recipe).to(device)
        return dataset, lambda images: [aug(images) for _ in range(n_views)]
    raw = OmegaConf.to_container(cfg.views, resolve=True) if isinstance(cfg.views, DictConfig | ListConfig) \
        else str(cfg.views)
    specs = views_from_config(raw, int(cfg.data.image_size), list(cfg.data.mean), list(cfg.data.std))  # type: ignore[arg-type]
    if method.needs_local_views and not any(s.recipe.image_size < int(cfg.data.image_size) for s in specs):
        raise ConfigError(f"method '{cfg.method.name}' needs local crops but views={raw} has none; "
                          f"use views={{set: {raw if isinstance(raw, str) else 'dino'}, n_local: 6}} or more")
    if backend == "per_image":
        return dataset.with_transform(PerImageViews(specs)), lambda views: views
    batched = BatchedViews(specs).to(device)
    return dataset, lambda images: batched(images)


def _monitor_hooks(cfg: DictConfig, world: World) -> list[Callable[[int, nn.Module], dict[str, float]]]:
    every = int(cfg.trainer.monitor_every_epochs or 0)
    if every <= 0 or not world.is_main:
        return []
    from sslkit.evaluation.monitor import KnnMonitor

    return [KnnMonitor(cfg, world.device, every)]


def _plot_callback(run_dir: Path, world: World) -> Callable[[], None]:
    from sslkit.evaluation.plots import training_plot_callback

    return training_plot_callback(run_dir) if world.is_main else lambda: None


def train(cfg: DictConfig, resume_from: dict[str, Any] | None = None, run_dir: Path | None = None) -> Path:
    """Train `cfg.method` (a composed, read-only config); return the run directory. `resume_from` is a
    loaded checkpoint; `run_dir` a new run's directory already claimed (sslkit.app.launch)."""
    world = init_world(str(cfg.device))
    try:
        return _train(cfg, world, resume_from, run_dir)
    finally:
        shutdown()


def _method_on_device(cfg: DictConfig, world: World, dataset: Any) -> tuple[SSLMethod, Any, MakeViews,
                                                                             Machine]:
    """The method (on its device, SyncBN and channels_last applied), the dataset, its views and the machine fit."""
    method = build_method(cfg, world.size)
    dataset, make_views = _views_maker(cfg, dataset, method, world.device)
    machine = fit_to_machine(cfg, world.device, method.encoder(), not getattr(dataset, "in_memory", False),
                             world_size=world.size)
    if cfg.trainer.sync_bn and world.size > 1:
        if world.device.type != "cuda":
            raise ConfigError("trainer.sync_bn=true needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                              "on CPU MoCo uses shuffle-BN across ranks instead")
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    method.to(world.device)
    if machine.channels_last:  # NHWC: faster convolutions on GPUs and on oneDNN CPUs
        method.to(memory_format=torch.channels_last)
    return method, dataset, make_views, machine


def planned_steps(cfg: DictConfig, spe: int) -> int:
    """The run's total steps from trainer.epochs and trainer.max_steps (before any time budget)."""
    total = spe * int(cfg.trainer.epochs)
    if cfg.trainer.max_steps is not None:
        total = min(total, int(cfg.trainer.max_steps))
    if total <= 0:
        raise ConfigError(f"nothing to train: trainer.epochs={cfg.trainer.epochs}, "
                          f"trainer.max_steps={cfg.trainer.max_steps}")
    return total


def _settings(cfg: DictConfig, spe: int, total: int, precision: str, channels_last: bool) -> LoopSettings:
    t = cfg.trainer
    return LoopSettings(epochs=int(t.epochs), total_steps=total, steps_per_epoch=spe,
                        log_every=int(t.log_every_steps), checkpoint_every=int(t.checkpoint_every_steps),
                        precision=precision, channels_last=channels_last)


def loop_settings(plan: RunPlan) -> LoopSettings:
    """What the loop reads of the plan."""
    return _settings(plan.config, plan.steps_per_epoch, plan.total_steps, plan.precision, plan.channels_last)


def _trial(cfg: DictConfig, method: SSLMethod, loader: DataLoader, make_views: MakeViews, world: World,
           settings: LoopSettings, scaler: torch.amp.GradScaler | None) -> FitInputs:
    """What the time budget is measured on: a copy of the method with its own optimizer and schedule."""
    trial = copy.deepcopy(method)
    optimizer = build_optimizer(trial, cfg.optim, int(cfg.data.batch_size), trial.param_rules())
    scheduler = build_scheduler(optimizer, cfg.optim, time_budget.TRIAL_STEPS, settings.steps_per_epoch)
    return FitInputs(trial, loader, make_views, optimizer, scheduler, world, settings, Path(), NullLogger(), scaler)


def _fit_budget(trial: FitInputs, began: float, minutes: float) -> tuple[int, str]:
    """The total steps that end within `trainer.time_budget`, and a note for the first line (the plan
    records the total as trainer.max_steps, so config.yaml, the checkpoints and a resume keep it)."""
    step_s = time_budget.seconds_per_step(trial)
    settings, world = trial.settings, trial.world
    planned = [time_budget.steps_within(minutes * 60, time_budget.clock() - began, step_s)]
    if world.size > 1:  # every rank runs rank 0's plan
        dist.broadcast_object_list(planned, src=0)
    total = min(settings.total_steps, int(planned[0]))
    return total, f" (trainer.time_budget={minutes:g} min at {step_s:.3g} s/step)"


def _prepare_run_dir(plan: RunPlan, world: World, run_dir: Path, state: TrainState, resumed: bool,
                     method: SSLMethod, rng_ranks: list[Any] | None = None) -> None:
    """Write config.yaml (the plan) into `run_dir` (after a free-space check, atomically) and seed each
    rank's augmentations: a resumed rank keeps the checkpoint's RNG state (its own where the checkpoint
    holds every rank's: an exact resume), a new run's ranks start apart."""
    seed = int(plan.config.seed)
    if not resumed:
        seed_everything(seed + 1000 * world.rank + 1)  # different augmentations per rank
    elif world.rank > 0 and rng_ranks is not None and len(rng_ranks) == world.size:
        ckpt.set_rng_state(rng_ranks[world.rank])  # this rank's own stream, where it stopped
    elif world.rank > 0:  # a checkpoint without this rank's state (another world size): keep the ranks apart
        seed_everything(seed + 1000 * world.rank + 1 + state.step)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        check_links(run_dir)  # a resumed (perhaps downloaded) run dir: never write through a link out of it
        ckpt.check_free_space(run_dir, checkpoint_bytes(method))
        ckpt.remove_stale_temps(run_dir)  # what a run killed inside a save left
        write_text_atomic(plan.to_yaml(), run_dir / "config.yaml")


def _train(cfg: DictConfig, world: World, resume_from: dict[str, Any] | None, claimed: Path | None) -> Path:
    began = time_budget.clock()
    resumed = resume_from is not None  # the one decision; a resume keeps its total and its run dir
    seed_everything(int(cfg.seed))  # the same initial weights and queue on every rank
    dataset = build_dataset(cfg.data, "pretrain", allow_import=None if resumed else True)  # a file names no code
    method, dataset, make_views, machine = _method_on_device(cfg, world, dataset)
    batch, drop_last = int(cfg.data.batch_size), bool(cfg.data.get("drop_last", True))
    loader = train_loader(dataset, batch, world=world.size, rank=world.rank, seed=int(cfg.seed),
                          num_workers=machine.workers, drop_last=drop_last)
    spe = steps_per_epoch(len(dataset), batch, world.size, drop_last)
    total, budget_note = planned_steps(cfg, spe), ""
    scaler = torch.amp.GradScaler("cuda") if machine.precision == "fp16" and world.device.type == "cuda" else None
    minutes = None if resumed else time_budget.budget_minutes(cfg.trainer.get("time_budget"))
    if resumed:
        run_dir = Path(str(cfg.out))
    else:  # claimed before the budget is timed: a refused out= costs no timed steps
        run_dir = claimed if claimed is not None else new_run_dir(cfg, world)
        if minutes is not None:
            settings = _settings(cfg, spe, total, machine.precision, machine.channels_last)
            total, budget_note = _fit_budget(_trial(cfg, method, loader, make_views, world, settings, scaler),
                                             began, minutes)
    plan = make_plan(cfg, precision=machine.precision, channels_last=machine.channels_last, threads=machine.threads,
                     workers=machine.workers, steps_per_epoch=spe, total_steps=total, time_budget=minutes)
    settings = loop_settings(plan)
    optimizer = build_optimizer(method, plan.config.optim, batch, method.param_rules())
    scheduler = build_scheduler(optimizer, plan.config.optim, settings.total_steps, settings.steps_per_epoch)
    state = restore(resume_from, method, optimizer, scheduler, scaler) if resume_from is not None else TrainState()
    _prepare_run_dir(plan, world, run_dir, state, resumed, method,
                     resume_from.get("rng_ranks") if resume_from is not None else None)
    logger = (RunLogger(run_dir, settings.total_steps, state.step, str(plan.config.trainer.progress)) if world.is_main
              else NullLogger())
    logger.message(f"sslkit: {plan.method} on {plan.config.data.name} ({len(dataset)} images), {world.size} x "
                   f"{world.device.type}, batch {batch}, {settings.total_steps} steps{budget_note}, "
                   f"{machine.describe()}, run dir {run_dir}")
    if machine.warning:
        logger.message(machine.warning)
    if "queue_size" in cfg.method and (notice := queue_notice(int(cfg.method.queue_size), len(dataset))):
        logger.message(notice)  # K >= N: a query's own stale keys are among its negatives
    start, start_step = time.time(), state.step
    inputs = FitInputs(method, loader, make_views, optimizer, scheduler, world, settings, run_dir, logger, scaler,
                       {"config": plan.to_yaml()}, _monitor_hooks(plan.config, world), _plot_callback(run_dir, world))
    try:
        state = fit(inputs, state)
    finally:
        logger.close()
    if world.is_main:
        _finish(method, run_dir, world, state.step - start_step, state.step, time.time() - start, bad_count(dataset))
    return run_dir


def _finish(method: SSLMethod, run_dir: Path, world: World, done: int, step: int, seconds: float,
            bad: int) -> None:
    """backbone.pt, training.png and the last line."""
    export_backbone(method.encoder(), run_dir / "backbone.pt")
    _plot_callback(run_dir, world)()  # training.png for every run
    what = f"trained {done} steps (now at step {step})" if done != step else f"trained {done} steps"
    if done == 0:
        what = f"nothing to train: the run already ended at step {step}"
    skipped = f"; skipped {bad} unreadable image{'s' if bad != 1 else ''} (warned above)" if bad else ""
    print(f"{what} in {seconds:.0f}s{skipped}; run dir: {run_dir}", flush=True)


def checkpoint_bytes(method: SSLMethod) -> int:
    """Disk a run needs for checkpoints: last.pt, prev.pt and the one being written (each about the
    method's state plus one optimizer buffer per trainable parameter), and backbone.pt."""
    state = tensor_bytes(dict(method.state_dict()))
    trainable = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    return 3 * (state + trainable) + tensor_bytes(dict(method.encoder().state_dict()))
