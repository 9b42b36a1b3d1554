"""SimCLR under 2 gloo processes with local batch B equals one process with batch 2B (global negatives).

The encoder has no BatchNorm, so per-rank and whole-batch forward passes compute the same embeddings;
any difference then comes from the gather, the loss's offsets or the gradient averaging.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from unittest import mock

import pytest
import torch
from torch import Tensor, nn

pytestmark = pytest.mark.distributed

B, TAU = 6, 0.5


def views() -> tuple[Tensor, Tensor]:
    """The global batch (2B images, two views), float64; rank r trains rows r*B:(r+1)*B."""
    g = torch.Generator().manual_seed(7)
    return torch.randn(2 * B, 3, 4, 4, generator=g, dtype=torch.float64), \
        torch.randn(2 * B, 3, 4, 4, generator=g, dtype=torch.float64)


def simclr(chunk_size: int | None = None, gather: bool = True, world: int = 1) -> nn.Module:
    from sslkit.build import method_defaults
    from sslkit.methods.simclr import SimCLR

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.Tanh(), nn.Linear(32, 16))  # no BatchNorm
    head = {"kind": "mlp", "hidden_dim": 24, "out_dim": 8}
    method = SimCLR(backbone, 16, head,
                    **method_defaults("simclr", temperature=TAU, chunk_size=chunk_size, gather_distributed=gather),
                    world_size=world)
    return method.double()


def grads(method: nn.Module) -> dict[str, Tensor]:
    return {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}


VARIANTS = {"ddp": (None, True), "grad_cache": (4, True), "grad_cache_blockwise": (4, True),
            "local_negatives": (None, False)}


def blockwise_ntxent(on: bool) -> contextlib.AbstractContextManager:
    """NT-Xent block by block even at this tiny batch (blocks of 5 of the 24 views), through the gather."""
    from sslkit.contrastive.ntxent import ntxent_loss
    from sslkit.methods.simclr import SimCLR

    if not on:
        return contextlib.nullcontext()
    return mock.patch.object(sys.modules[SimCLR.__module__], "ntxent_loss",
                             functools.partial(ntxent_loss, block=5))


def simclr_worker(rank: int, world: int, out_dir) -> None:
    from sslkit.devices import World, all_reduce_mean_
    from sslkit.engine.parallel import wrap

    results = {}
    for name, (chunk_size, gather) in VARIANTS.items():
        method = simclr(chunk_size, gather, world)
        model = wrap(method, World(rank, rank, world, torch.device("cpu")))  # DDP, or grad cache: by hand
        assert (model is method) == (chunk_size is not None)
        x1, x2 = (v[rank * B:(rank + 1) * B] for v in views())
        with blockwise_ntxent(name.endswith("blockwise")):
            out = model([x1, x2])  # the engine's step, as in engine.loop.fit
        if not out.backward_done:
            method.backward(out.loss)
        if model is method:
            all_reduce_mean_([p.grad for p in method.parameters() if p.grad is not None])
        results[name] = {"loss": out.loss.detach(), "grads": grads(method)}
    torch.save(results, out_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(ddp) -> list[dict]:
    return ddp(simclr_worker)


@pytest.fixture(scope="module")
def reference() -> tuple[Tensor, dict[str, Tensor]]:
    """One process, the whole batch of 2B: loss and gradients."""
    method = simclr()
    out = method(list(views()))
    out.loss.backward()
    return out.loss.detach(), grads(method)


@pytest.mark.parametrize("variant", ["ddp", "grad_cache", "grad_cache_blockwise"])
def test_two_ranks_equal_one_process_with_the_global_batch(ranks, reference, variant: str) -> None:
    loss, ref_grads = reference
    r0, r1 = (r[variant] for r in ranks)
    # Equal local batches: the global loss is the mean of the ranks' losses.
    torch.testing.assert_close((r0["loss"] + r1["loss"]) / 2, loss, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(r0["loss"], r1["loss"])
    assert set(ref_grads) == set(r0["grads"]) == set(r1["grads"])
    for r in (r0, r1):
        for name, g in ref_grads.items():
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-10, atol=1e-12, msg=f"grad of {name}")


def test_without_the_gather_negatives_stay_local(ranks, reference) -> None:
    """The check above is sensitive: local negatives only (gather_distributed=false) give other gradients."""
    loss, ref_grads = reference
    r0, r1 = (r["local_negatives"] for r in ranks)
    assert not torch.allclose((r0["loss"] + r1["loss"]) / 2, loss, rtol=1e-6)
    assert not torch.allclose(r0["grads"]["head.0.weight"], ref_grads["head.0.weight"], rtol=1e-6)
