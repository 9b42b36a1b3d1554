"""The general method API through the engine (issue 20): what `SSLMethod` declares reaches the loop,
the optimizer and the checkpoint, in the order the docs give, at every step of a 2-epoch run."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sslkit.data.base import TensorImageDataset
from sslkit.data.loader import train_loader
from sslkit.devices import World
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.logger import NullLogger
from sslkit.engine.loop import FitInputs, LoopSettings, fit
from sslkit.engine.optim import build_optimizer
from sslkit.engine.schedule import build_scheduler
from sslkit.methods import SSLMethod, StepOutput
from sslkit.nn.backbones import encoder_weights
from sslkit.nn.param_groups import ParamRule
from tests.conftest import TinyEncoder

SPE, EPOCHS = 3, 2


class Recording(SSLMethod):
    """A non-contrastive method that records what the engine hands it, and when."""

    family = "test"

    def __init__(self) -> None:
        super().__init__(TinyEncoder(4), 4)
        self.predictor = nn.Linear(4, 4)
        self.teacher = TinyEncoder(4)
        self.events: list[tuple[str, float, float, bool]] = []

    def param_rules(self) -> Sequence[ParamRule]:
        return [ParamRule("predictor", fixed_lr=True)]

    def training_step(self, views: Sequence[Tensor]) -> StepOutput:
        self.events.append(("step", self.progress, self.epoch, False))
        loss = self.predictor(self.backbone(views[0])).pow(2).mean()
        return StepOutput(loss, {"loss": loss.detach()})

    def after_backward(self, progress: float) -> None:
        has_grads = all(p.grad is not None for p in self.backbone.parameters())
        self.events.append(("after_backward", progress, self.epoch, has_grads))

    def after_step(self, progress: float) -> None:
        has_grads = any(p.grad is not None for p in self.backbone.parameters())  # zeroed after the step
        self.events.append(("after_step", progress, self.epoch, has_grads))

    def encoder(self) -> nn.Module:
        return self.teacher  # evaluated on another network than the one trained


def test_the_loop_hands_progress_and_epoch_and_calls_the_hooks_in_order(tmp_path):
    torch.manual_seed(0)
    method = Recording()
    images = torch.randint(0, 255, (SPE * 4, 3, 6, 6), dtype=torch.uint8)
    data = TensorImageDataset(images, torch.zeros(len(images), dtype=torch.long), 1)
    opt = build_optimizer(method, {"name": "sgd", "lr": 0.1, "lr_scaling": "none"}, 4, method.param_rules())
    total = SPE * EPOCHS
    sched = build_scheduler(opt, {"schedule": "cosine", "warmup_epochs": 0}, total, SPE)
    lrs: list[list[float]] = []
    opt.register_step_post_hook(lambda o, *_: lrs.append([g["lr"] for g in o.param_groups]))
    settings = LoopSettings(epochs=EPOCHS, total_steps=total, steps_per_epoch=SPE, log_every=1, checkpoint_every=0)
    fit(FitInputs(method, train_loader(data, 4, seed=0), lambda x: [x.float() / 255], opt, sched,
                  World(0, 0, 1, torch.device("cpu")), settings, tmp_path, NullLogger()))
    kinds = [e[0] for e in method.events]
    assert kinds == ["step", "after_backward", "after_step"] * total
    for i in range(total):
        step, back, after = method.events[3 * i: 3 * i + 3]
        assert step[1] == back[1] == i / total and after[1] == (i + 1) / total  # progress before / after
        assert abs(step[2] - i / SPE) < 1e-12  # epochs done, as a float: 0, 1/3, 2/3, 1, ...
        assert back[3] and not after[3]  # gradients exist in after_backward, are cleared after the step
    fixed = [g for g in opt.param_groups if g.get("fixed_lr")]
    assert fixed and all(lr[opt.param_groups.index(fixed[0])] == 0.1 for lr in lrs)  # the declared rule held
    saved = ckpt.load(tmp_path)
    weights = encoder_weights(saved)
    teacher = method.teacher.state_dict()
    assert weights.keys() == teacher.keys() and all(torch.equal(weights[k], teacher[k]) for k in teacher)
    assert not torch.equal(weights["net.0.weight"], method.backbone.state_dict()["net.0.weight"])


def test_old_checkpoints_without_an_encoder_key_give_the_backbone():
    state = {"method": {"backbone.w": torch.ones(1), "head.w": torch.zeros(1)}}
    assert encoder_weights(state) == {"w": torch.ones(1)}
