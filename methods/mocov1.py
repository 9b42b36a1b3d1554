"""MoCo v1 (He et al. 2019, arXiv 1911.05722): a momentum key encoder and a queue of negatives."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslkit.contrastive import KeyQueue, ema_update, infonce_loss, momentum_at
from sslkit.contrastive.momentum import SCHEDULES, frozen_copy
from sslkit.contrastive.shuffle_bn import shuffle_ddp, shuffle_local, unshuffle_ddp, unshuffle_local
from sslkit.errors import ConfigError
from sslkit.methods.base import ContrastiveMethod, StepOutput, fp32_loss
from sslkit.nn.split_bn import convert_split_bn
from sslkit.registry import register_method

SHUFFLE_BN = ("auto", "ddp", "split", "none")
REDUCTIONS = ("sum", "mean")
#: logged steps in a row at loss ~ ln(K+1) and accuracy ~ 0 before `stall_check` warns
STALL_STEPS = 300


@register_method("mocov1")
class MoCoV1(ContrastiveMethod):
    """Query encoder f_q + head trained by InfoNCE (eq. 1) against its momentum copy f_k (eq. 2).

    The parameters' defaults are the paper's, in configs/method/mocov1.yaml (their one place):
    K=65536, m=0.999, tau=0.07, linear head.
    """

    paper = "He et al. 2019, arXiv 1911.05722"

    def __init__(self, backbone: nn.Module, feature_dim: int, head: Any = None, *, temperature: float,
                 queue_size: int, momentum: float, momentum_schedule: str, symmetric: bool,
                 symmetric_reduction: str, shuffle_bn: str, split_bn_groups: int, world_size: int = 1) -> None:
        super().__init__(backbone, feature_dim, head)
        self.check_params({"temperature": temperature, "queue_size": queue_size, "momentum": momentum,
                           "momentum_schedule": momentum_schedule, "symmetric_reduction": symmetric_reduction,
                           "shuffle_bn": shuffle_bn, "split_bn_groups": split_bn_groups})
        if shuffle_bn == "auto":
            shuffle_bn = "ddp" if world_size > 1 else ("split" if split_bn_groups > 1 else "none")
        if shuffle_bn == "split":
            convert_split_bn(self.backbone, split_bn_groups)
        self.shuffle_bn = shuffle_bn
        self.temperature, self.base_momentum, self.momentum_schedule = temperature, momentum, momentum_schedule
        self.symmetric, self.symmetric_reduction = symmetric, symmetric_reduction
        self._stall_since: int | None = None
        self._stall_warned = False
        self.head = self.build_head()
        self.backbone_k, self.head_k = frozen_copy(self.backbone), frozen_copy(self.head)
        self.queue = KeyQueue(queue_size, int(self.head_cfg.get("out_dim", 128)))
        self._pending: list[Tensor] = []

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        """The bounds of MoCo's parameters (their types come from `__init__`'s annotations)."""
        p = params.get
        if p("symmetric_reduction", "sum") not in REDUCTIONS:
            raise ConfigError(f"method.symmetric_reduction='{p('symmetric_reduction')}' is invalid; valid: sum, mean")
        if p("shuffle_bn", "auto") not in SHUFFLE_BN:
            raise ConfigError(f"method.shuffle_bn='{p('shuffle_bn')}' is invalid; valid: {', '.join(SHUFFLE_BN)}")
        if not 0.0 <= p("momentum", 0.0) <= 1.0:
            raise ConfigError(f"method.momentum must be in [0, 1], got {p('momentum')}")
        if p("queue_size", 1) <= 0:
            raise ConfigError(f"method.queue_size={p('queue_size')} is invalid: must be > 0 (a number of keys)")
        if p("temperature", 1.0) <= 0:
            raise ConfigError(f"method.temperature={p('temperature')} is invalid: must be > 0")
        if p("split_bn_groups", 1) < 1:
            raise ConfigError(f"method.split_bn_groups must be >= 1, got {p('split_bn_groups')}")
        if p("momentum_schedule", "constant") not in SCHEDULES:  # else the first after_step fails, after set-up
            raise ConfigError(f"method.momentum_schedule='{p('momentum_schedule')}' is invalid; "
                              f"valid: {', '.join(SCHEDULES)}")

    def _query(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(x)), dim=1)

    @torch.no_grad()
    def _key(self, x: Tensor) -> Tensor:
        if self.shuffle_bn == "ddp":
            x, inverse = shuffle_ddp(x)
            return unshuffle_ddp(F.normalize(self.head_k(self.backbone_k(x)), dim=1), inverse)
        if self.shuffle_bn == "split":
            x, inverse = shuffle_local(x)
            return unshuffle_local(F.normalize(self.head_k(self.backbone_k(x)), dim=1), inverse)
        return F.normalize(self.head_k(self.backbone_k(x)), dim=1)

    def _contrast(self, q: Tensor, k: Tensor, queue: Tensor) -> tuple[Tensor, Tensor]:
        with fp32_loss(q, k, queue) as (q32, k32, queue32):  # logits in fp32 under bf16/fp16 autocast
            return infonce_loss(q32, k32, queue32, self.temperature)

    def training_step(self, views: Sequence[Tensor]) -> StepOutput:
        x_q, x_k = views[0], views[1]
        queue = self.queue.keys  # written only in after_step, after backward: no copy needed
        k = self._key(x_k)
        loss, acc = self._contrast(self._query(x_q), k, queue)
        self._pending = [k]
        if self.symmetric:  # each view is once the query and once the key (MoCo CIFAR-10 demo)
            k2 = self._key(x_q)
            loss2, acc2 = self._contrast(self._query(x_k), k2, queue)
            # the demo sums the two losses (loss_12 + loss_21); "mean" halves the gradient at the same lr
            loss = loss + loss2 if self.symmetric_reduction == "sum" else (loss + loss2) / 2
            acc = (acc + acc2) / 2
            self._pending.append(k2)
        # queue_fill: the share of this step's negatives that are real keys (1 after K/B steps)
        fill = self.queue.filled.float() / self.queue.size  # a tensor: no device sync
        return StepOutput(loss, {"loss": loss.detach(), "acc": acc, "queue_fill": fill})

    def chance_loss(self) -> float:
        """The loss of an encoder that cannot tell its key from the queue: ln(K+1) per query term."""
        terms = 2 if self.symmetric and self.symmetric_reduction == "sum" else 1
        return terms * math.log(self.queue.size + 1)

    def stall_check(self, step: int, logs: Mapping[str, float]) -> str | None:
        """Warn once when the loss has sat within 1% of ln(K+1) with accuracy < 1% for STALL_STEPS steps."""
        if self._stall_warned or "loss" not in logs or "acc" not in logs:
            return None
        chance = self.chance_loss()
        if abs(float(logs["loss"]) - chance) > 0.01 * chance or float(logs["acc"]) >= 0.01:
            self._stall_since = None
            return None
        if self._stall_since is None:
            self._stall_since = step
        if step - self._stall_since < STALL_STEPS:
            return None
        self._stall_warned = True
        return (f"warning: MoCo's loss has sat at ln(K+1)={chance:.3f} with contrastive accuracy ~0 since step "
                f"{self._stall_since}: the encoder is not learning. Likely fixes: a warm-up "
                f"(optim.warmup_epochs=0.5), a higher method.temperature (0.3), a lower optim.lr, or a smaller "
                f"method.queue_size")

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        m = momentum_at(self.base_momentum, progress, self.momentum_schedule)
        ema_update(self.backbone_k, self.backbone, m)
        ema_update(self.head_k, self.head, m)
        for k in self._pending:
            self.queue.push(k)
        self._pending = []
