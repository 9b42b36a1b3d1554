"""Optimizers (SGD, LARS) with the learning rate scaled by batch size (Goyal et al. 2017, eq. 1)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.optim import SGD, Optimizer

from sslkit.engine.lars import LARS
from sslkit.errors import ConfigError


def scaled_lr(lr: float, batch_size: int, scaling: str) -> float:
    """SimCLR's two rules (arXiv 2002.05709, appendix B.1) from one base `lr`: linear -> lr * B/256
    (0.3 * B/256), sqrt -> lr * sqrt(B/16), i.e. 0.075 * sqrt(B) for lr 0.3; none -> lr.

    The square-root rule's coefficient 0.075 = 0.3 / 4, so SimCLR's base rate gives both published
    rules; note that at B=256 the sqrt rule's rate is 4x the linear one's, as in the paper.
    """
    if scaling == "linear":
        return lr * batch_size / 256
    if scaling == "sqrt":
        return lr * math.sqrt(batch_size / 16)
    if scaling == "none":
        return lr
    raise ConfigError(f"optim.lr_scaling='{scaling}' is invalid; valid: linear, sqrt, none")


def _groups(model: nn.Module, weight_decay: float, exclude_key: str) -> list[dict[str, Any]]:
    """Biases and 1-d (norm) parameters apart: no weight decay, no LARS adaptation."""
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": plain, "weight_decay": 0.0, exclude_key: True}]


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any], batch_size: int) -> Optimizer:
    """SGD (MoCo: wd on every parameter, as the reference code) or LARS (SimCLR: biases/BN excluded)."""
    lr = scaled_lr(float(cfg["lr"]), batch_size, str(cfg.get("lr_scaling", "linear")))
    name = cfg["name"]
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return SGD(params, lr=lr, momentum=float(cfg.get("momentum", 0.9)),
                   weight_decay=float(cfg.get("weight_decay", 1e-4)), nesterov=bool(cfg.get("nesterov", False)))
    if name == "lars":
        return LARS(_groups(model, float(cfg.get("weight_decay", 1e-6)), "lars_exclude"), lr=lr,
                    momentum=float(cfg.get("momentum", 0.9)), weight_decay=float(cfg.get("weight_decay", 1e-6)),
                    trust_coefficient=float(cfg.get("trust_coefficient", 0.001)))
    raise ConfigError(f"unknown optimizer '{name}'; valid: sgd, lars")
