"""Barlow Twins (Zbontar et al. 2021, arXiv 2103.03230): redundancy reduction by the cross-correlation loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from sslkit.errors import ConfigError
from sslkit.losses.barlow_twins import barlow_twins_loss
from sslkit.methods.base import SSLMethod, StepOutput, fp32_loss
from sslkit.nn.param_groups import ParamRule
from sslkit.registry import register_method


def bias_and_norm_rules(model: nn.Module, lr_scale: float) -> list[ParamRule]:
    """One rule per 1-d parameter (biases, norm scales and shifts): `lr_scale` x the scheduled rate (the
    official code's second parameter group, `param_biases`, selected by `p.ndim == 1`). ParamRule matches
    by name prefix, so each such parameter is named in full. Their exclusion from weight decay and LARS
    adaptation stays the optimizer's (`optim.exclude_bias_and_norm`, true for LARS)."""
    return [ParamRule(name, lr_scale=lr_scale)
            for name, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]


def _check_non_negative(key: str, value: Any, paper: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"method.{key} must be a finite number >= 0, got {value!r}; the paper's is {paper}")


@register_method("barlow_twins")
class BarlowTwins(SSLMethod):
    """Backbone + projector on both views; the views' cross-correlation is driven to the identity (eq. 1-2).

    The loss is `sslkit.losses.barlow_twins_loss` on the two embeddings, each standardised along the batch.

    Defaults (configs/method/barlow_twins.yaml, the paper's Sec. 4 and the official code): projector
    8192-8192-8192 (fc without bias, BN + ReLU on the hidden layers), λ = 5e-3, BYOL's views, LARS at
    0.2 x B/256 for the weights and 0.0048 x B/256 for biases and norms (`bias_lr_scale` = 0.0048 / 0.2),
    which are left out of weight decay (1.5e-6) and of LARS adaptation; 10 warm-up epochs then cosine.
    """

    family = "redundancy reduction"
    paper = "Zbontar et al. 2021, arXiv 2103.03230"

    def __init__(self, backbone: nn.Module, feature_dim: int, head: Any = None, *, lambd: float,
                 bias_lr_scale: float) -> None:
        super().__init__(backbone, feature_dim, head)
        _check_non_negative("lambd", lambd, "5e-3 (λ of eq. 1)")
        _check_non_negative("bias_lr_scale", bias_lr_scale, "0.024 (= 0.0048 / 0.2; 1 gives biases the weights' rate)")
        self.lambd, self.bias_lr_scale = float(lambd), float(bias_lr_scale)
        self.projector = self.build_head()

    def embed(self, x: Tensor) -> Tensor:
        """z = projector(backbone(x)): the embedding the loss sees (before its batch standardisation)."""
        return self.projector(self.backbone(x))

    def training_step(self, views: Sequence[Tensor]) -> StepOutput:
        if len(views) != 2:
            raise ConfigError(f"Barlow Twins takes 2 views per step, got {len(views)}; use views=byol")
        # each view through its own forward, as the official code: BN statistics are per view
        z_a, z_b = self.embed(views[0]), self.embed(views[1])
        with fp32_loss(z_a, z_b) as (za32, zb32):  # the cross-correlation in fp32 under autocast
            loss = barlow_twins_loss(za32, zb32, self.lambd)
        std = z_a.detach().float().std(dim=0).mean()  # ~0 when the embedding collapses
        return StepOutput(loss, {"loss": loss.detach(), "z_std": std})

    def param_rules(self) -> Sequence[ParamRule]:
        """Biases and norm parameters at `bias_lr_scale` x the rate (Sec. 4: 0.0048 against 0.2); no rule
        at scale 1."""
        return bias_and_norm_rules(self, self.bias_lr_scale) if self.bias_lr_scale != 1.0 else ()
