"""Data parallelism for a method: DistributedDataParallel, or gradients synced by hand."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sslkit.devices import World, broadcast_
from sslkit.methods.base import SSLMethod


def wrap(method: SSLMethod, world: World) -> nn.Module:
    """The module the loop calls: `method` itself in one process, or after every rank took rank 0's
    weights; DistributedDataParallel unless the method runs backward itself (`custom_backward`)."""
    if world.size == 1:
        return method
    for tensor in method.state_dict().values():  # every rank starts from rank 0's weights, queue, buffers
        broadcast_(tensor)
    if method.custom_backward:  # gradient caching runs several backwards; the loop syncs grads by hand
        return method
    ids = [world.device.index] if world.device.type == "cuda" else None
    # Buffers (queue, BN statistics) were broadcast once above; syncing them every forward would
    # send the whole queue each step. torch >= 2.14 names the switch forward_sync_buffers.
    no_sync: dict[str, Any] = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(method, device_ids=ids, **no_sync)
