"""What one evaluation works on: the composed config, the checkpoint's backbone, the data and where
results go."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslkit.config import as_dict, compose, group_options
from sslkit.engine import checkpoint as ckpt_io
from sslkit.engine.distributed import pick_device
from sslkit.errors import CheckpointError, ConfigError


@dataclass
class TrainedBackbone:
    """A checkpoint's backbone and the config it was trained with."""

    file: Path
    config: DictConfig
    backbone: nn.Module

    @property
    def name(self) -> str:
        b = self.config.backbone
        return str(b.timm_name if b.name == "timm" else b.name)


@dataclass
class EvalContext:
    """`cfg` is the composed config; `data` the data config the evaluation uses (the checkpoint's
    unless the command line chose another), `trained` is None for the raw-pixel baseline."""

    name: str
    cfg: DictConfig
    data: dict[str, Any]
    trained: TrainedBackbone | None
    out_dir: Path
    device: torch.device

    @property
    def cache_dir(self) -> Path:
        return self.out_dir / "cache"

    @property
    def checkpoint(self) -> Path | None:
        return self.trained.file if self.trained is not None else None


def load_trained(path: str | Path) -> TrainedBackbone:
    """Load a checkpoint on the CPU and rebuild its backbone from the checkpoint's own config."""
    from sslkit.build import backbone_from_state

    file = ckpt_io.resolve(path)
    state = ckpt_io.load(file)
    if "config" not in state or "method" not in state:
        raise CheckpointError(f"{file} has no saved config or method weights; is it from `sslkit train`?")
    config = OmegaConf.create(state["config"])
    assert isinstance(config, DictConfig)
    return TrainedBackbone(file.resolve(), config, backbone_from_state(config, state["method"]))


def parse_keys(overrides: list[str]) -> list[tuple[str, bool]]:
    """(key or group, is a group choice) for every override, as Hydra parses them."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"cannot parse overrides {overrides}: {str(exc).splitlines()[0]}") from None
    return [(ov.key_or_group, "." not in ov.key_or_group and not ov.is_delete()) for ov in parsed]


def eval_config(name: str, overrides: list[str], trained: TrainedBackbone | None) -> DictConfig:
    """Compose with `eval=<name>`; without a `data=` override the checkpoint's data config is used,
    with the command line's `data.*` keys re-applied on top."""
    keys = parse_keys(overrides)
    if any(k == "eval" and group for k, group in keys):
        raise ConfigError("choose the evaluation with the subcommand (sslkit eval knn|linear|batch-compare), "
                          "not with eval=...")
    extra = [f"eval={name}"]
    chose_data = any(k == "data" and group for k, group in keys)
    if trained is not None and not chose_data and trained.config.get("data") is not None:
        trained_data = str(trained.config.data.name)
        if trained_data in group_options("data"):  # validate data.* keys against the right group
            extra.append(f"data={trained_data}")
    cfg = compose(overrides, extra=extra)
    if trained is not None and not chose_data and trained.config.get("data") is not None:
        data = OmegaConf.create(as_dict(trained.config.data))
        for key, _ in keys:
            if key.startswith("data."):
                OmegaConf.update(data, key[len("data."):], OmegaConf.select(cfg, key), force_add=True)
        OmegaConf.set_struct(cfg, False)
        cfg.data = data
    if trained is not None:
        _check_backbone(keys, cfg, trained)
        OmegaConf.set_struct(cfg, False)
        cfg.backbone = trained.config.backbone
    return cfg


def _check_backbone(keys: list[tuple[str, bool]], cfg: DictConfig, trained: TrainedBackbone) -> None:
    """A backbone given on the command line must be the checkpoint's own: an evaluation cannot change it."""
    if not any(k == "backbone" or k.startswith("backbone.") for k, _ in keys):
        return
    given, saved = as_dict(cfg.backbone), as_dict(trained.config.backbone)
    differ = sorted(k for k in set(given) | set(saved) if given.get(k) != saved.get(k))
    if differ:
        k = differ[0]
        raise ConfigError(f"the checkpoint's backbone is {trained.name}, but the command line sets backbone.{k}="
                          f"{given.get(k)} (it has {saved.get(k)}); an evaluation uses the checkpoint's backbone: "
                          "drop the backbone override")


def output_dir(cfg: DictConfig, name: str, checkpoint: Path | None) -> Path:
    """`out=`, else `<run dir>/eval` (beside a checkpoint outside a run dir), else runs/<time>_<name>."""
    if cfg.get("out"):
        from sslkit.engine.outputs import writable_dir

        return writable_dir(Path(str(cfg.out)))
    if checkpoint is not None:
        return ckpt_io.run_dir_of(checkpoint) / "eval"
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}_{name}"


def load_context(name: str, overrides: list[str]) -> EvalContext:
    """Compose, load the checkpoint (`checkpoint=`) and decide the output directory.

    Only the raw-pixel kNN baseline (`eval.features=pixels`) runs without a checkpoint."""
    checkpoint = _checkpoint_override(overrides)
    trained = load_trained(checkpoint) if checkpoint else None
    cfg = eval_config(name, overrides, trained)
    pixels = name == "knn" and str(cfg.eval.get("features", "backbone")) == "pixels"
    if trained is None and not pixels:
        hint = " (or eval.features=pixels for the raw-pixel baseline)" if name == "knn" else ""
        raise CheckpointError(f"sslkit eval {name} needs checkpoint=<run dir or .pt>{hint}")
    file = trained.file if trained is not None else None
    return EvalContext(name, cfg, as_dict(cfg.data), trained, output_dir(cfg, name, file),
                       pick_device(str(cfg.device), 0))


def _checkpoint_override(overrides: list[str]) -> str | None:
    """The last `checkpoint=` value (null or empty: none)."""
    value = None
    for o in overrides:
        key, _, v = o.partition("=")
        if key.lstrip("+") == "checkpoint":
            value = v.strip("'\"")
    return None if value in (None, "", "null") else value
