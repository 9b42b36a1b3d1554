"""Build a method, or just its backbone, from a composed config."""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig
from torch import nn

from sslkit.config import as_dict
from sslkit.errors import ConfigError, closest
from sslkit.methods.base import ContrastiveMethod
from sslkit.nn.backbones import build_backbone
from sslkit.registry import resolve_method

BUILT_IN_ARGS = ("self", "backbone", "feature_dim", "head")


def method_params(cls: type[ContrastiveMethod]) -> list[str]:
    """The `method.*` keys a method accepts: the keyword parameters of its `__init__`, and, where that
    passes `**kwargs` on, those of the parent classes' `__init__` (e.g. MoCoV2 -> MoCoV1)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is ContrastiveMethod or not issubclass(klass, ContrastiveMethod):
            continue
        sig = inspect.signature(vars(klass)["__init__"])
        names += [n for n, p in sig.parameters.items() if n not in BUILT_IN_ARGS and n not in names
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return names


def check_method_params(cfg: DictConfig) -> None:
    """Every `method.*` key must be a parameter of the method's constructor (one-line error otherwise)."""
    name = str(cfg.method.name)
    valid = method_params(resolve_method(name))
    for key in cfg.method.keys():
        if key == "name" or key in valid:
            continue
        best = closest(str(key), valid)
        hint = f"did you mean 'method.{best}'? " if best else ""
        listed = ", ".join(f"method.{v}" for v in valid) or "none"
        raise ConfigError(f"unknown config key 'method.{key}' for method '{name}'; {hint}its parameters: {listed}")


def build_method(cfg: DictConfig) -> ContrastiveMethod:
    """`cfg.method.name` resolved through the registry, built on `cfg.backbone` and `cfg.head`."""
    check_method_params(cfg)
    params: dict[str, Any] = as_dict(cfg.method)
    cls = resolve_method(str(params.pop("name")))
    backbone, dim = build_backbone(as_dict(cfg.backbone))
    try:
        return cls(backbone, dim, as_dict(cfg.head), **params)
    except TypeError as exc:  # e.g. a required parameter of a plug-in that the config does not set
        raise ConfigError(f"method '{cfg.method.name}': {exc}") from None


def backbone_from_state(cfg: DictConfig, method_state: dict[str, Any]) -> nn.Module:
    """The trained backbone of a checkpoint: `backbone.*` weights loaded into a fresh backbone."""
    backbone, _ = build_backbone(as_dict(cfg.backbone))
    state = {k[len("backbone."):]: v for k, v in method_state.items() if k.startswith("backbone.")}
    backbone.load_state_dict(state)
    return backbone
