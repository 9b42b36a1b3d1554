"""The base class every method subclasses: it declares its parts and turns views into a loss."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sslkit.nn.heads import build_head


@contextlib.contextmanager
def fp32_loss(*tensors: Tensor) -> Iterator[Any]:
    """Autocast off and half-precision `tensors` cast to float32: contrastive logits are exp(sim / tau) with tau ~ 0.1,
    where bf16's 8-bit mantissa loses the differences between negatives. Yields one tensor or a tuple."""
    with torch.autocast(device_type=tensors[0].device.type, enabled=False):
        out = tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors)
        yield out[0] if len(out) == 1 else out


@dataclass
class StepOutput:
    """What one training step returns: the loss, scalars to log, and whether backward already ran."""

    loss: Tensor
    logs: dict[str, float | Tensor] = field(default_factory=dict)
    backward_done: bool = False


class ContrastiveMethod(nn.Module, ABC):
    """A self-supervised method: parts (encoders, heads) plus `training_step(views) -> StepOutput`.

    It knows nothing about devices, launching, logging or checkpoints: the engine moves it, wraps it
    for data parallelism, calls `forward` (= `training_step`), steps the optimizer and then
    `after_step(progress)`. Everything in `state_dict()` (a queue, a momentum encoder) is checkpointed.

    Subclass it, set `n_views` if not 2, and register with `@register_method("name")`.
    """

    method_name: ClassVar[str] = ""
    n_views: ClassVar[int] = 2
    #: True when training_step runs backward itself (gradient caching); the engine then syncs
    #: gradients across ranks by hand instead of wrapping the method in DistributedDataParallel.
    custom_backward: bool = False

    def __init__(self, backbone: nn.Module, feature_dim: int, head: Mapping[str, Any] | None = None) -> None:
        """A subclass declares its own parameters as keyword arguments of its `__init__`: they are the
        `method.*` keys it accepts, and any other key is a one-line error (sslkit.build)."""
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head_cfg = dict(head or {"kind": "mlp"})
        self._backward: Callable[[Tensor], None] = Tensor.backward

    def build_head(self) -> nn.Sequential:
        """A fresh projection head from the `head` config group, on top of the backbone features."""
        return build_head(self.head_cfg, self.feature_dim)

    @abstractmethod
    def training_step(self, views: Sequence[Tensor]) -> StepOutput:
        """Turn `n_views` augmented batches (each N x 3 x H x W) into a loss."""

    def forward(self, views: Sequence[Tensor]) -> StepOutput:  # the engine calls the module
        return self.training_step(views)

    def after_step(self, progress: float) -> None:
        """Called after each optimizer step with training progress in [0, 1] (EMA update, enqueue)."""

    def stall_check(self, step: int, logs: Mapping[str, float]) -> str | None:
        """Called by the engine with each step's logged scalars; a one-line warning when training is
        visibly stuck (e.g. MoCo's loss at ln(K+1) with accuracy 0), else None. Default: never."""
        return None

    def set_backward(self, fn: Callable[[Tensor], None]) -> None:
        """The engine's backward (AMP scaling); used by methods with `custom_backward`."""
        self._backward = fn

    def encoder(self) -> nn.Module:
        """The backbone that evaluation and export use."""
        return self.backbone
