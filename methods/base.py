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
from sslkit.nn.param_groups import ParamRule


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


class SSLMethod(nn.Module, ABC):
    """A self-supervised method of any family: parts (encoders, heads) plus `training_step(views) -> StepOutput`.

    It knows nothing about devices, launching, logging or checkpoints: the engine moves it, wraps it
    for data parallelism, calls `forward` (= `training_step`, with `self.progress` set), runs backward,
    calls `after_backward(progress)`, steps the optimizer and then `after_step(progress)`. Everything in
    `state_dict()` (a queue, a teacher, a center) is checkpointed.

    What a method declares (each has a default, so a subclass states only what it changes):

    * its views: `views` in its YAML (a named set of `sslkit.augment.views`, e.g. `byol` or `dino`, with
      per-view sizes and counts), or `n_views` copies of the `aug` recipe; `needs_local_views` makes a
      view setting without local crops a one-line error;
    * its heads: built in `__init__` from `sslkit.nn` (projector, predictor, DINO head, prototypes);
    * `param_rules()`: parameter groups by name prefix (a learning-rate scale, a fixed rate, no decay);
    * `momentum_pairs()`: the (online, target) modules an EMA teacher follows;
    * `after_backward(progress)` and `after_step(progress)`: gradient clipping, a frozen last layer,
      EMA and queue updates;
    * `encoder()`: the network evaluation and export use (saved under its own checkpoint key);
    * `family` and `paper`: what `sslkit methods` lists.

    A method that depends on the number of training processes takes `world_size: int = 1` as a keyword
    of its `__init__`: the app passes the World's size there (the one source; not a `method.*` key).
    """

    #: what `sslkit methods` lists: contrastive | distillation | redundancy reduction | clustering | ...
    family: ClassVar[str] = "other"
    paper: ClassVar[str] = ""
    #: views per step when the config's `views` is null: copies of the `aug` recipe
    n_views: ClassVar[int] = 2
    #: True when the loss needs local (multi-crop) views: a view setting without any is a one-line error
    needs_local_views: ClassVar[bool] = False
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
        #: training progress in [0, 1] and epochs done (a float) before the step being run: the engine sets
        #: both before `training_step`, so schedules in epochs (DINO's warm-ups) need no loader knowledge
        self.progress = 0.0
        self.epoch = 0.0
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
        """Turn the views (global views first, then local ones; each N x 3 x H x W) into a loss."""

    def forward(self, views: Sequence[Tensor], backward: Callable[[Tensor], None] | None = None,
                progress: float | None = None, epoch: float | None = None) -> StepOutput:
        """The engine calls the module: one `training_step`, with `backward` (the engine's, AMP loss
        scaling included) as what `self.backward` runs, and `progress` / `epoch` as `self.progress` /
        `self.epoch`."""
        self._backward_fn, self._backward_calls = backward or Tensor.backward, 0
        if progress is not None:
            self.progress = float(progress)
        if epoch is not None:
            self.epoch = float(epoch)
        out = self.training_step(views)
        out.backward_done = self._backward_calls > 0
        return out

    def param_rules(self) -> Sequence[ParamRule]:
        """Parameter groups by name prefix (e.g. SimSiam's predictor at a fixed rate). Default: none."""
        return ()

    def momentum_pairs(self) -> Sequence[tuple[nn.Module, nn.Module]]:
        """(online, target) pairs whose target follows the online module by EMA. Default: none."""
        return ()

    def after_backward(self, progress: float) -> None:
        """Called after backward (and the gradients' sync), before the optimizer step, with training
        progress in [0, 1]: gradient clipping, a last layer frozen early on. Default: nothing."""

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
        """The backbone that evaluation and export use (a teacher, for a method evaluated on it)."""
        return self.backbone


class ContrastiveMethod(SSLMethod):
    """The base for contrastive methods (MoCo, SimCLR, a user's own): a query/key or two-view encoder
    trained against negatives. Subclass it, set `n_views` if not 2, and register with
    `@register_method("name")`; every hook of `SSLMethod` is there to override.
    """

    family: ClassVar[str] = "contrastive"
