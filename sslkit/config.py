"""Hydra composition of `configs/` with validation that names the closest valid choice."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sslkit.errors import ConfigError, closest, suggestion
from sslkit.overrides import parse

CONFIG_DIR = Path(str(files("sslkit.configs")))
GROUPS = ("backbone", "head", "aug", "optim", "data", "trainer", "eval", "method", "experiment")
CUSTOM_METHOD = "custom"


def group_options(group: str) -> list[str]:
    """The option names of a config group (its YAML files)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key path of a config, groups included (e.g. `trainer`, `trainer.epochs`)."""
    if not isinstance(node, DictConfig):
        return [prefix]
    keys = [prefix] if prefix else []
    for k in node.keys():
        keys += leaf_keys(node._get_node(k), f"{prefix}.{str(k)}" if prefix else str(k))
    return keys


#: config keys (and group choices) whose value can name code or a remote source: a registry's name
#: (sslkit/registry.py), or a timm model name with a source prefix (`hf-hub:org/model` downloads a config)
NAME_KEYS = ("method", "method.name", "backbone.timm_name")


def trust_command_line(overrides: list[str]) -> None:
    """Mark the `module:Class` values of NAME_KEYS in `overrides` (the user's command line) as the user's:
    the only specs the registry imports (a name read from a file never passes through here)."""
    from sslkit.registry import is_spec, trust_spec

    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key.lstrip("+") in NAME_KEYS and is_spec(value.strip("'\"")):
            trust_spec(value.strip("'\""))


def _check_group(group: str, value: str, extra: list[str]) -> None:
    options = [o for o in group_options(group) if o != CUSTOM_METHOD]
    if value not in options and value not in extra:
        raise ConfigError(f"unknown {group} '{value}'; {suggestion(value, options + extra)}")


def _rewrite(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Split overrides into group choices and key assignments; map plug-in methods onto `custom`."""
    from sslkit.registry import available_methods, is_resolvable, resolve_method

    parsed = parse(overrides)
    groups, keys = [], []
    for text, ov in zip(overrides, parsed, strict=True):
        key = ov.key_or_group
        if key in GROUPS and not ov.is_delete():
            value = str(ov.value())
            if key == "method" and value not in group_options("method"):
                if ":" in value:  # package.module:Class: its import error says more than a list of names
                    resolve_method(value)
                if is_resolvable(value):
                    groups.append(f"method={CUSTOM_METHOD}")
                    keys.append(f"method.name={value}")
                    continue
                _check_group("method", value, [m for m in available_methods() if m != CUSTOM_METHOD])
            if key != "method":
                _check_group(key, value, [])
            groups.append(text)
        else:
            keys.append(text)
    return groups, keys


def _check_keys(cfg: DictConfig, keys: list[str]) -> list[str]:
    """Every key must exist in the composed config. `method.*` keys are the exception: they are
    checked against the method's constructor (sslkit.params.check_method_params), so they are
    returned rewritten as Hydra additions (`+method.x=v`) when the method's YAML lacks them."""
    valid = leaf_keys(cfg)
    out = []
    for text, ov in zip(keys, parse(keys), strict=True):
        key = ov.key_or_group
        if key in valid or ov.is_delete():
            out.append(text)
            continue
        if key.startswith("method.") and key.count(".") == 1:
            out.append(text if ov.is_add() or ov.is_force_add() else "+" + text)
            continue
        top = key.split(".")[0]
        parent, _, leaf = key.rpartition(".")
        siblings = [k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == parent]
        best_leaf = closest(leaf, siblings) if parent else None
        best = f"{parent}.{best_leaf}" if best_leaf else (None if siblings else closest(key, valid))
        hint = f"did you mean '{best}'?" if best else (
            f"valid keys under '{top}': {', '.join(k for k in valid if k.startswith(top + '.'))}"
            if top in cfg else f"valid top-level keys: {', '.join(str(k) for k in cfg.keys())}")
        raise ConfigError(f"unknown config key '{key}'; {hint}")
    return out


_KINDS = {bool: "true or false", int: "an integer", float: "a number"}
# Keys whose default is null but whose value, when given, must be an integer (a method's own keys
# are typed by its constructor's signature: sslkit.params.check_method_params).
NULLABLE_INTS = {"data.subset", "data.num_workers", "trainer.max_steps", "trainer.threads", "eval.train_subset",
                 "eval.test_subset", "eval.epochs", "head.hidden_dim"}


def _check_types(base: DictConfig, cfg: DictConfig, prefix: str = "") -> None:
    """A value typed on the command line must have the type of the default it replaces (`method.*`:
    the type its constructor declares, checked by sslkit.params)."""
    for key in base.keys():
        path = prefix + str(key)
        if path == "method":
            continue
        old, new = base._get_node(key), cfg._get_node(key) if key in cfg else None
        if isinstance(old, DictConfig) and isinstance(new, DictConfig):
            _check_types(old, new, path + ".")
            continue
        if old is None or new is None or isinstance(new, DictConfig):
            continue
        before, after = old._value(), new._value()
        kind = int if path in NULLABLE_INTS else type(before)
        if kind in _KINDS and after is not None and not isinstance(after, kind) and not (
                kind is float and isinstance(after, int) and not isinstance(after, bool)):
            raise ConfigError(f"{path}={after!r} is invalid: expected {_KINDS[kind]}")


def compose(overrides: list[str] | tuple[str, ...] = (), extra: list[str] | None = None) -> DictConfig:
    """Compose `configs/config.yaml` with `overrides`, validate it once and resolve it once: the
    config's own `auto`s and a plug-in method's defaults filled in, interpolations resolved. The
    result is read-only (sslkit.plan.frozen): code below the app reads it and never rewrites it.
    `overrides` and `extra` are the user's command line (or sslkit's own): never names read from a file."""
    from sslkit.params import check_method_params, plugin_defaults
    from sslkit.plan import frozen

    overrides = list(extra or []) + list(overrides)
    trust_command_line(overrides)
    groups, keys = _rewrite(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            base = hydra_compose("config", overrides=groups)
            keys = _check_keys(base, keys)
            cfg = hydra_compose("config", overrides=groups + keys)
            _check_types(base, cfg)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    finally:
        GlobalHydra.instance().clear()
    if cfg.method.get("name") is None:
        raise ConfigError("method=custom needs method.name=<registered name or package.module:Class>")
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    if str(cfg.method.name) not in group_options("method"):
        data["method"] = plugin_defaults(str(cfg.method.name)) | data["method"]
    if "warmup_epochs" in data.get("optim", {}):
        data["optim"]["warmup_epochs"] = auto_warmup(cfg)
    resolved = frozen(data)
    check_method_params(resolved)
    check_values(resolved)
    return resolved


#: `optim.warmup_epochs: auto` (configs/optim/sgd.yaml): half an epoch of linear warm-up (capped, as
#: every warm-up, at optim.max_warmup_fraction of the run) when images are at most SMALL_IMAGE_SIDE px,
#: none above, as MoCo v2 on ImageNet. Measured (docs/results.md): the MoCo v2 recipe on Fashion-MNIST
#: at 28 px ends below a random encoder without it and above one with it.
SMALL_IMAGE_SIDE = 64
SMALL_IMAGE_WARMUP_EPOCHS = 0.5


def auto_warmup(cfg: DictConfig) -> float | int | None:
    """`optim.warmup_epochs` as epochs (`auto` resolved), so config.yaml records the number."""
    value = OmegaConf.select(cfg, "optim.warmup_epochs", default=None)
    if value is None or isinstance(value, int | float) and not isinstance(value, bool):
        if value is not None and value < 0:
            raise _bad("optim.warmup_epochs", value, "must be >= 0 (or auto)")
        return value
    if value != "auto":
        raise _bad("optim.warmup_epochs", value, "expected a number of epochs, or auto")
    side = OmegaConf.select(cfg, "data.image_size", default=None)
    small = side is not None and int(side) <= SMALL_IMAGE_SIDE
    return SMALL_IMAGE_WARMUP_EPOCHS if small else 0.0


#: every `trainer.precision` (sslkit.engine.hardware resolves "auto")
PRECISIONS = ("auto", "32", "bf16", "fp16")
PROGRESS = ("auto", "bar", "lines", "none")


def _bad(key: str, value: Any, need: str) -> ConfigError:
    return ConfigError(f"{key}={value} is invalid: {need}")


def check_values(cfg: DictConfig) -> None:
    """Values that type-check but mean nothing (or something surprising) are one-line errors."""
    def get(key: str) -> Any:
        return OmegaConf.select(cfg, key, default=None)

    t = cfg.get("trainer")
    if t is not None:
        if get("trainer.max_steps") is not None and int(get("trainer.max_steps")) < 1:
            raise _bad("trainer.max_steps", get("trainer.max_steps"), "must be >= 1 (null: no step limit)")
        for key in ("trainer.epochs", "trainer.devices", "trainer.log_every_steps"):
            if get(key) is not None and int(get(key)) < 1:
                raise _bad(key, get(key), "must be >= 1")
        if get("trainer.checkpoint_every_steps") is not None and int(get("trainer.checkpoint_every_steps")) < 0:
            raise _bad("trainer.checkpoint_every_steps", get("trainer.checkpoint_every_steps"),
                       "must be >= 0 (0: only at epoch ends)")
        if get("trainer.threads") is not None and int(get("trainer.threads")) < 1:
            raise _bad("trainer.threads", get("trainer.threads"), "must be >= 1 (null: torch's default)")
        if get("trainer.precision") is not None and str(get("trainer.precision")) not in PRECISIONS:
            raise _bad("trainer.precision", get("trainer.precision"), f"valid: {', '.join(PRECISIONS)}")
        if get("trainer.progress") is not None and str(get("trainer.progress")) not in PROGRESS:
            raise _bad("trainer.progress", get("trainer.progress"), f"valid: {', '.join(PROGRESS)}")
    positive = ("optim.lr", "eval.temperature", "data.batch_size")  # a method checks its own (check_params)
    for key in positive:
        value = get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            raise _bad(key, value, "must be > 0")
    if isinstance(get("data.num_workers"), int) and get("data.num_workers") < 0:
        raise _bad("data.num_workers", get("data.num_workers"), "must be >= 0 (0: load in the main process)")
    frac = get("data.max_bad_fraction")
    if isinstance(frac, int | float) and not 0 <= frac <= 1:
        raise _bad("data.max_bad_fraction", frac, "must be in [0, 1]")


# Keys each command reads; a key given on the command line outside these prefixes is ignored by it.
UNUSED_BY = {
    "train": ("eval.", "eval=", "checkpoint="),
    "eval": ("method.", "method=", "optim.", "optim=", "aug.", "aug=", "head.", "head=", "trainer.epochs",
             "trainer.max_steps", "trainer.resume", "trainer.devices", "trainer.precision",
             "trainer.channels_last", "trainer.sync_bn", "trainer.log_every_steps",
             "trainer.checkpoint_every_steps", "trainer.monitor", "trainer.overwrite", "trainer.progress"),
}


def unused_keys(command: str, overrides: list[str]) -> list[str]:
    """The overrides that `command` (train | eval) does not read."""
    prefixes = UNUSED_BY.get(command, ())
    return [o for o in overrides if o.lstrip("+~").startswith(prefixes)]


def warn_unused(command: str, overrides: list[str]) -> None:
    """One warning line on stderr for each override the command ignores."""
    import sys

    for o in unused_keys(command, overrides):
        key = o.lstrip("+~").split("=")[0]
        print(f"sslkit: warning: {key} is not used by `sslkit {command}`; ignored", file=sys.stderr, flush=True)


def to_yaml(cfg: DictConfig) -> str:
    """The fully resolved config as YAML."""
    return OmegaConf.to_yaml(cfg, resolve=True)


#: a saved config is a few KB; a file config larger than this is refused before it is parsed
MAX_CONFIG_BYTES = 1 << 20


def config_from_text(text: Any, source: str) -> DictConfig:
    """A config read from a file (a checkpoint's config, a run's config.yaml) as `to_yaml` writes it:
    plain YAML data. Tags (`!!python/...`), anchors and aliases (the "billion laughs"), interpolations
    (`${oc.env:...}`: sslkit saves configs resolved) and texts over MAX_CONFIG_BYTES are one-line
    ConfigErrors naming `source`; nothing in the text is constructed but maps, lists and scalars."""
    import yaml
    from omegaconf._utils import get_yaml_loader

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{source}: {why}; it is not a config that sslkit wrote")

    if not isinstance(text, str):
        raise bad(f"the config is a {type(text).__name__}, not YAML text")
    if len(text.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise bad(f"the config is over {MAX_CONFIG_BYTES >> 20} MiB")
    if "${" in text:
        raise bad("the config holds an interpolation (${...})")
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, yaml.TagToken | yaml.AnchorToken | yaml.AliasToken):
                raise bad(f"the config holds a YAML {type(token).__name__[:-5].lower()} at line "
                          f"{token.start_mark.line + 1}")
        data = yaml.load(text, Loader=get_yaml_loader())  # OmegaConf's SafeLoader (it reads 1e-3 as a float)
        if data is not None and not isinstance(data, dict):
            raise bad(f"the config is a {type(data).__name__}, not a mapping")
        cfg = OmegaConf.create(data or {})
    except (yaml.YAMLError, OmegaConfBaseException, ValueError, TypeError, RecursionError) as exc:
        raise bad(f"unreadable YAML ({' '.join(str(exc).split())[:200]})") from None
    return cfg


def check_file_names(cfg: DictConfig, source: str) -> DictConfig:
    """The names of a file config that every reader uses, under the trust rule (sslkit/registry.py): a
    timm name with a source prefix (`hf-hub:`, `local-dir:`) reaches the network or another folder, so
    a file may carry one only when the command line gives it too. (`method.name` is checked where a
    method is built: eval, export and report never build one.)"""
    from sslkit.registry import is_spec, is_trusted

    name = OmegaConf.select(cfg, "backbone.timm_name", default=None)
    if name is not None and is_spec(str(name)) and not is_trusted(str(name)):
        raise ConfigError(f"{source} names the timm model '{name}', whose source prefix reaches outside sslkit "
                          f"(a download or another folder); sslkit takes one only from the command line "
                          f"(backbone.timm_name={name})")
    return cfg


def as_dict(node: Any) -> dict[str, Any]:
    """A plain (container-free) dict of a config node."""
    out = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}
