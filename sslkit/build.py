"""Build a method from a composed config."""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig

from sslkit.config import as_dict, compose
from sslkit.devices import world_size
from sslkit.errors import ConfigError
from sslkit.methods.base import SSLMethod
from sslkit.nn.backbones import build_backbone
from sslkit.params import check_method_params
from sslkit.registry import resolve_method


def build_method(cfg: DictConfig) -> SSLMethod:
    """`cfg.method.name` resolved through the registry, built on `cfg.backbone` and `cfg.head`."""
    check_method_params(cfg)
    params: dict[str, Any] = as_dict(cfg.method)
    cls = resolve_method(str(params.pop("name")))
    backbone, dim = build_backbone(as_dict(cfg.backbone))
    if "world_size" in inspect.signature(cls.__init__).parameters:  # e.g. SwAV's queue, split over processes
        params["world_size"] = world_size()
    return cls(backbone, dim, as_dict(cfg.head), **params)


def method_defaults(name: str, **changes: Any) -> dict[str, Any]:
    """The `method.*` values of `method=<name>` (its YAML, inheritance resolved), with `changes`:
    the keyword arguments to build a method by hand, e.g. `MoCoV2(enc, dim, head, **method_defaults("mocov2"))`."""
    params = as_dict(compose([f"method={name}"]).method)
    params.pop("name")
    unknown = set(changes) - set(params)
    if unknown:
        raise ConfigError(f"method '{name}' has no parameter {', '.join(sorted(unknown))}")
    return params | changes
