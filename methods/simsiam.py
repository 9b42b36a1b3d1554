"""SimSiam (Chen & He 2021, arXiv 2011.10566): a predictor and a stop-gradient, no negatives, no momentum encoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from sslkit.errors import ConfigError
from sslkit.losses.negative_cosine import symmetrized_negative_cosine
from sslkit.methods.base import SSLMethod, StepOutput, fp32_loss
from sslkit.methods.byol import head_out_dim, normalized_std
from sslkit.nn.mlp import predictor
from sslkit.nn.param_groups import ParamRule
from sslkit.registry import register_method


@register_method("simsiam")
class SimSiam(SSLMethod):
    """One encoder f (backbone + projector) and a predictor h; z = f(x) is the stopped target of p = h(z).

    L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2, D the negative cosine (eq. 1-2).

    The stop-gradient is `z.detach()` (Algorithm 1). With `fix_predictor_lr` the predictor keeps its
    starting learning rate while the rest follows the schedule (Sec. 4.2, `--fix-pred-lr`). Evaluation
    uses the backbone.

    Defaults: configs/method/simsiam.yaml (projector 3 x fc 2048 with BN, the output BN without affine
    parameters, configs/head/simsiam.yaml; predictor 2048 -> 512 -> 2048; SGD lr 0.05 x B/256, wd 1e-4,
    momentum 0.9, cosine; MoCo v2's augmentation).
    """

    family = "distillation"
    paper = "Chen & He 2021, arXiv 2011.10566"

    def __init__(self, backbone: nn.Module, feature_dim: int, head: Any = None, *, predictor_hidden_dim: int,
                 fix_predictor_lr: bool) -> None:
        super().__init__(backbone, feature_dim, head)
        if isinstance(predictor_hidden_dim, bool) or not isinstance(predictor_hidden_dim, int) \
                or predictor_hidden_dim < 1:
            raise ConfigError(f"method.predictor_hidden_dim must be an integer >= 1 (SimSiam: 512), "
                              f"got {predictor_hidden_dim!r}")
        if not isinstance(fix_predictor_lr, bool):
            raise ConfigError(f"method.fix_predictor_lr must be true or false, got {fix_predictor_lr!r}")
        self.fix_predictor_lr = fix_predictor_lr
        self.projector = self.build_head()
        # h: fc(d -> 512, no bias) + BN + ReLU, fc(512 -> d) with bias and no BN (Sec. 4.2, `simsiam/builder.py`)
        self.predictor = predictor(head_out_dim(self.projector), predictor_hidden_dim)

    def param_rules(self) -> Sequence[ParamRule]:
        return [ParamRule("predictor", fixed_lr=True)] if self.fix_predictor_lr else []

    def training_step(self, views: Sequence[Tensor]) -> StepOutput:
        x1, x2 = views[0], views[1]
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with fp32_loss(p1, p2, z1.detach(), z2.detach()) as (p1_, p2_, z1_, z2_):  # stop-gradient on z
            loss = symmetrized_negative_cosine(p1_, p2_, z1_, z2_)
        return StepOutput(loss, {"loss": loss.detach(), "z_std": normalized_std(z1)})
