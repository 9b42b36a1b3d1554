"""`sslkit train <overrides>`: compose (or take a checkpoint's config to resume), check, start torchrun
for several devices, and train."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sslkit.config import GROUPS, check_values, compose, leaf_keys, trust_command_line, warn_unused
from sslkit.data.loader import check_batch
from sslkit.engine import checkpoint as ckpt
from sslkit.errors import ConfigError, closest
from sslkit.overrides import last_value
from sslkit.plan import frozen, without_plan

#: set by the launching process for torchrun's workers: the run directory it claimed for them
CLAIMED_RUN_DIR = "SSLKIT_CLAIMED_RUN_DIR"


def train_command(overrides: list[str]) -> int:
    """Train with `overrides`; the exit code. batch-compare's child processes call this too (the CLI
    checked the form of a user's overrides once, before; a child's are written by sslkit).

    The launching process (not a torchrun worker) composes, checks and claims the run directory
    once; torchrun's workers are told the directory and claim nothing."""
    resume = last_value(overrides, "trainer.resume")
    cfg, saved = resume_config(resume, overrides) if resume else (compose(overrides), None)
    devices = int(cfg.trainer.devices)
    claimed = os.environ.get(CLAIMED_RUN_DIR)
    run_dir = Path(claimed) if claimed and saved is None else None
    if "WORLD_SIZE" not in os.environ:  # checks that must not wait for torchrun's workers
        warn_unused("train", overrides)
        check_launch(cfg, devices)
        if saved is None:
            from sslkit.app.train import claim_new_run

            run_dir = claim_new_run(cfg)
        if devices > 1:
            from sslkit.engine.distributed import launch_torchrun

            out = [f"out={run_dir}"] if run_dir is not None else []
            env = {CLAIMED_RUN_DIR: str(run_dir)} if run_dir is not None else {}
            return launch_torchrun(devices, ["train", *overrides, *out], env)
    from sslkit.app.train import train

    train(cfg, saved, run_dir)
    return 0


def check_launch(cfg: DictConfig, devices: int) -> None:
    """Device and batch checks, before torchrun starts any worker."""
    spec = str(cfg.device)
    if devices > 1 and spec.startswith("cuda:"):
        raise ConfigError(f"device={spec} puts all {devices} processes on one GPU; with trainer.devices={devices} "
                          "use device=auto or device=cuda (rank i uses GPU i)")
    if devices > 1:
        check_batch(int(cfg.data.batch_size), devices, "trainer.devices")


def resume_config(resume: str, overrides: list[str]) -> tuple[DictConfig, dict[str, Any]]:
    """The checkpoint's own config (its plan's config) with this command's key=value overrides
    applied on top, checked and frozen; and the checkpoint.

    The checkpoint's names are checked first: a `module:Class` method it names is refused, not
    imported, unless this command line gives it again (sslkit/registry.py, docs/security.md)."""
    from sslkit.registry import resolve_method

    saved, run_dir = ckpt.load_run(resume)
    cfg = without_plan(ckpt.config_of(saved))
    trust_command_line(overrides)
    valid = set(leaf_keys(cfg))
    for o in overrides:
        key, _, value = o.partition("=")
        if key in GROUPS:
            raise ConfigError(f"'{o}': config groups cannot change when resuming; start a new run instead")
        if key not in valid and key != "trainer.overwrite":
            best = closest(key, valid)
            raise ConfigError(f"unknown config key '{key}'" + (f"; did you mean '{best}'?" if best else ""))
        OmegaConf.update(cfg, key, OmegaConf.create({"v": value})["v"] if value else None, force_add=True)
    cfg.out = str(run_dir)
    cfg.trainer.resume = str(resume)
    check_values(cfg)
    resolve_method(str(OmegaConf.select(cfg, "method.name", default="")))
    return frozen(cfg), saved
