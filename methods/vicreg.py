"""VICReg (Bardes et al. 2022, arXiv 2105.04906): variance-invariance-covariance regularisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from sslkit.errors import ConfigError
from sslkit.losses.vicreg import vicreg_loss
from sslkit.methods.base import SSLMethod, StepOutput, fp32_loss
from sslkit.registry import register_method


@register_method("vicreg")
class VICReg(SSLMethod):
    """Backbone + expander on both views; variance, invariance and covariance terms of eq. 6 on them.

    `sslkit.losses.vicreg_loss`: λ x the invariance term s (eq. 5, mean squared distance), μ x the
    variance hinge v (eq. 1, each view's features' std held above γ = 1) and ν x the covariance term c
    (eq. 3-4, off-diagonal covariances driven to 0).

    Defaults (configs/method/vicreg.yaml, the paper's Sec. 4.1 and the official code): expander
    8192-8192-8192 (BN + ReLU on the hidden layers), λ = μ = 25, ν = 1, BYOL's views, LARS at
    0.2 x B/256 with weight decay 1e-6 (biases and norms left out of decay and adaptation), 10 warm-up
    epochs then cosine.
    """

    family = "redundancy reduction"
    paper = "Bardes et al. 2022, arXiv 2105.04906"

    def __init__(self, backbone: nn.Module, feature_dim: int, head: Any = None, *, invariance: float,
                 variance: float, covariance: float) -> None:
        super().__init__(backbone, feature_dim, head)
        for key, value, paper in (("invariance", invariance, "25 (λ)"), ("variance", variance, "25 (μ)"),
                                  ("covariance", covariance, "1 (ν)")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ConfigError(f"method.{key} (a weight of eq. 6) must be a finite number >= 0, got {value!r}; "
                                  f"the paper's is {paper}")
        if invariance == variance == covariance == 0:
            raise ConfigError("method.invariance, method.variance and method.covariance are all 0: nothing to "
                              "train; the paper's are 25, 25, 1")
        self.invariance, self.variance, self.covariance = float(invariance), float(variance), float(covariance)
        self.projector = self.build_head()  # the paper's "expander"

    def embed(self, x: Tensor) -> Tensor:
        """z = expander(backbone(x)), the embedding the loss regularises."""
        return self.projector(self.backbone(x))

    def training_step(self, views: Sequence[Tensor]) -> StepOutput:
        if len(views) != 2:
            raise ConfigError(f"VICReg takes 2 views per step, got {len(views)}; use views=byol")
        # each view through its own forward, as the official code: BN statistics are per view
        z_a, z_b = self.embed(views[0]), self.embed(views[1])
        with fp32_loss(z_a, z_b) as (za32, zb32):  # variances and covariances in fp32 under autocast
            loss = vicreg_loss(za32, zb32, self.invariance, self.variance, self.covariance)
        std = z_a.detach().float().std(dim=0).mean()  # ~0 when the embedding collapses
        return StepOutput(loss, {"loss": loss.detach(), "z_std": std})
