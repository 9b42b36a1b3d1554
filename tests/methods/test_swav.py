"""SwAV (methods/swav.py) against lightly's SwaVLoss and the official training details, on a tiny
encoder, projector (32 hidden, 16 out) and 20 prototypes, 12 px global and 8 px local crops: the loss
(value, gradient, with and without the queue), the Sinkhorn codes' marginals, the prototypes frozen
in epoch 1 only and normalised after each step, the queue's start, learning, bit-exact resume through
`fit`, the backbone as the checkpoint's encoder, and views without local crops as a one-line error."""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from lightly.loss import SwaVLoss

import sslkit.losses.swav as swav_module
from sslkit.build import method_defaults
from sslkit.data.base import TensorImageDataset
from sslkit.data.loader import train_loader
from sslkit.devices import World
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.logger import NullLogger
from sslkit.engine.loop import FitInputs, LoopSettings, fit
from sslkit.engine.optim import build_optimizer
from sslkit.engine.schedule import build_scheduler
from sslkit.engine.signals import Interrupted
from sslkit.engine.state import restore
from sslkit.errors import ConfigError
from sslkit.methods.swav import SwAV
from sslkit.nn.backbones import build_backbone
from tests.conftest import TinyEncoder, needs_fashion

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

TINY = {"hidden_dim": 32, "out_dim": 16, "n_prototypes": 20, "queue_length": 0}
IMAGES, BATCH, EPOCHS = 16, 8, 2
SPE = IMAGES // BATCH  # 2 steps per epoch
STEPS = EPOCHS * SPE
WORLD = World(0, 0, 1, torch.device("cpu"))
OPTIM = {"name": "lars", "lr": 0.5, "lr_scaling": "none", "momentum": 0.9, "weight_decay": 1e-6,
         "trust_coefficient": 0.001, "exclude_bias_and_norm": False, "schedule": "cosine", "warmup_epochs": 0}


@functools.cache
def defaults() -> dict[str, Any]:
    return method_defaults("swav", **TINY)  # composing the config once (~1 s on a loaded machine)


def make_swav(encoder: torch.nn.Module | None = None, dim: int = 8, **changes: Any) -> SwAV:
    torch.manual_seed(0)
    return SwAV(encoder or TinyEncoder(dim), dim, None, **(defaults() | changes))


def views_of(x: torch.Tensor, n_local: int = 2) -> list[torch.Tensor]:
    """2 global crops (noisy, flipped) and `n_local` 8 px crops: draws from the global RNG."""
    g = [x + 0.1 * torch.randn_like(x), x.flip(-1) + 0.1 * torch.randn_like(x)]
    s = x.shape[-1]
    local = [x[..., i:i + 8, s - 8 - i:s - i] + 0.1 * torch.randn(*x.shape[:2], 8, 8) for i in range(n_local)]
    return [*g, *local]


def fit_views(images: torch.Tensor) -> list[torch.Tensor]:
    return views_of(images.float() / 255)


def dataset() -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    return TensorImageDataset(torch.randint(0, 255, (IMAGES, 3, 12, 12), generator=g, dtype=torch.uint8),
                              torch.arange(IMAGES) % 4, 4)


def parts(encoder: torch.nn.Module | None = None, dim: int = 8, **changes: Any) -> tuple[SwAV, Any, Any]:
    method = make_swav(encoder, dim, **changes)
    opt = build_optimizer(method, OPTIM, BATCH, method.param_rules())
    return method, opt, build_scheduler(opt, OPTIM, STEPS, SPE)


def run(run_dir: Path, method: SwAV, opt: Any, sched: Any, state: Any = None, extra: dict[str, Any] | None = None):
    settings = LoopSettings(epochs=EPOCHS, total_steps=STEPS, steps_per_epoch=SPE, log_every=1, checkpoint_every=0)
    return fit(FitInputs(method, train_loader(dataset(), BATCH, seed=3), fit_views, opt, sched, WORLD, settings,
                         run_dir, NullLogger(), checkpoint_extra=extra or {}), state)


def reference_scores(m: SwAV, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """zᵀC per crop, computed here: crops of one size through the backbone together."""
    def score(x: torch.Tensor, n: int) -> list[torch.Tensor]:
        z = F.normalize(m.projector(m.backbone(x)), dim=1)
        return list((z @ m.prototypes.weight.T).chunk(n))  # unit rows: normalised at build and after each step
    return [*score(torch.cat(views[:2]), 2), *score(torch.cat(views[2:]), len(views) - 2)]


def grads(m: SwAV) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("with_queue", [False, True])
def test_loss_and_gradient_equal_lightlys_swav_loss(with_queue):
    m = make_swav(queue_length=24 if with_queue else 0, epoch_queue_starts=0)
    if with_queue:  # a full queue of unit embeddings
        m.queue.copy_(F.normalize(torch.randn(2, 24, 16), dim=-1))
        m.queue_filled.fill_(24)
    x = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    views = views_of(x)
    out = m.training_step(views)
    out.loss.backward()
    ours = grads(m)
    scores = reference_scores(m, views)
    queue = [q @ m.prototypes.weight.detach().T for q in m.queue] if with_queue else None
    expected = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)(scores[:2], scores[2:], queue)
    expected.backward()
    theirs = grads(m)
    torch.testing.assert_close(out.loss, expected.squeeze(), rtol=1e-5, atol=1e-6)
    assert out.logs["queue_used"] == float(with_queue)
    assert ours.keys() == theirs.keys() and "prototypes.weight" in ours
    for name, grad in ours.items():
        torch.testing.assert_close(grad, theirs[name], rtol=1e-4, atol=1e-5, msg=name)  # conv bias before BN: ~0


def test_the_sinkhorn_codes_have_the_papers_marginals(monkeypatch):
    """Each sample's code sums to 1 (the last normalisation of every iteration count); each prototype
    receives B/K of the mass once the iterations converge (the paper's 3 only approach it)."""
    codes: list[torch.Tensor] = []
    original = swav_module.sinkhorn
    monkeypatch.setattr(swav_module, "sinkhorn", lambda *a: codes.append(original(*a)) or codes[-1])
    for iterations in (3, 200):
        codes.clear()
        m = make_swav(sinkhorn_iterations=iterations, n_prototypes=4)
        m.training_step(views_of(torch.rand(32, 3, 12, 12, generator=torch.Generator().manual_seed(1))))
        assert len(codes) == 2  # one per assignment crop
        for q in codes:
            assert q.shape == (32, 4) and (q >= 0).all()
            torch.testing.assert_close(q.sum(1), torch.ones(32))
            if iterations == 200:
                torch.testing.assert_close(q.sum(0), torch.full((4,), 32 / 4), rtol=1e-3, atol=0)


def test_prototypes_are_frozen_in_epoch_1_only_and_normalised_after_each_step(tmp_path, monkeypatch):
    method, opt, sched = parts(freeze_prototypes=1)
    before_opt: list[torch.Tensor] = []
    after_opt: list[torch.Tensor] = []
    had_grad: list[bool] = []
    after_step: list[torch.Tensor] = []

    def pre(*_: Any) -> None:
        before_opt.append(method.prototypes.weight.detach().clone())
        had_grad.append(method.prototypes.weight.grad is not None)

    def post(*_: Any) -> None:
        after_opt.append(method.prototypes.weight.detach().clone())

    opt.register_step_pre_hook(pre)
    opt.register_step_post_hook(post)
    original = SwAV.after_step

    def record(self: SwAV, progress: float) -> None:
        original(self, progress)
        after_step.append(self.prototypes.weight.detach().clone())

    monkeypatch.setattr(SwAV, "after_step", record)
    run(tmp_path, method, opt, sched)
    assert had_grad == [False, False, True, True]
    for step in range(STEPS):
        assert torch.equal(before_opt[step], after_opt[step]) == (step < SPE), step  # frozen in epoch 1 only
        torch.testing.assert_close(after_step[step].norm(dim=1), torch.ones(20))  # on the sphere after each step
    assert (after_opt[-1].norm(dim=1) - 1).abs().max() > 1e-5  # the step itself leaves it; after_step fixes it


def test_the_queue_fills_from_epoch_queue_starts_and_is_used_once_full():
    m = make_swav(queue_length=16, epoch_queue_starts=1)
    x = torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    used, filled, pushed = [], [], []
    for epoch in (0.0, 0.5, 1.0, 1.5, 2.0):
        with torch.no_grad():
            out = m(views_of(x), epoch=epoch)
        pending = m._pending
        m.after_step(0.0)
        used.append(out.logs["queue_used"])
        filled.append(int(m.queue_filled))
        pushed.append(pending)
    assert used == [0.0, 0.0, 0.0, 0.0, 1.0] and filled == [0, 0, 8, 16, 16]
    assert pushed[0] is None and pushed[1] is None
    last, before = pushed[3], pushed[2]
    assert last is not None and before is not None and last.shape == (2, 8, 16)
    torch.testing.assert_close(m.queue, torch.cat([pushed[4], last], dim=1))  # newest first, oldest dropped
    torch.testing.assert_close(m.queue.norm(dim=-1), torch.ones(2, 16))  # unit embeddings


def test_swav_learns_on_tiny_data_in_a_few_steps():
    """16 images of distinct colours with noisy multi-crop views: the swapped-prediction loss falls."""
    m = make_swav(dim=16, freeze_prototypes=0)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.3, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 1, 1, generator=g) + 0.2 * torch.rand(16, 3, 12, 12, generator=g)
    losses = []
    for step in range(15):
        out = m(views_of(x), progress=step / 15, epoch=1.0)
        out.loss.backward()
        m.after_backward(step / 15)
        opt.step()
        opt.zero_grad(set_to_none=True)
        m.after_step((step + 1) / 15)
        losses.append(float(out.loss.detach()))
    assert min(losses[-3:]) < 0.8 * losses[0], losses


def test_an_interrupted_run_resumes_bit_exact_including_queue_and_prototypes(tmp_path, monkeypatch):
    changes = {"queue_length": 8, "epoch_queue_starts": 0.5}  # filled at step 2, used from step 3
    torch.manual_seed(123)
    method, opt, sched = parts(**changes)
    run(tmp_path / "straight", method, opt, sched)
    straight = {k: v.clone() for k, v in method.state_dict().items()}
    assert int(straight["queue_filled"]) == 8

    torch.manual_seed(123)
    method, opt, sched = parts(**changes)
    original = SwAV.after_step

    def stop_at_step_3(self: SwAV, progress: float) -> None:
        original(self, progress)
        if progress == pytest.approx(3 / STEPS):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(SwAV, "after_step", stop_at_step_3)
    with pytest.raises(Interrupted):
        run(tmp_path / "resumed", method, opt, sched)
    monkeypatch.setattr(SwAV, "after_step", original)
    saved = ckpt.load(tmp_path / "resumed")
    assert saved["state"] == {"epoch": 1, "step": 3, "batch_in_epoch": 1}
    torch.manual_seed(999)
    method, opt, sched = parts(**changes)
    run(tmp_path / "resumed", method, opt, sched, restore(saved, method, opt, sched, None))
    resumed = method.state_dict()
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)


def test_the_checkpoints_encoder_is_the_backbone_and_evaluation_loads_it(tmp_path):
    from sslkit.evaluation.context import load_trained

    backbone_cfg = {"name": "resnet18", "width": 4, "small_images": True}
    method, opt, sched = parts(*build_backbone(backbone_cfg))
    run(tmp_path, method, opt, sched, extra={"config": yaml.safe_dump({"backbone": backbone_cfg})})
    loaded = load_trained(tmp_path).backbone.state_dict()
    expected = method.backbone.state_dict()
    assert method.encoder() is method.backbone and loaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"epsilon": -1.0}, {"n_prototypes": 0},
                                 {"queue_length": -1}, {"sinkhorn_iterations": 0}])
def test_bad_parameters_are_one_line_errors(bad):
    with pytest.raises(ConfigError) as info:
        make_swav(**bad)
    assert "\n" not in str(info.value) and next(iter(bad)) in str(info.value)


def test_two_views_alone_are_a_one_line_error():
    with pytest.raises(ConfigError, match="more views"):
        make_swav().training_step(views_of(torch.rand(4, 3, 12, 12), n_local=0))


@pytest.mark.parametrize("views", ["views=byol", "views={set: swav, n_local: 0}"])
def test_views_without_local_crops_are_a_one_line_error(views):
    """train's `_views_maker`, in process (the CLI's exit 2 is the slow test below)."""
    from sslkit.app.train import _views_maker
    from sslkit.config import compose

    cfg = compose(["method=swav", views])
    with pytest.raises(ConfigError) as info:
        _views_maker(cfg, dataset(), make_swav(), torch.device("cpu"))
    assert "\n" not in str(info.value) and "needs local crops" in str(info.value)


@pytest.mark.slow
@needs_fashion
@pytest.mark.parametrize("views", ["views=byol", "views={set: swav, n_local: 0}"])
def test_views_without_local_crops_are_one_line_and_exit_2_through_the_cli(cli, tmp_path, views):
    res = cli("train", "method=swav", views, "data.subset=64", "trainer.max_steps=1", f"out={tmp_path / 'run'}")
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs local crops" in lines[0], res.stderr


def test_build_method_splits_the_queue_over_the_processes(monkeypatch):
    """`world_size` is what `build_method` passes (the official queue_length // world_size rows per
    rank), never a `method.*` key."""
    import sslkit.build
    from sslkit.config import compose

    overrides = ["method=swav", "method.queue_length=40", "method.hidden_dim=32", "method.n_prototypes=10",
                 "backbone.width=4"]
    assert sslkit.build.build_method(compose(overrides), world_size=4).queue.shape == (2, 10, 128)
    with pytest.raises(ConfigError, match="world_size"):
        sslkit.build.build_method(compose([*overrides, "+method.world_size=2"]))


def test_a_methods_yaml_sets_its_views_and_the_command_line_wins():
    """configs/config.yaml's `views: null` comes before the method's YAML (it used to override it)."""
    from sslkit.config import compose

    assert compose(["method=swav"]).views == "swav" and compose(["method=dino"]).views == "dino"
    assert compose(["method=mocov2"]).views is None and compose(["method=swav", "views=byol"]).views == "byol"
