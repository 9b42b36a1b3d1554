"""SimCLR (Chen et al. 2020, arXiv 2002.05709): end-to-end, both views with gradient, NT-Xent (eq. 1)."""

from __future__ import annotations

import math
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


def bn_chunks(n: int, chunk_images: int, device: torch.device | None = None) -> list[Tensor]:
    """The rows of cat([view1, view2]) (2n rows) that BatchNorm sees together: m = ceil(n / C) chunks
    of view 1 (contiguous blocks of images) and m chunks of view 2 (images j, j + m, j + 2m, ...), each
    of at most C views. The two views of an image are never in one chunk, and every view-2 chunk
    shares about n / m^2 images with every view-1 chunk, so a positive's chunk is no likelier than a
    negative's to mirror its anchor's chunk: the leak shuffle-BN removes in MoCo (arXiv 1911.05722,
    sec. 3.3). At n <= C the two chunks are view 1 and view 2 of the whole batch."""
    m = math.ceil(n / chunk_images)
    images = torch.arange(n, device=device)
    return [*images.tensor_split(m), *(images[j::m] + n for j in range(m))]


@register_method("simclr")
class SimCLR(ContrastiveMethod):
    """One encoder + MLP head on both views; negatives are the other 2N-2 views of the (global) batch.

    BatchNorm: without `chunk_size`, one BN over all 2N views (like SimCLR's global BN). With
    `chunk_size` = C, BN runs over chunks of at most C views, one view per image (`bn_chunks`): the
    two views of an image never share BN statistics, and a batch of N <= C is two chunks (view 1,
    view 2), so every batch size has the same regime. Batches above C images are trained by
    gradient caching (Gao et al. 2021) in the memory of one chunk; the gradients equal those of the
    same per-chunk-BN computation done directly, not those of one BN over the batch
    (docs/deviations.md).

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

    def _embed_chunked(self, x: Tensor, chunks: list[Tensor]) -> Tensor:
        """The embeddings of x's rows in their own order, BN over each chunk of rows (with a graph when
        gradients are enabled)."""
        order = torch.cat(chunks)
        z = torch.cat([self._embed(x[c]) for c in chunks])
        return z[torch.argsort(order)]

    def training_step(self, views: Sequence[Tensor]) -> StepOutput:
        x = torch.cat([views[0], views[1]])  # one pass: BN statistics over both views
        n = views[0].shape[0]
        if self.chunk_size is None:
            loss = self._loss(self._embed(x))
            return StepOutput(loss, {"loss": loss.detach()})
        chunks = bn_chunks(n, self.chunk_size, x.device)
        if n > self.chunk_size and torch.is_grad_enabled():  # gradient caching, one chunk in memory
            order = torch.cat(chunks)
            inverse = torch.argsort(order)
            loss = cached_backward(self._embed, self, x[order], [len(c) for c in chunks],
                                   lambda z: self._loss(z[inverse]), self.backward)
            return StepOutput(loss, {"loss": loss})
        loss = self._loss(self._embed_chunked(x, chunks))
        if torch.is_grad_enabled():  # keep one gradient path per method (custom_backward)
            self.backward(loss)
            return StepOutput(loss.detach(), {"loss": loss.detach()})
        return StepOutput(loss, {"loss": loss.detach()})
