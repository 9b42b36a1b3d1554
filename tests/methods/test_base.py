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
