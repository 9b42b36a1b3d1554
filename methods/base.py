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
    """What one training step returns: the loss and scalars to log. `backward_done` is filled in by
    `ContrastiveMethod.forward`: True when the step called `self.backward` itself."""

    loss: Tensor
    logs: dict[str, float | Tensor] = field(default_factory=dict)
    backward_done: bool = field(default=False, init=False)


class ContrastiveMethod(nn.Module, ABC):
    """A self-supervised method: parts (encoders, heads) plus `training_step(views) -> StepOutput`.

    It knows nothing about devices, launching, logging or checkpoints: the engine moves it, wraps it
    for data parallelism, calls `forward` (= `training_step`), steps the optimizer and then
    `after_step(progress)`. Everything in `state_dict()` (a queue, a momentum encoder) is checkpointed.

    Subclass it, set `n_views` if not 2, and register with `@register_method("name")`. A method that
    depends on the number of training processes takes `world_size: int = 1` as a keyword of its
    `__init__`: the app passes the World's size there (the one source; not a `method.*` key).
    """

    n_views: ClassVar[int] = 2
    #: a plug-in's YAML of `method.*` defaults beside its module, instead of defaults in `__init__`
    defaults_file: ClassVar[str | None] = None
    #: True when training_step calls `self.backward(loss)` itself (gradient caching); the engine then
    #: syncs gradients across ranks by hand instead of wrapping the method in DistributedDataParallel.
    custom_backward: bool = False

    def __init__(self, backbone: nn.Module, feature_dim: int, head: Mapping[str, Any] | None = None) -> None:
        """A subclass declares its own parameters as keyword arguments of its `__init__`: they are the
        `method.*` keys it accepts, and any other key is a one-line error (sslkit.build)."""
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head_cfg = dict(head or {"kind": "mlp"})
        self._backward_fn: Callable[[Tensor], None] = Tensor.backward
        self._backward_calls = 0

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        """Bounds on the method's own parameters (`method.*` values, by keyword): a one-line
        sslkit.errors.ConfigError for a value out of range. Called once when the config is composed
        (sslkit.params.check_method_params; types come from the `__init__` annotations) and by a
        subclass's `__init__` for methods built by hand. Default: nothing to check."""

    def build_head(self) -> nn.Sequential:
        """A fresh projection head from the `head` config group, on top of the backbone features."""
        return build_head(self.head_cfg, self.feature_dim)

    @abstractmethod
    def training_step(self, views: Sequence[Tensor]) -> StepOutput:
        """Turn `n_views` augmented batches (each N x 3 x H x W) into a loss."""

    def forward(self, views: Sequence[Tensor], backward: Callable[[Tensor], None] | None = None) -> StepOutput:
        """The engine calls the module: one `training_step`, with `backward` (the engine's, AMP loss
        scaling included) as what `self.backward` runs."""
        self._backward_fn, self._backward_calls = backward or Tensor.backward, 0
        out = self.training_step(views)
        out.backward_done = self._backward_calls > 0
        return out

    def after_step(self, progress: float) -> None:
        """Called after each optimizer step with training progress in [0, 1] (EMA update, enqueue)."""

    def stall_check(self, step: int, logs: Mapping[str, float]) -> str | None:
        """Called by the engine with each step's logged scalars; a one-line warning when training is
        visibly stuck (e.g. MoCo's loss at ln(K+1) with accuracy 0), else None. Default: never."""
        return None

    def backward(self, loss: Tensor) -> None:
        """Backpropagate `loss` the engine's way. The one hook for a method that runs backward itself
        (set `custom_backward = True`); the engine then skips its own backward for that step."""
        self._backward_fn(loss)
        self._backward_calls += 1

    def encoder(self) -> nn.Module:
        """The backbone that evaluation and export use."""
        return self.backbone
