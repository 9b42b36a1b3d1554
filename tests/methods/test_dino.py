"""DINO (methods/dino.py) against lightly's DINOLoss and the official training details, on a tiny
encoder and head (out 64, hidden 32, bottleneck 16), 12 px global and 8 px local crops: the loss
(value, gradient, center, teacher temperature), the EMA over every teacher parameter at each step,
the last layer frozen in epoch 1 only, clipping, learning, bit-exact resume through `fit`, the teacher
as the checkpoint's encoder, and a timm ViT-tiny with multi-crop."""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from lightly.loss import DINOLoss
from omegaconf import OmegaConf

from sslkit.build import method_defaults
from sslkit.contrastive.momentum import ema_momentum
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
from sslkit.methods.dino import DINO
from sslkit.nn.backbones import build_backbone
from tests.conftest import ROOT, TinyEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

TINY = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}
IMAGES, BATCH, EPOCHS = 16, 8, 2
SPE = IMAGES // BATCH  # 2 steps per epoch
STEPS = EPOCHS * SPE
WORLD = World(0, 0, 1, torch.device("cpu"))


@functools.cache
def defaults() -> dict[str, Any]:
    return method_defaults("dino", **TINY)  # composing the config once (~1 s on a loaded machine)


def make_dino(encoder: torch.nn.Module | None = None, dim: int = 8, **changes: Any) -> DINO:
    torch.manual_seed(0)
    return DINO(encoder or TinyEncoder(dim), dim, None, **(defaults() | changes))


def views_of(x: torch.Tensor, n_local: int = 2) -> list[torch.Tensor]:
    """2 global crops (the image, noisy and flipped) and `n_local` 8 px crops: draws from the global RNG."""
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


def optim_cfg(**changes: Any) -> dict[str, Any]:
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs/optim/adamw.yaml"))
    assert isinstance(cfg, dict)
    return {**cfg, "lr": 0.01, "lr_scaling": "none", "warmup_epochs": 0} | changes


def parts(**changes: Any) -> tuple[DINO, Any, Any]:
    method = make_dino(**changes)
    opt = build_optimizer(method, optim_cfg(), BATCH, method.param_rules())
    return method, opt, build_scheduler(opt, optim_cfg(), STEPS, SPE)


def run(run_dir: Path, method: DINO, opt: Any, sched: Any, state: Any = None, extra: dict[str, Any] | None = None):
    settings = LoopSettings(epochs=EPOCHS, total_steps=STEPS, steps_per_epoch=SPE, log_every=1, checkpoint_every=0)
    return fit(FitInputs(method, train_loader(dataset(), BATCH, seed=3), fit_views, opt, sched, WORLD, settings,
                         run_dir, NullLogger(), checkpoint_extra=extra or {}), state)


def student_outputs(m: DINO, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """The student's outputs, crops of one size through the network together (the official wrapper)."""
    glob = m.head(m.backbone(torch.cat(views[:2]))).chunk(2)
    local = m.head(m.backbone(torch.cat(views[2:]))).chunk(len(views) - 2)
    return [*glob, *local]


def test_loss_center_and_gradient_equal_lightlys_dino_loss():
    m = make_dino(warmup_teacher_temp_epochs=10)
    with torch.no_grad():
        m.center.copy_(0.3 * torch.randn(1, 64))  # a non-zero center, so that centering is tested
    x = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    views = views_of(x)
    m.epoch = 3.5
    out = m.training_step(views)
    out.loss.backward()
    ours = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    with torch.no_grad():
        teacher = list(m.teacher_head(m.teacher_backbone(torch.cat(views[:2]))).chunk(2))  # one BN batch
    ref = DINOLoss(64, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=10,
                   student_temp=0.1, center_momentum=0.9)
    ref.center.copy_(m.center.reshape(1, 1, -1))
    expected = ref(teacher, student_outputs(m, views), epoch=3)  # lightly: the epoch's index; updates its center
    expected.backward()
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    assert out.logs["teacher_temp"] == pytest.approx(0.04 + 0.03 * 3 / 9)
    assert len(ours) == len([p for p in m.parameters() if p.requires_grad]) > 0  # the teacher gets none
    for name, grad in ours.items():
        torch.testing.assert_close(grad, m.get_parameter(name).grad, rtol=1e-4, atol=1e-6, msg=name)
    mean = torch.cat(teacher).mean(0, keepdim=True)
    center = m.center.clone()
    m.after_step(0.25)
    torch.testing.assert_close(m.center, 0.9 * center + 0.1 * mean)  # eq. 4
    torch.testing.assert_close(m.center, ref.center.reshape(1, -1))  # lightly's update of the same outputs


def test_teacher_temperature_warms_up_linearly_by_epoch():
    m = make_dino(warmup_teacher_temp_epochs=5, warmup_teacher_temp=0.04, teacher_temp=0.07)
    official = np.concatenate([np.linspace(0.04, 0.07, 5), np.ones(3) * 0.07])  # main_dino.py's DINOLoss
    for epoch in np.arange(0, 8, 0.5):
        m.epoch = float(epoch)
        assert m.current_teacher_temp() == pytest.approx(official[int(epoch)]), epoch
    m.epoch = 2.5
    out = m(views_of(torch.rand(4, 3, 12, 12)), epoch=1.75)  # the engine's epoch wins
    assert out.logs["teacher_temp"] == pytest.approx(0.04 + 0.03 / 4)
    assert make_dino(warmup_teacher_temp_epochs=0).current_teacher_temp() == 0.07


def test_momentum_pairs_cover_every_teacher_parameter():
    m = make_dino()
    targets = {id(p) for _, t in m.momentum_pairs() for p in t.parameters()}
    onlines = {id(p) for o, _ in m.momentum_pairs() for p in o.parameters()}
    teacher = {id(p) for n, p in m.named_parameters() if n.startswith("teacher_")}
    assert targets == teacher and len(teacher) == len(onlines) == len(list(m.parameters())) // 2
    assert all(not p.requires_grad for n, p in m.named_parameters() if n.startswith("teacher_"))


def test_the_teacher_follows_the_cosine_ema_at_every_step_and_the_last_layer_is_frozen_in_epoch_1_only(
        tmp_path, monkeypatch):
    """Through `fit`, 2 epochs of 2 steps, momentum 0.9 -> 1 and freeze_last_layer=1 (the official
    `momentum_schedule[it]` and `cancel_gradients_last_layer`)."""
    method, opt, sched = parts(momentum=0.9, norm_last_layer=False)
    seen: list[dict[str, Any]] = []
    original = DINO.after_step

    def check(self: DINO, progress: float) -> None:
        teacher = {n: p.clone() for n, p in self.named_parameters() if n.startswith("teacher_")}
        student = {n: p.clone() for n, p in self.named_parameters() if not n.startswith("teacher_")}
        original(self, progress)
        step = round(progress * STEPS) - 1
        mom = ema_momentum(step, STEPS, 0.9, 1.0)
        for name, value in self.named_parameters():
            if name.startswith("teacher_"):
                online = student[name.replace("teacher_", "", 1)]
                torch.testing.assert_close(value, mom * teacher[name] + (1 - mom) * online, msg=name)
        seen.append({"step": step, "momentum": mom, "student": student})

    monkeypatch.setattr(DINO, "after_step", check)
    last = {n: p.detach().clone() for n, p in method.head.last_layer.named_parameters()}
    first = method.head.mlp[0].weight.detach().clone()
    lasts, firsts = [last], [first]

    def record(*_: Any) -> None:
        lasts.append({n: p.detach().clone() for n, p in method.head.last_layer.named_parameters()})
        firsts.append(method.head.mlp[0].weight.detach().clone())

    opt.register_step_post_hook(record)
    run(tmp_path, method, opt, sched)
    assert [s["step"] for s in seen] == list(range(STEPS))
    assert seen[0]["momentum"] == 0.9 and 0.9 < seen[2]["momentum"] < 1.0  # cosine from the base value
    assert len(lasts) == STEPS + 1
    for step in range(STEPS):
        changed = {n: not torch.equal(lasts[step][n], lasts[step + 1][n]) for n in last}
        assert changed == {n: step >= SPE for n in last}, (step, changed)  # frozen in epoch 1, then trained
        assert not torch.equal(firsts[step], firsts[step + 1])  # the rest of the head trains throughout


def test_each_gradient_norm_is_clipped_at_clip_grad(monkeypatch):
    def norms(clip: float) -> torch.Tensor:
        method = make_dino(clip_grad=clip, freeze_last_layer=0)
        opt = build_optimizer(method, optim_cfg(), BATCH, method.param_rules())
        found: list[torch.Tensor] = []
        opt.register_step_pre_hook(lambda o, *_: found.extend(
            p.grad.norm() for g in o.param_groups for p in g["params"] if p.grad is not None))
        out = method(views_of(torch.rand(4, 3, 12, 12)))
        (out.loss * 1e6).backward()  # a huge loss scale
        method.after_backward(0.0)
        opt.step()
        return torch.stack(found)

    assert (norms(0.0) > 3.0).any()  # without clipping the scale shows
    clipped = norms(3.0)
    assert len(clipped) > 5 and (clipped <= 3.0 + 1e-4).all()
    assert (clipped > 2.99).sum() >= len(clipped) - 1  # all at the bound but the conv bias before BN (~0)


def test_dino_learns_on_tiny_data_in_a_few_steps():
    """16 images of distinct colours with noisy multi-crop views: the student learns to match its
    teacher, i.e. the distillation gap KL(P_t || P_s) = loss - H(P_t) falls within 12 AdamW steps,
    while the teacher still tells images apart (several prototypes win). (Over longer tiny runs the
    centered teacher drifts toward uniform outputs; no claim is made about that.)"""
    m = make_dino(dim=16, momentum=0.99, freeze_last_layer=0, warmup_teacher_temp_epochs=0, teacher_temp=0.04)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.003, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 1, 1, generator=g) + 0.2 * torch.rand(16, 3, 12, 12, generator=g)
    gaps = []
    for step in range(12):
        out = m(views_of(x), progress=step / 12, epoch=0.0)
        out.loss.backward()
        m.after_backward(step / 12)
        opt.step()
        opt.zero_grad(set_to_none=True)
        m.after_step((step + 1) / 12)
        gaps.append(float(out.loss.detach()) - float(out.logs["teacher_entropy"]))
    with torch.no_grad():
        winners = (m.teacher_head(m.teacher_backbone(x)) - m.center).argmax(1)
    assert gaps[0] > 0.3 and min(gaps[-4:]) < 0.3 * gaps[0], gaps
    assert len(set(winners.tolist())) >= 2


def test_an_interrupted_run_resumes_bit_exact_including_teacher_and_center(tmp_path, monkeypatch):
    torch.manual_seed(123)
    method, opt, sched = parts()
    run(tmp_path / "straight", method, opt, sched)
    straight = {k: v.clone() for k, v in method.state_dict().items()}
    assert not torch.equal(straight["center"], torch.zeros(1, 64))

    torch.manual_seed(123)
    method, opt, sched = parts()
    original = DINO.after_step

    def stop_at_step_3(self: DINO, progress: float) -> None:
        original(self, progress)
        if progress == pytest.approx(3 / STEPS):
            os.kill(os.getpid(), signal.SIGINT)  # epoch 2, after its first batch

    monkeypatch.setattr(DINO, "after_step", stop_at_step_3)
    with pytest.raises(Interrupted):
        run(tmp_path / "resumed", method, opt, sched)
    monkeypatch.setattr(DINO, "after_step", original)
    saved = ckpt.load(tmp_path / "resumed")
    assert saved["state"] == {"epoch": 1, "step": 3, "batch_in_epoch": 1}
    torch.manual_seed(999)
    method, opt, sched = parts()
    run(tmp_path / "resumed", method, opt, sched, restore(saved, method, opt, sched, None))
    resumed = method.state_dict()
    assert resumed.keys() == straight.keys() and any(k.startswith("teacher_head.") for k in resumed)
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)


def test_the_checkpoints_encoder_is_the_teachers_backbone_and_evaluation_loads_it(tmp_path):
    from sslkit.evaluation.context import load_trained

    backbone_cfg = {"name": "resnet18", "width": 4, "small_images": True}
    method = make_dino(*build_backbone(backbone_cfg))
    opt = build_optimizer(method, optim_cfg(), BATCH, method.param_rules())
    run(tmp_path, method, opt, build_scheduler(opt, optim_cfg(), STEPS, SPE),
        extra={"config": yaml.safe_dump({"backbone": backbone_cfg})})
    teacher, student = method.teacher_backbone.state_dict(), method.backbone.state_dict()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # the two differ after training
    loaded = load_trained(tmp_path).backbone.state_dict()
    assert loaded.keys() == teacher.keys()
    for key, value in teacher.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_dino_trains_a_timm_vit_tiny_on_multi_crop_views_of_two_sizes():
    """ViT-tiny/16 at 32 px: 2 global crops of 32 px (2x2 patches) and 2 local ones of 14 px (the
    default 96/224 of 32, zero-padded to one patch)."""
    backbone, dim = build_backbone({"name": "timm", "timm_name": "vit_tiny_patch16_224", "image_size": 32})
    m = make_dino(backbone, dim, freeze_last_layer=0)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    x = torch.rand(2, 3, 32, 32)
    views = [x, x.flip(-1), x[..., :14, :14], x[..., 18:, 18:]]
    before = m.backbone.patch_embed.proj.weight.detach().clone()
    out = m(views)
    out.loss.backward()
    m.after_backward(0.0)
    opt.step()
    m.after_step(0.5)
    assert torch.isfinite(out.loss) and not torch.equal(before, m.backbone.patch_embed.proj.weight)
    assert m.encoder() is m.teacher_backbone


def test_a_vit_whose_patch_size_does_not_divide_the_image_size_is_a_one_line_error():
    with pytest.raises(ConfigError) as info:
        build_backbone({"name": "timm", "timm_name": "vit_tiny_patch16_224", "image_size": 28})
    message = str(info.value)
    assert "\n" not in message and "28" in message and "16" in message, message


@pytest.mark.parametrize("bad", [{"momentum": 1.5}, {"teacher_temp": 0.0}, {"clip_grad": -1.0},
                                 {"out_dim": 0}])
def test_bad_parameters_are_one_line_errors(bad):
    with pytest.raises(ConfigError) as info:
        make_dino(**bad)
    assert "\n" not in str(info.value) and next(iter(bad)) in str(info.value)
