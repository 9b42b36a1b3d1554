"""Optimizers (SGD, LARS, AdamW) with the learning rate scaled by batch size (Goyal et al. 2017, eq. 1),
over parameter groups: biases and norms without weight decay, and per-group rules (a learning-rate scale,
a fixed learning rate, no decay) that a method declares by parameter-name prefix."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from torch.optim import SGD, AdamW, Optimizer

from sslkit.engine.lars import LARS
from sslkit.errors import ConfigError
from sslkit.nn.param_groups import ParamRule


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


def param_groups(model: nn.Module, weight_decay: float, rules: Sequence[ParamRule] = (),
                 exclude_bias_and_norm: bool = True) -> list[dict[str, Any]]:
    """The trainable parameters split by rule and by decay; empty groups are left out.

    Each group holds `params`, `weight_decay` (0 for biases and 1-d norm parameters when
    `exclude_bias_and_norm`, as DINO's `get_params_groups` and SimCLR's LARS), `lr_scale`, `fixed_lr`,
    `no_decay` and `lars_exclude` (= no_decay: LARS neither adapts nor decays them).
    """
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        rule = next((i for i, r in enumerate(rules) if name.startswith(r.prefix)), -1)
        no_decay = (exclude_bias_and_norm and p.ndim <= 1) or (rule >= 0 and not rules[rule].weight_decay)
        buckets.setdefault((rule, no_decay), []).append(p)
    groups = []
    for (rule, no_decay), params in sorted(buckets.items()):
        r = rules[rule] if rule >= 0 else ParamRule("")
        groups.append({"params": params, "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": r.lr_scale,
                       "fixed_lr": r.fixed_lr, "no_decay": no_decay, "lars_exclude": no_decay})
    return groups


OPTIMIZERS = ("sgd", "lars", "adamw")


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any], batch_size: int,
                    rules: Sequence[ParamRule] = ()) -> Optimizer:
    """SGD (MoCo: wd on every parameter, as the reference code), LARS (SimCLR, BYOL, Barlow Twins: biases
    and norms excluded) or AdamW (DINO: torch's, biases and norms without decay). `optim.exclude_bias_and_norm`
    overrides the exclusion; each group's rate is the scaled `optim.lr` x its rule's `lr_scale`."""
    lr = scaled_lr(float(cfg["lr"]), batch_size, str(cfg.get("lr_scaling", "linear")))
    name = cfg["name"]
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer '{name}'; valid: {', '.join(OPTIMIZERS)}")
    wd = float(cfg.get("weight_decay", {"sgd": 1e-4, "lars": 1e-6, "adamw": 0.04}[name]))
    groups = param_groups(model, wd, rules, bool(cfg.get("exclude_bias_and_norm", name != "sgd")))
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if name == "sgd":
        return SGD(groups, lr=lr, momentum=float(cfg.get("momentum", 0.9)), weight_decay=wd,
                   nesterov=bool(cfg.get("nesterov", False)))
    if name == "lars":
        return LARS(groups, lr=lr, momentum=float(cfg.get("momentum", 0.9)), weight_decay=wd,
                    trust_coefficient=float(cfg.get("trust_coefficient", 0.001)))
    betas = tuple(float(b) for b in cfg.get("betas", (0.9, 0.999)))
    return AdamW(groups, lr=lr, betas=(betas[0], betas[1]), eps=float(cfg.get("eps", 1e-8)), weight_decay=wd)
