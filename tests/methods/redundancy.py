"""Shared checks for the redundancy-reduction methods (Barlow Twins, VICReg): param groups through
build_optimizer, the lr schedule step by step, learning on tiny data, a bit-exact resume through
`engine.fit`, and the checkpoint's encoder read by evaluation and export. Each test file calls them
with its method's name; the method-specific checks (reference losses, heads) stay in the test files."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from sslkit.build import build_method
from sslkit.config import as_dict, compose
from sslkit.data.base import TensorImageDataset
from sslkit.devices import World
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.lars import LARS
from sslkit.engine.logger import NullLogger
from sslkit.engine.loop import FitInputs, LoopSettings, fit
from sslkit.engine.optim import build_optimizer
from sslkit.engine.schedule import build_scheduler
from sslkit.engine.signals import Interrupted
from sslkit.engine.state import restore
from sslkit.methods.base import SSLMethod

#: a width-8 small-stem ResNet-18 and a 32-32-16 projector: the method's real config, shrunk
SMALL = ("backbone.small_images=true", "backbone.width=8", "head.hidden_dim=32", "head.out_dim=16",
         "data.batch_size=8")
IMAGES, BATCH, EPOCHS, SEED, SIZE = 32, 8, 2, 5, 8
STEPS = EPOCHS * IMAGES // BATCH  # 4 steps per epoch
WORLD = World(0, 0, 1, torch.device("cpu"))


def small_config(method: str, *changes: str) -> Any:
    return compose([f"method={method}", *SMALL, *changes])


def small_method(method: str, *changes: str, seed: int = 0) -> tuple[SSLMethod, Any]:
    cfg = small_config(method, *changes)
    torch.manual_seed(seed)
    return build_method(cfg), cfg


def check_param_groups(method_name: str, bias_lr_scale: float, weight_decay: float) -> None:
    """Every trainable parameter in one group; 1-d ones (biases, BN) at `bias_lr_scale` x the rate, without
    decay or LARS adaptation; the weights at the rate with decay; and LARS really steps them so."""
    method, cfg = small_method(method_name)
    batch = 512
    opt = build_optimizer(method, cfg.optim, batch, method.param_rules())
    assert isinstance(opt, LARS)
    base = 0.2 * batch / 256
    names = {id(p): n for n, p in method.named_parameters()}
    seen: list[str] = []
    for g in opt.param_groups:
        for p in g["params"]:
            seen.append(names[id(p)])
            if p.ndim <= 1:
                assert g["lr"] == pytest.approx(base * bias_lr_scale) and g["weight_decay"] == 0.0, names[id(p)]
                assert g["lars_exclude"], names[id(p)]
            else:
                assert g["lr"] == pytest.approx(base) and g["weight_decay"] == pytest.approx(weight_decay)
                assert not g["lars_exclude"], names[id(p)]
    trainable = [n for n, p in method.named_parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable)  # each once
    assert any("projector" in n and "bias" in n for n in trainable) or method_name == "barlow_twins"
    assert opt.param_groups[0]["lr"] == pytest.approx(base)  # what the loop logs as `lr`

    # one LARS step from zero momentum: a 1-d parameter moves by -lr x grad; a weight by the trust ratio
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    grads = {}
    for n, p in method.named_parameters():
        p.grad = torch.randn_like(p)
        grads[n] = p.grad.clone()
    opt.step()
    for n, p in method.named_parameters():
        w, g = before[n], grads[n]
        if p.ndim <= 1:
            expected = w - base * bias_lr_scale * g
        else:
            d = g + weight_decay * w
            expected = w - base * (0.001 * w.norm() / (d.norm() + 1e-8)) * d
        torch.testing.assert_close(p.detach(), expected, msg=n)


def check_lr_schedule(method_name: str, bias_lr_scale: float) -> None:
    """The rate at every step: 10 warm-up epochs (linear, reaching the peak at the warm-up's last step),
    then a cosine down to 0.001 x the peak (the official `adjust_learning_rate`), biases at their scale."""
    method, cfg = small_method(method_name)
    batch, per_epoch, epochs = 256, 3, 60
    total = per_epoch * epochs
    opt = build_optimizer(method, cfg.optim, batch, method.param_rules())
    sched = build_scheduler(opt, cfg.optim, total, per_epoch)
    warmup = 10 * per_epoch  # 30 steps, within the 20% cap (max_warmup_fraction) of 180
    peak = 0.2 * batch / 256
    for step in range(total):
        if step < warmup:
            expected = peak * (step + 1) / warmup
        else:
            q = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
            expected = peak * q + 0.001 * peak * (1 - q)
        for g in opt.param_groups:
            scale = bias_lr_scale if g["params"][0].ndim <= 1 else 1.0
            assert g["lr"] == pytest.approx(expected * scale, rel=1e-9), (step, g["lr"])
        opt.step()
        sched.step()


def tiny_images(n: int = IMAGES, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)


def noisy_views(images: torch.Tensor) -> list[torch.Tensor]:
    x = images.float() / 255
    return [x + 0.1 * torch.randn_like(x), x.flip(-1) + 0.1 * torch.randn_like(x)]  # the global RNG


def check_learns(method_name: str, *changes: str) -> tuple[float, float]:
    """30 steps of the method's own optimizer (LARS, no warm-up) with a tiny encoder on 32 fixed images:
    returns the mean loss of the first and of the last 5 steps."""
    from sslkit.registry import resolve_method
    from tests.conftest import TinyEncoder

    cfg = small_config(method_name, "optim.warmup_epochs=0", "optim.lr=2.0", *changes)
    params = as_dict(cfg.method)
    cls = resolve_method(str(params.pop("name")))
    torch.manual_seed(0)
    method = cls(TinyEncoder(16), 16, as_dict(cfg.head), **params)
    opt = build_optimizer(method, cfg.optim, 32, method.param_rules())
    images = tiny_images()
    torch.manual_seed(1)
    losses = []
    for _ in range(30):
        out = method(noisy_views(images))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    return sum(losses[:5]) / 5, sum(losses[-5:]) / 5


def _parts(method_name: str) -> tuple[SSLMethod, Any, Any, Any]:
    method, cfg = small_method(method_name, "optim.warmup_epochs=1")
    opt = build_optimizer(method, cfg.optim, BATCH, method.param_rules())
    sched = build_scheduler(opt, cfg.optim, STEPS, STEPS // EPOCHS)
    return method, cfg, opt, sched


def _fit(run_dir: Path, method: SSLMethod, cfg: Any, opt: Any, sched: Any, state: Any = None) -> Any:
    from sslkit.data.loader import train_loader

    data = TensorImageDataset(tiny_images(), torch.arange(IMAGES) % 4, 4)
    loader = train_loader(data, BATCH, seed=SEED)
    settings = LoopSettings(epochs=EPOCHS, total_steps=STEPS, steps_per_epoch=STEPS // EPOCHS, log_every=1,
                            checkpoint_every=0)
    extra = {"config": OmegaConf.to_yaml(cfg, resolve=True)}
    return fit(FitInputs(method, loader, noisy_views, opt, sched, WORLD, settings, run_dir, NullLogger(),
                         checkpoint_extra=extra), state)


def check_resume_is_bit_exact(method_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run stopped by SIGINT after step 6 (of 8) and resumed from its checkpoint ends with the same
    weights, BN statistics and optimizer state as a run straight through. Returns the straight run."""
    torch.manual_seed(123)
    method, cfg, opt, sched = _parts(method_name)
    initial = {k: v.clone() for k, v in method.state_dict().items()}
    assert _fit(tmp_path / "straight", method, cfg, opt, sched).step == STEPS
    straight = {k: v.clone() for k, v in method.state_dict().items()}
    straight_opt = opt.state_dict()

    torch.manual_seed(123)
    method, cfg, opt, sched = _parts(method_name)
    cls = type(method)
    original = cls.after_step

    def stop_at_step_6(self: SSLMethod, progress: float) -> None:
        original(self, progress)
        if progress == pytest.approx(6 / STEPS):
            os.kill(os.getpid(), signal.SIGINT)  # epoch 1, after 2 of its 4 batches

    monkeypatch.setattr(cls, "after_step", stop_at_step_6)
    with pytest.raises(Interrupted):
        _fit(tmp_path / "resumed", method, cfg, opt, sched)
    monkeypatch.setattr(cls, "after_step", original)
    saved = ckpt.load(tmp_path / "resumed")
    assert saved["state"]["step"] == 6

    torch.manual_seed(999)  # the checkpoint's RNG state, not this, must drive the rest
    method, cfg, opt, sched = _parts(method_name)
    state = _fit(tmp_path / "resumed", method, cfg, opt, sched, restore(saved, method, opt, sched, None))
    assert state.step == STEPS
    resumed = method.state_dict()
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)
    for pid, st in straight_opt["state"].items():
        torch.testing.assert_close(opt.state_dict()["state"][pid]["momentum_buffer"], st["momentum_buffer"],
                                   rtol=0, atol=0)
    assert not torch.equal(initial["projector.0.weight"], straight["projector.0.weight"])  # it trained
    return tmp_path / "straight"


def check_encoder_is_evaluated(run_dir: Path, tmp_path: Path) -> None:
    """The checkpoint's `encoder` holds the trained backbone (and nothing of the projector), and
    evaluation's `load_trained` and `sslkit export` read exactly those weights."""
    from sslkit.app.export import export_command
    from sslkit.evaluation.context import load_trained

    saved = ckpt.load(run_dir)
    backbone = {k[len("backbone."):]: v for k, v in saved["method"].items() if k.startswith("backbone.")}
    assert saved["encoder"].keys() == backbone.keys()
    for k, v in backbone.items():
        torch.testing.assert_close(saved["encoder"][k], v, rtol=0, atol=0)
    trained = load_trained(run_dir)
    cfg = ckpt.config_of(saved)
    assert as_dict(cfg.backbone)["width"] == 8
    for k, v in trained.backbone.state_dict().items():
        torch.testing.assert_close(v, backbone[k], rtol=0, atol=0, msg=k)
    out = tmp_path / "exported.pt"
    assert export_command([f"checkpoint={run_dir}", f"out={out}"]) == 0
    exported = torch.load(out, map_location="cpu", weights_only=True)
    exported = {k: v for k, v in exported.items() if not k.startswith("fc.")}  # the export's identity fc
    assert exported.keys() == backbone.keys()
    for k, v in exported.items():
        torch.testing.assert_close(v, backbone[k], rtol=0, atol=0, msg=k)
    trained.backbone.eval()
    feats = trained.backbone(torch.rand(2, 3, SIZE, SIZE))
    assert feats.shape == (2, 64) and torch.isfinite(feats).all()  # width 8 x 8 = 64 features


def check_cli(method_name: str, tmp_path: Path, cli: Any) -> None:
    """`sslkit train method=<m>` for 2 steps on Fashion-MNIST, `sslkit eval knn` on its checkpoint, and
    `sslkit train method=<m>` on an ImageFolder of a few PNGs (the paper's views, a small projector)."""
    from PIL import Image

    from tests.conftest import FASHION

    small = ("trainer.precision=32", "trainer.channels_last=false", "head.hidden_dim=64", "head.out_dim=32",
             "trainer.max_steps=2", "trainer.progress=lines", "data.num_workers=0")
    if FASHION.exists():
        run = tmp_path / "fmnist"
        res = cli("train", f"method={method_name}", "data.subset=64", "data.batch_size=16", *small, f"out={run}")
        assert res.returncode == 0, res.stderr[-3000:]
        saved = ckpt.load(run)
        assert saved["state"]["step"] == 2 and ckpt.config_of(saved).views == "byol"
        res = cli("eval", "knn", f"checkpoint={run}", "eval.train_subset=200", "eval.test_subset=100")
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.strip().splitlines()[-1].startswith("knn top1="), res.stdout
    for cls in ("a", "b"):
        (tmp_path / "imgs" / "train" / cls).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (40, 40), (30 * i, 20 if cls == "a" else 200, 0)).save(
                tmp_path / "imgs" / "train" / cls / f"{i}.png")
    run = tmp_path / "folder"
    res = cli("train", f"method={method_name}", "data=imagefolder", f"data.root={tmp_path / 'imgs'}",
              "data.image_size=32", "data.batch_size=8", *small, f"out={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert ckpt.load(run)["state"]["step"] == 2
    if not FASHION.exists():
        pytest.skip("Fashion-MNIST not installed (make data): only the ImageFolder run was checked")


def check_loss_in_fp32(method: SSLMethod, loss_fn: Any) -> None:
    """Under bf16 autocast the method's loss is `loss_fn` on its (bf16) embeddings cast to fp32, computed
    with autocast off: no bf16 matmul in the cross-correlation or covariance."""
    seen: list[torch.Tensor] = []
    embed = method.embed  # type: ignore[attr-defined]

    def recording(x: torch.Tensor) -> torch.Tensor:
        seen.append(embed(x))
        return seen[-1]

    method.embed = recording  # type: ignore[attr-defined]
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(list(torch.rand(2, 32, 3, 8, 8)))
    assert out.loss.dtype == torch.float32 and seen[0].dtype == torch.bfloat16
    expected = loss_fn(seen[0].detach().float(), seen[1].detach().float())
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-6, atol=1e-6)
