"""The one backward hook: a method that runs backward itself calls `self.backward(loss)`, which runs
the engine's backward (the one passed to `forward`), and the step says so."""

from __future__ import annotations

import torch
from torch import Tensor

from sslkit.methods import ContrastiveMethod, StepOutput
from tests.conftest import TinyEncoder


class Own(ContrastiveMethod):
    custom_backward = True

    def training_step(self, views):
        loss = self.backbone(views[0]).pow(2).mean()
        self.backward(loss)
        return StepOutput(loss.detach())


class Plain(ContrastiveMethod):
    def training_step(self, views):
        return StepOutput(self.backbone(views[0]).pow(2).mean())


def test_self_backward_runs_the_engines_backward_and_marks_the_step():
    seen: list[Tensor] = []

    def scaled(loss: Tensor) -> None:  # what the engine passes: e.g. AMP's scaled backward
        seen.append(loss)
        (loss * 4).backward()

    x = torch.randn(4, 3, 8, 8)
    torch.manual_seed(0)
    own = Own(TinyEncoder(), 16)
    out = own([x], scaled)
    assert out.backward_done and len(seen) == 1
    torch.manual_seed(0)
    plain = Plain(TinyEncoder(), 16)
    ref = plain([x])
    assert not ref.backward_done
    ref.loss.backward()
    for a, b in zip(own.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, 4 * b.grad)


def test_without_an_engine_backward_is_plain_autograd():
    m = Own(TinyEncoder(), 16)
    assert m([torch.randn(2, 3, 8, 8)]).backward_done
    assert all(p.grad is not None for p in m.backbone.parameters())


class Seeing(ContrastiveMethod):
    """Records what the step sees of the training progress."""

    def training_step(self, views):
        self.seen = (self.progress, self.epoch)
        return StepOutput(self.backbone(views[0]).pow(2).mean())


def test_progress_starts_at_zero_follows_the_engine_and_persists_between_calls():
    """Outside the engine (a notebook) a step sees the start of training; the engine's values are
    kept until it passes new ones, so a schedule never jumps back to its start."""
    m = Seeing(TinyEncoder(), 16)
    x = [torch.randn(2, 3, 8, 8)]
    m(x)
    assert m.seen == (0.0, 0.0)
    m(x, progress=0.25, epoch=1.5)
    assert m.seen == (0.25, 1.5)
    m(x)
    assert m.seen == (0.25, 1.5)
    assert not m(x).backward_done and m(x, progress=0.5).backward_done is False


def test_only_swav_needs_local_views():
    from sslkit.registry import available_methods

    needing = {name for name, cls in available_methods().items() if cls.needs_local_views}
    assert needing == {"swav"}  # DINO trains on its 2 global crops alone too (methods/dino.py)
    assert ContrastiveMethod.needs_local_views is False


def test_a_method_without_a_training_step_cannot_be_built():
    import pytest

    from sslkit.methods import SSLMethod

    class NoStep(SSLMethod):
        pass

    with pytest.raises(TypeError, match="training_step"):
        NoStep(TinyEncoder(), 16)
