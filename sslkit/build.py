"""Build a method, or just its backbone, from a composed config."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from torch import nn

from sslkit.config import as_dict
from sslkit.errors import ConfigError
from sslkit.methods.base import ContrastiveMethod
from sslkit.nn.backbones import build_backbone
from sslkit.registry import resolve_method


def build_method(cfg: DictConfig) -> ContrastiveMethod:
    """`cfg.method.name` resolved through the registry, built on `cfg.backbone` and `cfg.head`."""
    params: dict[str, Any] = as_dict(cfg.method)
    cls = resolve_method(str(params.pop("name")))
    backbone, dim = build_backbone(as_dict(cfg.backbone))
    try:
        return cls(backbone, dim, as_dict(cfg.head), **params)
    except TypeError as exc:  # an unknown method.* key reached the constructor
        raise ConfigError(f"method '{cfg.method.name}': {exc}") from None


def backbone_from_state(cfg: DictConfig, method_state: dict[str, Any]) -> nn.Module:
    """The trained backbone of a checkpoint: `backbone.*` weights loaded into a fresh backbone."""
    backbone, _ = build_backbone(as_dict(cfg.backbone))
    state = {k[len("backbone."):]: v for k, v in method_state.items() if k.startswith("backbone.")}
    backbone.load_state_dict(state)
    return backbone
