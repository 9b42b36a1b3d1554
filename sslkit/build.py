"""Build a method from a composed config."""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig

from sslkit.config import as_dict, compose
from sslkit.errors import ConfigError
from sslkit.methods.base import SSLMethod
from sslkit.nn.backbones import build_backbone
from sslkit.registry import resolve_method


def build_method(cfg: DictConfig, world_size: int = 1) -> SSLMethod:
    """`cfg.method.name` resolved through the registry, built on `cfg.backbone` and `cfg.head`.

    `cfg` is a composed config: its `method.*` keys were checked once, by compose. A method whose
    `__init__` takes `world_size` gets it here, from the World the app runs in (its one source)."""
    params: dict[str, Any] = as_dict(cfg.method)
    cls = resolve_method(str(params.pop("name")))
    backbone, dim = build_backbone(as_dict(cfg.backbone))
    if takes_world_size(cls):
        params["world_size"] = int(world_size)
    return cls(backbone, dim, as_dict(cfg.head), **params)


def takes_world_size(cls: type[SSLMethod]) -> bool:
    """Whether the method's constructor (or one it passes `**kwargs` on to) takes `world_size`."""
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or not issubclass(klass, SSLMethod):
            continue
        sig = inspect.signature(vars(klass)["__init__"])
        if "world_size" in sig.parameters:
            return True
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return False
    return False


def method_defaults(name: str, **changes: Any) -> dict[str, Any]:
    """The `method.*` values of `method=<name>` (its YAML, inheritance resolved), with `changes`:
    the keyword arguments to build a method by hand, e.g. `MoCoV2(enc, dim, head, **method_defaults("mocov2"))`."""
    params = as_dict(compose([f"method={name}"]).method)
    params.pop("name")
    unknown = set(changes) - set(params)
    if unknown:
        raise ConfigError(f"method '{name}' has no parameter {', '.join(sorted(unknown))}")
    return params | changes
