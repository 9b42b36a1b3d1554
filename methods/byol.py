"""BYOL (Grill et al. 2020, arXiv 2006.07733): an online network predicts an EMA target network's projection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslkit.contrastive import ema_update, momentum_at
from sslkit.contrastive.momentum import SCHEDULES, frozen_copy
from sslkit.errors import ConfigError
from sslkit.losses.negative_cosine import byol_loss
from sslkit.methods.base import SSLMethod, StepOutput, fp32_loss
from sslkit.nn.mlp import LayerSpec, build_mlp
from sslkit.registry import register_method


def head_out_dim(head: nn.Module) -> int:
    """The output width of an MLP head: its last Linear's `out_features`."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("the projection head has no fc layer; use head=byol or a head with kind: layers")
    return linears[-1].out_features


def normalized_std(z: Tensor) -> Tensor:
    """The per-dimension std of the l2-normalised outputs, averaged: 0 when they collapse to one vector,
    about 1/sqrt(d) when spread out (SimSiam, arXiv 2011.10566, Sec. 4.1 / Fig. 2)."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


@register_method("byol")
class BYOL(SSLMethod):
    """Online backbone + projector + predictor regress the projection of their EMA copy, the target network.

    Online network f_θ, g_θ (backbone + projector) + predictor q_θ; target network f_ξ, g_ξ an EMA of f_θ, g_θ.

    Loss: eq. 2 symmetrised (Sec. 3.1), L + L~ = ||q(z1) - z'2||² + ||q(z2) - z'1||² over l2-normalised
    vectors, the target's projections z' computed without gradient (`byol_loss`). After each step
    ξ <- τ ξ + (1 - τ) θ with τ = 1 - (1 - τ_base)(cos(πk/K) + 1)/2 (Sec. 3.2), k the step's index
    from 0 as the official `_update_fn` (`self.progress` = k/K). Evaluation uses the online backbone f_θ.

    Defaults: configs/method/byol.yaml (τ_base 0.996 cosine to 1; projector and predictor 4096 -> 256
    with BN, configs/head/byol.yaml; LARS lr 0.2 x B/256, wd 1.5e-6; the asymmetric `byol` views).
    """

    family = "distillation"
    paper = "Grill et al. 2020, arXiv 2006.07733"

    def __init__(self, backbone: nn.Module, feature_dim: int, head: Any = None, *, momentum: float,
                 momentum_schedule: str, predictor_hidden_dim: int) -> None:
        super().__init__(backbone, feature_dim, head)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"method.momentum must be a number in [0, 1] (BYOL: 0.996), got {momentum!r}")
        if momentum_schedule not in SCHEDULES:
            raise ConfigError(f"method.momentum_schedule='{momentum_schedule}' is invalid; "
                              f"valid: {', '.join(SCHEDULES)}")
        if isinstance(predictor_hidden_dim, bool) or not isinstance(predictor_hidden_dim, int) \
                or predictor_hidden_dim < 1:
            raise ConfigError(f"method.predictor_hidden_dim must be an integer >= 1 (BYOL: 4096), "
                              f"got {predictor_hidden_dim!r}")
        self.base_momentum, self.momentum_schedule = float(momentum), momentum_schedule
        self.projector = self.build_head()
        dim = head_out_dim(self.projector)
        # q_θ: the projector's shape (Sec. 3.3), every fc with its bias as the official MLP
        self.predictor = build_mlp(dim, [LayerSpec(predictor_hidden_dim, "affine", "relu", bias=True),
                                         LayerSpec(dim)])
        self.target_backbone, self.target_projector = frozen_copy(self.backbone), frozen_copy(self.projector)

    def momentum_pairs(self) -> Sequence[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]

    def momentum(self) -> float:
        """τ of the step being run (its index k: `self.progress` = k/K)."""
        return momentum_at(self.base_momentum, self.progress, self.momentum_schedule)

    def training_step(self, views: Sequence[Tensor]) -> StepOutput:
        x1, x2 = views[0], views[1]
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():  # the stop-gradient on the target network (Sec. 3.1)
            t1 = self.target_projector(self.target_backbone(x1))
            t2 = self.target_projector(self.target_backbone(x2))
        with fp32_loss(p1, p2, t1, t2) as (p1_, p2_, t1_, t2_):
            loss = byol_loss(p1_, p2_, t1_, t2_)
        return StepOutput(loss, {"loss": loss.detach(), "z_std": normalized_std(z1), "tau": self.momentum()})

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        m = self.momentum()
        for online, target in self.momentum_pairs():
            ema_update(target, online, m)
