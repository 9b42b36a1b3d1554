"""What an `sslkit eval` command evaluates: its composed config (the checkpoint's data and backbone
unless the command line chose other data), the checkpoint, and the output directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sslkit import overrides as ov
from sslkit.config import as_dict, compose, group_options
from sslkit.devices import pick_device
from sslkit.engine import checkpoint as ckpt_io
from sslkit.engine.outputs import check_links, timestamped, writable_dir
from sslkit.errors import CheckpointError, ConfigError
from sslkit.evaluation.context import EvalContext, TrainedBackbone, load_trained
from sslkit.plan import replaced


def eval_config(name: str, overrides: list[str], trained: TrainedBackbone | None) -> DictConfig:
    """Compose with `eval=<name>`; without a `data=` override the checkpoint's data config is used,
    with the command line's `data.*` keys re-applied on top. Read-only, as every composed config."""
    keys = ov.keys(overrides)  # the one parse of the command line here (compose reuses it)
    if any(k == "eval" and group for k, group in keys):
        raise ConfigError("choose the evaluation with the subcommand (sslkit eval knn|linear|batch-compare), "
                          "not with eval=...")
    extra = [f"eval={name.replace('-', '_')}"]
    saved_data: Any = trained.config.get("data") if trained is not None else None
    use_saved_data = saved_data is not None and not any(k == "data" and group for k, group in keys)
    if use_saved_data and str(saved_data.name) in group_options("data"):  # validate data.* keys against it
        extra.append(f"data={saved_data.name}")
    cfg = compose(overrides, extra=extra)
    if trained is None:
        return cfg
    _check_backbone(keys, cfg, trained)
    values: dict[str, object] = {"backbone": as_dict(trained.config.backbone)}
    if use_saved_data:
        data = OmegaConf.create(as_dict(saved_data))
        for key, _ in keys:
            if key.startswith("data."):
                OmegaConf.update(data, key[len("data."):], OmegaConf.select(cfg, key), force_add=True)
        values["data"] = as_dict(data)
    return replaced(cfg, values)


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
        return writable_dir(Path(str(cfg.out)))
    if checkpoint is not None:
        return check_links(ckpt_io.run_dir_of(checkpoint)) / "eval"
    return timestamped(name)


def load_context(name: str, overrides: list[str]) -> EvalContext:
    """Compose, load the checkpoint (`checkpoint=`) and decide the output directory.

    Only the raw-pixel kNN baseline (`eval.features=pixels`) runs without a checkpoint."""
    checkpoint = ov.last_value(overrides, "checkpoint")
    trained = load_trained(checkpoint) if checkpoint else None
    cfg = eval_config(name, overrides, trained)
    pixels = name == "knn" and str(cfg.eval.get("features", "backbone")) == "pixels"
    if trained is None and not pixels:
        hint = " (or eval.features=pixels for the raw-pixel baseline)" if name == "knn" else ""
        raise CheckpointError(f"sslkit eval {name} needs checkpoint=<run dir or .pt>{hint}")
    file = trained.file if trained is not None else None
    return EvalContext(name, cfg, as_dict(cfg.data), trained, output_dir(cfg, name, file),
                       pick_device(str(cfg.device), 0))
