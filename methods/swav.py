"""SwAV (Caron et al. 2020, arXiv 2006.09882): swapping assignments between multi-crop views.

Each crop's embedding z = normalize(projector(f(x))) is scored against K L2-normalised prototypes
(zᵀC); the codes q of the high-resolution crops come from Sinkhorn-Knopp on those scores (eq. 3,
ε = 0.05, 3 iterations, `sslkit.losses.sinkhorn`), and each code is predicted from every other crop
with a softmax at τ = 0.1 (eq. 1-2, `sslkit.losses.swav`). Training details from the paper (Sec. 4,
appendix) and main_swav.py: a 2-layer projector (2048 hidden with BN, 128 out), 3000 prototypes put
back on the unit sphere after each step, the prototypes' gradients dropped in the first epoch, and,
for small batches, a queue of the last `queue_length` embeddings of the assignment crops (filled from
epoch `epoch_queue_starts`, used once full) whose scores join Sinkhorn's columns (Sec. 3.1). LARS,
lr 0.3 x B/256 (4.8 at B = 4096). Evaluation and export use the backbone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslkit.errors import ConfigError
from sslkit.losses.swav import swav_loss
from sslkit.methods.base import SSLMethod, StepOutput, fp32_loss
from sslkit.nn.gradients import cancel_gradients_
from sslkit.nn.mlp import LayerSpec, build_mlp
from sslkit.nn.multicrop import forward_by_size
from sslkit.nn.prototypes import Prototypes, normalize_prototypes_
from sslkit.registry import register_method


@register_method("swav")
class SwAV(SSLMethod):
    """Backbone + projector + prototypes trained by swapped prediction of Sinkhorn codes (eq. 1-3)."""

    family: ClassVar[str] = "clustering"
    paper: ClassVar[str] = "Caron et al. 2020, arXiv 2006.09882"
    needs_local_views: ClassVar[bool] = True

    queue: Tensor
    queue_filled: Tensor

    def __init__(self, backbone: nn.Module, feature_dim: int, head: Any = None, *, hidden_dim: int, out_dim: int,
                 n_prototypes: int, temperature: float, epsilon: float, sinkhorn_iterations: int,
                 crops_for_assign: int, queue_length: int, epoch_queue_starts: float, freeze_prototypes: float,
                 world_size: int = 1) -> None:
        """`world_size`: the processes sharing the queue (each holds queue_length / world_size rows, as
        the official code); `sslkit.build.build_method` passes the running process group's size."""
        super().__init__(backbone, feature_dim, head)
        self.check_bounds({"n_prototypes": n_prototypes, "temperature": temperature, "epsilon": epsilon,
                           "sinkhorn_iterations": sinkhorn_iterations, "crops_for_assign": crops_for_assign,
                           "queue_length": queue_length, "epoch_queue_starts": epoch_queue_starts,
                           "freeze_prototypes": freeze_prototypes, "world_size": world_size})
        world = world_size
        self.projector = build_mlp(feature_dim, [LayerSpec(hidden_dim, "affine", "relu", bias=True),
                                                 LayerSpec(out_dim, bias=True)])
        self.prototypes = Prototypes(out_dim, n_prototypes)
        self.temperature, self.epsilon, self.sinkhorn_iterations = temperature, epsilon, sinkhorn_iterations
        self.crops_for_assign, self.epoch_queue_starts = crops_for_assign, epoch_queue_starts
        self.freeze_prototypes = freeze_prototypes
        rows = queue_length // world if queue_length > 0 else 0
        if queue_length > 0 and rows < 1:
            raise ConfigError(f"method.queue_length={queue_length} leaves no row per process over {world} "
                              f"processes; use at least {world} (or 0 for no queue)")
        # zeros until filled, as the official queue; `queue_filled` counts the real rows (capped)
        self.register_buffer("queue", torch.zeros(crops_for_assign, rows, out_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._pending: Tensor | None = None

    @staticmethod
    def check_bounds(p: Mapping[str, Any]) -> None:
        """One-line errors for values that type-check but mean nothing."""
        for key in ("temperature", "epsilon"):
            if float(p[key]) <= 0:
                raise ConfigError(f"method.{key} must be > 0, got {p[key]}")
        for key in ("n_prototypes", "sinkhorn_iterations", "crops_for_assign", "world_size"):
            if int(p[key]) < 1:
                raise ConfigError(f"method.{key} must be >= 1, got {p[key]}")
        for key in ("queue_length", "epoch_queue_starts", "freeze_prototypes"):
            if float(p[key]) < 0:
                raise ConfigError(f"method.{key} must be >= 0 (0: no queue / from the start / no freeze), "
                                  f"got {p[key]}")

    @property
    def queue_active(self) -> bool:
        """Whether this step's embeddings enter the queue (from epoch `epoch_queue_starts` on)."""
        return self.queue.shape[1] > 0 and self.epoch >= self.epoch_queue_starts

    def _embed(self, views: Sequence[Tensor]) -> list[Tensor]:
        """normalize(projector(f(x))) per crop; crops of one size go through the backbone together
        (its BN sees them as one batch, as the official multi-resolution forward)."""
        return forward_by_size(views, lambda x: F.normalize(self.projector(self.backbone(x)), dim=1))

    def training_step(self, views: Sequence[Tensor]) -> StepOutput:
        n_assign = self.crops_for_assign
        if len(views) <= n_assign:
            raise ConfigError(f"SwAV assigns codes on the first {n_assign} views and needs more views than "
                              f"that; got {len(views)}")
        z = self._embed(views)
        scores = [self.prototypes(e) for e in z]
        queued = None
        use_queue = self.queue_active and int(self.queue_filled) >= self.queue.shape[1]
        if use_queue:  # the stored embeddings against the current prototypes (no gradient)
            with torch.no_grad():
                queued = [q @ self.prototypes.weight.detach().T for q in self.queue]
        with fp32_loss(*scores, *(queued or [])) as outs:  # Sinkhorn's exp(s / 0.05) and the softmax in fp32
            outs = outs if isinstance(outs, tuple) else (outs,)
            s32, q32 = list(outs[:len(scores)]), (list(outs[len(scores):]) if queued else None)
            loss = swav_loss(s32[:n_assign], s32[n_assign:], q32, self.temperature, self.epsilon,
                             self.sinkhorn_iterations)
        self._pending = torch.stack([e.detach() for e in z[:n_assign]]) if self.queue_active else None
        return StepOutput(loss, {"loss": loss.detach(), "queue_used": float(use_queue)})

    def after_backward(self, progress: float) -> None:
        """No gradient to the prototypes during the first `freeze_prototypes` epochs (the official
        `freeze_prototypes_niters`, there in iterations)."""
        cancel_gradients_(self.prototypes.parameters(), self.epoch, self.freeze_prototypes)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Prototypes back on the unit sphere; this step's assignment-crop embeddings enter the queue
        (newest first, the oldest dropped, as the official shift)."""
        normalize_prototypes_(self.prototypes)
        if self._pending is not None:
            rows = self.queue.shape[1]
            self.queue.copy_(torch.cat([self._pending.to(self.queue.dtype), self.queue], dim=1)[:, :rows])
            self.queue_filled.fill_(min(rows, int(self.queue_filled) + self._pending.shape[1]))
        self._pending = None
