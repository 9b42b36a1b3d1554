"""The base class every method subclasses: it declares its parts and turns views into a loss."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from sslkit.nn.heads import build_head


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

    def set_backward(self, fn: Callable[[Tensor], None]) -> None:
        """The engine's backward (AMP scaling); used by methods with `custom_backward`."""
        self._backward = fn

    def encoder(self) -> nn.Module:
        """The backbone that evaluation and export use."""
        return self.backbone
