"""`sslkit train <overrides>`: compose (or take a checkpoint's config to resume), check, start torchrun
for several devices, and train."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sslkit.config import GROUPS, check_values, compose, leaf_keys, trust_command_line, warn_unused
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.outputs import claim_run_dir
from sslkit.errors import ConfigError, closest
from sslkit.overrides import check_form, last_value


def train_command(overrides: list[str]) -> int:
    """Train with `overrides`; the exit code. batch-compare's child processes call this too."""
    check_form(overrides)
    resume = last_value(overrides, "trainer.resume")
    cfg, saved = resume_config(resume, overrides) if resume else (compose(overrides), None)
    devices = int(cfg.trainer.devices)
    if "WORLD_SIZE" not in os.environ:  # checks that must not wait for torchrun's workers
        warn_unused("train", overrides)
        check_launch(cfg, devices, resumed=saved is not None)
    if devices > 1 and "WORLD_SIZE" not in os.environ:
        from sslkit.engine.distributed import launch_torchrun

        return launch_torchrun(devices, ["train", *overrides])
    from sslkit.app.train import train

    train(cfg, saved)
    return 0


def check_launch(cfg: DictConfig, devices: int, resumed: bool) -> None:
    """Device, batch and out= checks, before torchrun starts any worker."""
    spec = str(cfg.device)
    if devices > 1 and spec.startswith("cuda:"):
        raise ConfigError(f"device={spec} puts all {devices} processes on one GPU; with trainer.devices={devices} "
                          "use device=auto or device=cuda (rank i uses GPU i)")
    batch = int(cfg.data.batch_size)
    if devices > 1 and batch % devices:
        raise ConfigError(f"data.batch_size={batch} must be divisible by trainer.devices={devices}")
    if cfg.out and not resumed:
        claim_run_dir(Path(str(cfg.out)), bool(cfg.trainer.get("overwrite", False)))


def resume_config(resume: str, overrides: list[str]) -> tuple[DictConfig, dict[str, Any]]:
    """The checkpoint's own config with this command's key=value overrides applied on top, and the checkpoint.

    The checkpoint's names are checked first: a `module:Class` method it names is refused, not
    imported, unless this command line gives it again (sslkit/registry.py, docs/security.md)."""
    from sslkit.registry import resolve_method

    saved, run_dir = ckpt.load_run(resume)
    cfg = ckpt.config_of(saved)
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
    return cfg, saved
