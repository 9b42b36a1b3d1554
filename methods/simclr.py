"""SimCLR (Chen et al. 2020, arXiv 2002.05709): end-to-end, both views with gradient, NT-Xent (eq. 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sslkit.contrastive.grad_cache import cached_backward
from sslkit.contrastive.ntxent import ntxent_loss
from sslkit.devices import gather_with_grad, rank
from sslkit.errors import ConfigError
from sslkit.methods.base import ContrastiveMethod, StepOutput, fp32_loss
from sslkit.registry import register_method


def paired_chunk_order(n: int, chunk_images: int, device: torch.device | None = None) -> Tensor:
    """A permutation of the 2n rows of cat([view1, view2]) such that consecutive blocks of
    2 * chunk_images rows hold BOTH views of the same chunk_images images (the last block may be
    shorter): BN over a chunk then sees what per-device BN sees on n / chunk_images devices."""
    rows = torch.arange(2 * n, device=device).view(2, n)
    return torch.cat([rows[:, s:s + chunk_images].reshape(-1) for s in range(0, n, chunk_images)])


@register_method("simclr")
class SimCLR(ContrastiveMethod):
    """One encoder + MLP head on both views; negatives are the other 2N-2 views of the (global) batch.

    BatchNorm: without `chunk_size`, one BN over all 2N views (like SimCLR's global BN). With
    `chunk_size` = C images, the batch is embedded in chunks of C images holding both views of each
    image (per-chunk BN, like per-device BN on N/C devices), and batches above C images are trained
    by gradient caching (Gao et al. 2021) in the memory of one chunk. The gradients then equal those
    of the same per-chunk-BN computation done directly; they differ from the single-BN full batch,
    since BN statistics over a chunk differ from those over the batch (docs/evaluation.md).

    Defaults: configs/method/simclr.yaml (tau 0.1, global negatives, no chunks).
    """

    paper = "Chen et al. 2020, arXiv 2002.05709"

    def __init__(self, backbone: nn.Module, feature_dim: int, head: Any = None, *, temperature: float,
                 gather_distributed: bool, chunk_size: int | None, world_size: int = 1) -> None:
        super().__init__(backbone, feature_dim, head)
        self.check_params({"temperature": temperature, "chunk_size": chunk_size})
        self.world_size = world_size
        self.temperature, self.gather_distributed, self.chunk_size = temperature, gather_distributed, chunk_size
        self.custom_backward = chunk_size is not None
        self.head = self.build_head()

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        """tau > 0; chunks of at least one image (their types come from `__init__`'s annotations)."""
        if params.get("temperature", 1.0) <= 0:
            raise ConfigError(f"method.temperature={params.get('temperature')} is invalid: must be > 0")
        chunk = params.get("chunk_size")
        if chunk is not None and chunk < 1:
            raise ConfigError(f"method.chunk_size={chunk} is invalid: must be >= 1 image (or null: no chunks)")

    def _embed(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def _loss(self, z: Tensor) -> Tensor:
        with fp32_loss(z) as z32:  # logits in fp32 under bf16/fp16 autocast
            z1, z2 = z32.chunk(2)
            if self.gather_distributed and self.world_size > 1:
                return ntxent_loss(z1, z2, self.temperature, gather_with_grad(z1), gather_with_grad(z2),
                                   offset=rank() * z1.shape[0])
            return ntxent_loss(z1, z2, self.temperature)

    def training_step(self, views: Sequence[Tensor]) -> StepOutput:
        x = torch.cat([views[0], views[1]])  # one pass: BN statistics over both views
        n = views[0].shape[0]
        if self.chunk_size is not None and n > self.chunk_size and torch.is_grad_enabled():
            order = paired_chunk_order(n, self.chunk_size, x.device)
            inverse = torch.argsort(order)
            loss = cached_backward(self._embed, self, x[order], 2 * self.chunk_size,
                                   lambda z: self._loss(z[inverse]), self.backward)
            return StepOutput(loss, {"loss": loss})
        loss = self._loss(self._embed(x))
        if self.custom_backward and torch.is_grad_enabled():  # keep one gradient path per method
            self.backward(loss)
            return StepOutput(loss.detach(), {"loss": loss.detach()})
        return StepOutput(loss, {"loss": loss.detach()})
