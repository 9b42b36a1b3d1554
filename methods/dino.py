"""DINO (Caron et al. 2021, arXiv 2104.14294): self-distillation with no labels.

A student (backbone + DINO head) matches, on every crop, the sharpened and centred output of a
teacher that sees only the global crops (eq. 1-2, `sslkit.losses.dino`). The teacher is the EMA of
the student (momentum 0.996 -> 1 on a cosine, eq. 3 / Sec. 3.1); the center follows the teacher's
mean output with momentum 0.9 (eq. 4). Training details from the paper's appendix and main_dino.py:
the teacher temperature warms up linearly from 0.04 to 0.07 over the first 30 epochs, the head's
weight-normalised last layer gets no gradient during the first epoch, each parameter's gradient norm
is clipped at 3.0, and AdamW's weight decay follows a cosine from 0.04 to 0.4 (configs/optim/adamw.yaml).
Evaluation and export use the teacher's backbone, as the paper reports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sslkit.contrastive.momentum import ema_update, frozen_copy
from sslkit.errors import ConfigError
from sslkit.losses.dino import dino_loss, teacher_temperature, update_center
from sslkit.methods.base import SSLMethod, StepOutput, fp32_loss
from sslkit.nn.dino_head import DINOHead
from sslkit.nn.gradients import cancel_gradients_, clip_gradients_
from sslkit.nn.multicrop import forward_by_size
from sslkit.registry import register_method


@register_method("dino")
class DINO(SSLMethod):
    """Student + DINO head distilled from its EMA teacher on multi-crop views (eq. 1-4)."""

    family: ClassVar[str] = "distillation"
    paper: ClassVar[str] = "Caron et al. 2021, arXiv 2104.14294"
    needs_local_views: ClassVar[bool] = False  # multi-crop is the default, but 2 global crops alone train too

    center: Tensor

    def __init__(self, backbone: nn.Module, feature_dim: int, head: Any = None, *, out_dim: int, hidden_dim: int,
                 bottleneck_dim: int, head_layers: int, head_batch_norm: bool, norm_last_layer: bool,
                 momentum: float, final_momentum: float, teacher_temp: float, warmup_teacher_temp: float,
                 warmup_teacher_temp_epochs: int, student_temp: float, center_momentum: float,
                 freeze_last_layer: float, clip_grad: float, global_crops: int) -> None:
        super().__init__(backbone, feature_dim, head)
        self.check_bounds({"out_dim": out_dim, "momentum": momentum, "final_momentum": final_momentum,
                           "teacher_temp": teacher_temp, "warmup_teacher_temp": warmup_teacher_temp,
                           "student_temp": student_temp, "center_momentum": center_momentum,
                           "global_crops": global_crops, "clip_grad": clip_grad,
                           "freeze_last_layer": freeze_last_layer,
                           "warmup_teacher_temp_epochs": warmup_teacher_temp_epochs})
        self.head = DINOHead(feature_dim, out_dim, hidden_dim, bottleneck_dim, head_layers, head_batch_norm,
                             norm_last_layer)
        self.teacher_backbone, self.teacher_head = frozen_copy(self.backbone), frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.momentum, self.final_momentum = momentum, final_momentum
        self.teacher_temp, self.warmup_teacher_temp = teacher_temp, warmup_teacher_temp
        self.warmup_teacher_temp_epochs, self.student_temp = warmup_teacher_temp_epochs, student_temp
        self.center_momentum, self.freeze_last_layer, self.clip_grad = center_momentum, freeze_last_layer, clip_grad
        self.global_crops = global_crops
        self._teacher_out: list[Tensor] = []

    @staticmethod
    def check_bounds(params: Mapping[str, Any]) -> None:
        """One-line errors for values that type-check but mean nothing."""
        p = params
        for key in ("momentum", "final_momentum", "center_momentum"):
            if not 0.0 <= float(p[key]) <= 1.0:
                raise ConfigError(f"method.{key} must be in [0, 1], got {p[key]}")
        for key in ("teacher_temp", "warmup_teacher_temp", "student_temp"):
            if float(p[key]) <= 0:
                raise ConfigError(f"method.{key} must be > 0, got {p[key]}")
        if int(p["out_dim"]) < 1 or int(p["global_crops"]) < 1:
            raise ConfigError(f"method.out_dim and method.global_crops must be >= 1, got {p['out_dim']}, "
                              f"{p['global_crops']}")
        if float(p["clip_grad"]) < 0 or float(p["freeze_last_layer"]) < 0 or int(p["warmup_teacher_temp_epochs"]) < 0:
            raise ConfigError("method.clip_grad, method.freeze_last_layer and method.warmup_teacher_temp_epochs "
                              "must be >= 0 (0 turns each off)")

    def momentum_pairs(self) -> Sequence[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]

    def current_teacher_temp(self) -> float:
        """τ_t at this step's epoch: 0.04 -> 0.07 linearly over `warmup_teacher_temp_epochs` (official)."""
        if self.warmup_teacher_temp_epochs <= 0:
            return self.teacher_temp
        return teacher_temperature(int(self.epoch), self.warmup_teacher_temp_epochs, self.warmup_teacher_temp,
                                   self.teacher_temp)

    def training_step(self, views: Sequence[Tensor]) -> StepOutput:
        n_global = min(self.global_crops, len(views))
        if len(views) < 2:
            raise ConfigError(f"DINO needs at least 2 views (2 global crops), got {len(views)}")
        with torch.no_grad():
            teacher = forward_by_size(views[:n_global], lambda x: self.teacher_head(self.teacher_backbone(x)))
        student = forward_by_size(views, lambda x: self.head(self.backbone(x)))
        tau = self.current_teacher_temp()
        with fp32_loss(*teacher, *student, self.center) as outs:  # τ_t = 0.04: softmax in fp32
            t32, s32, c32 = outs[:n_global], outs[n_global:-1], outs[-1]
            loss = dino_loss(t32, s32, c32, tau, self.student_temp)
        self._teacher_out = teacher
        entropy = -(torch.softmax((teacher[0].float() - self.center) / tau, dim=-1)
                    * torch.log_softmax((teacher[0].float() - self.center) / tau, dim=-1)).sum(-1).mean()
        return StepOutput(loss, {"loss": loss.detach(), "teacher_temp": tau, "teacher_entropy": entropy.detach()})

    def after_backward(self, progress: float) -> None:
        """Clip each gradient's norm (3.0) and cancel the last layer's gradients in the first epoch(s)."""
        if self.clip_grad > 0:
            clip_gradients_(self.backbone.parameters(), self.clip_grad)
            clip_gradients_(self.head.parameters(), self.clip_grad)
        cancel_gradients_(self.head.last_layer.parameters(), self.epoch, self.freeze_last_layer)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """The teacher follows the student (momentum on a cosine to 1) and the center the teacher. The
        momentum is the schedule's value at this step's index (`self.progress`, before the step), as the
        official `momentum_schedule[it]`: the first update uses exactly `momentum`."""
        m = self.momentum + (self.final_momentum - self.momentum) * (1 - _cos_half(self.progress))
        for online, target in self.momentum_pairs():
            ema_update(target, online, m)
        if self._teacher_out:
            self.center.copy_(update_center(self.center, self._teacher_out, self.center_momentum))
        self._teacher_out = []

    def encoder(self) -> nn.Module:
        return self.teacher_backbone




def _cos_half(progress: float) -> float:
    """(1 + cos(pi p)) / 2: 1 at the start, 0 at the end (BYOL's / DINO's momentum cosine)."""
    return (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))) / 2

