"""Gradient caching (Gao et al. 2021, arXiv 2101.06983): a contrastive step over a batch of any size
with memory bounded by the chunk size.

1. embed every chunk without a graph; 2. compute the loss and d loss / d embeddings;
3. re-run each chunk with a graph and backpropagate its cached embedding gradients.
The parameter gradients equal those of embedding the same chunks with a graph and calling
backward on the loss directly (BatchNorm sees the same chunks in both).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def _bn_buffers(module: nn.Module) -> list[Tensor]:
    return [b for m in module.modules() if isinstance(m, _BatchNorm) for b in m.buffers()]


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


Encode = Callable[[Tensor], Tensor]


def embed_chunks(encode: Encode, x: Tensor, chunk_size: int | list[int]) -> Tensor:
    """The direct computation: `encode` applied chunk by chunk, with a graph."""
    return torch.cat([encode(c) for c in x.split(chunk_size)])


def cached_backward(encode: Encode, modules: nn.Module, x: Tensor, chunk_size: int | list[int],
                    loss_fn: Callable[[Tensor], Tensor],
                    backward: Callable[[Tensor], None] = Tensor.backward) -> Tensor:
    """Accumulate into .grad the gradient of `loss_fn(embed_chunks(encode, x))` and return the loss.

    `chunk_size`: rows per chunk, or each chunk's number of rows (as `Tensor.split`).
    `modules` holds every BatchNorm that `encode` runs (its statistics are updated once, not twice).
    `backward` runs the loss's own backward (e.g. through an AMP grad scaler); the chunk re-runs
    then carry the already-scaled embedding gradients.
    """
    chunks = x.split(chunk_size)
    saved = [b.clone() for b in _bn_buffers(modules)]
    states, embeddings = [], []
    with torch.no_grad():
        for c in chunks:
            states.append(_rng_state(x.device))
            embeddings.append(encode(c))
    for buf, old in zip(_bn_buffers(modules), saved, strict=True):  # pass 2 updates BN stats once
        buf.copy_(old)
    z = torch.cat(embeddings).detach().requires_grad_(True)
    loss = loss_fn(z)
    backward(loss)
    assert z.grad is not None
    for c, state, grad in zip(chunks, states, z.grad.split(chunk_size), strict=True):
        _set_rng_state(state, x.device)
        encode(c).backward(grad)
    return loss.detach()
