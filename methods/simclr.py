"""SimCLR (Chen et al. 2020, arXiv 2002.05709): end-to-end, both views with gradient, NT-Xent (eq. 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sslkit.contrastive.distributed import gather_with_grad, rank, world_size
from sslkit.contrastive.grad_cache import cached_backward
from sslkit.contrastive.ntxent import ntxent_loss
from sslkit.errors import ConfigError
from sslkit.methods.base import ContrastiveMethod, StepOutput
from sslkit.registry import register_method


@register_method("simclr")
class SimCLR(ContrastiveMethod):
    """One encoder + MLP head on both views; negatives are the other 2N-2 views of the (global) batch.

    With `chunk_size`, batches larger than one chunk are trained by gradient caching, so a batch of
    8192 needs the memory of one chunk and gives the same gradients.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, head: Any = None, *, temperature: float = 0.1,
                 gather_distributed: bool = True, chunk_size: int | None = None) -> None:
        super().__init__(backbone, feature_dim, head)
        if temperature <= 0:
            raise ConfigError(f"method.temperature must be > 0, got {temperature}")
        if chunk_size is not None and chunk_size < 2:
            raise ConfigError(f"method.chunk_size must be >= 2 images (or null), got {chunk_size}")
        self.temperature, self.gather_distributed, self.chunk_size = temperature, gather_distributed, chunk_size
        self.custom_backward = chunk_size is not None
        self.head = self.build_head()

    def _embed(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def _loss(self, z: Tensor) -> Tensor:
        z1, z2 = z.chunk(2)
        if self.gather_distributed and world_size() > 1:
            return ntxent_loss(z1, z2, self.temperature, gather_with_grad(z1), gather_with_grad(z2),
                               offset=rank() * z1.shape[0])
        return ntxent_loss(z1, z2, self.temperature)

    def training_step(self, views: Sequence[Tensor]) -> StepOutput:
        x = torch.cat([views[0], views[1]])  # one pass: BN statistics over both views
        if self.chunk_size is not None and x.shape[0] > self.chunk_size and torch.is_grad_enabled():
            loss = cached_backward(self._embed, self, x, self.chunk_size, self._loss, self._backward)
            return StepOutput(loss, {"loss": loss}, backward_done=True)
        loss = self._loss(self._embed(x))
        if self.custom_backward and torch.is_grad_enabled():  # keep one gradient path per method
            self._backward(loss)
            return StepOutput(loss.detach(), {"loss": loss.detach()}, backward_done=True)
        return StepOutput(loss, {"loss": loss.detach()})
