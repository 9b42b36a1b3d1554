"""BYOL against independent references: lightly's heads and NegativeCosineSimilarity for the loss and
its gradient, the stop-gradient on the target, the EMA over every target parameter on its cosine,
learning on tiny data, a bit-exact resume through `engine.fit` (target included), the checkpoint's
encoder read by evaluation and export, and the CLI (slow)."""

from __future__ import annotations

import copy
import functools
import json
import math

import pytest
import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from torch import nn

from sslkit.app.export import export_command
from sslkit.build import method_defaults
from sslkit.config import compose
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.optim import build_optimizer
from sslkit.errors import ConfigError
from sslkit.evaluation.context import load_trained
from sslkit.methods.byol import BYOL
from tests.conftest import FASHION, TinyEncoder, run_cli
from tests.data.test_imagefolder import make_labeled
from tests.methods import siamese_fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

DIM, HIDDEN, OUT = 16, 32, 8
HEAD = {"kind": "layers", "layers": [{"out_dim": HIDDEN, "bn": "affine", "activation": "relu", "bias": True},
                                     {"out_dim": OUT, "bias": True}]}
TINY_HEAD = ("head.layers=[{out_dim: 32, bn: affine, activation: relu, bias: true}, {out_dim: 16, bias: true}]",
             "method.predictor_hidden_dim=32")


@functools.cache
def _defaults() -> dict:
    return method_defaults("byol", predictor_hidden_dim=HIDDEN)


def _byol(**kw) -> BYOL:
    torch.manual_seed(0)
    return BYOL(TinyEncoder(DIM), DIM, HEAD, **{**_defaults(), **kw})


def _batch(seed: int, n: int = 12) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def _perturb_target(m: BYOL) -> None:
    """Make the target differ from the online network, as it does after the first step."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in [*m.target_backbone.parameters(), *m.target_projector.parameters()]:
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def _into_lightly(ours: nn.Sequential, theirs: nn.Module) -> nn.Module:
    """Our MLP's weights in lightly's head (`layers.i` <- `i`); lightly's first fc has no bias, which the
    BN after it cancels in training mode."""
    state = {f"layers.{k}": v for k, v in ours.state_dict().items() if k != "0.bias"}
    theirs.load_state_dict(state)
    return theirs


def test_the_defaults_are_the_papers():
    cfg = compose(["method=byol"])
    assert cfg.views == "byol"
    assert dict(cfg.method) == {"name": "byol", "momentum": 0.996, "momentum_schedule": "cosine",
                                "predictor_hidden_dim": 4096}
    assert [dict(layer) for layer in cfg.head.layers] == [
        {"out_dim": 4096, "bn": "affine", "activation": "relu", "bias": True},
        {"out_dim": 256, "bn": "none", "activation": "none", "bias": True}]
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.lr_scaling, cfg.optim.weight_decay) == ("lars", 0.2, "linear",
                                                                                            1.5e-6)
    assert BYOL.family and BYOL.paper.startswith("Grill et al. 2020")
    # LARS at B = 4096: lr 3.2; biases and BN neither decayed nor adapted (Sec. 3.3)
    m = _byol()
    opt = build_optimizer(m, cfg.optim, 4096, m.param_rules())
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([3.2] * len(opt.param_groups))
    names = {id(p): n for n, p in m.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            excluded = p.ndim == 1  # biases and BN weights
            assert (g["weight_decay"] == 0.0, g["lars_exclude"]) == (excluded, excluded), names[id(p)]
            assert not names[id(p)].startswith("target_")


@pytest.mark.parametrize(("key", "value"), [("momentum", 1.5), ("momentum", -0.1), ("momentum_schedule", "linear"),
                                            ("predictor_hidden_dim", 0)])
def test_bad_parameters_are_one_line_config_errors(key, value):
    with pytest.raises(ConfigError) as info:
        _byol(**{key: value})
    assert key in str(info.value) and "\n" not in str(info.value)


def test_loss_and_gradients_equal_lightlys_heads_and_negative_cosine():
    m = _byol()
    _perturb_target(m)
    x1, x2 = _batch(1), _batch(2)
    backbone = copy.deepcopy(m.backbone)
    projector = _into_lightly(m.projector, BYOLProjectionHead(DIM, HIDDEN, OUT))
    predictor = _into_lightly(m.predictor, BYOLPredictionHead(OUT, HIDDEN, OUT))
    target_backbone = copy.deepcopy(m.target_backbone)
    target_projector = _into_lightly(m.target_projector, BYOLProjectionHead(DIM, HIDDEN, OUT))

    loss = m([x1, x2], progress=0.3).loss
    loss.backward()

    # the paper's L + L~ with ||a/|a| - b/|b| ||^2 = 2 - 2 cos(a, b), over lightly's -cos
    criterion = NegativeCosineSimilarity()
    p1, p2 = predictor(projector(backbone(x1))), predictor(projector(backbone(x2)))
    with torch.no_grad():
        z1, z2 = target_projector(target_backbone(x1)), target_projector(target_backbone(x2))
    reference = (2 + 2 * criterion(p1, z2)) + (2 + 2 * criterion(p2, z1))
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    assert 0.5 < float(loss.detach()) < 8

    pairs = [(m.backbone, backbone, ""), (m.projector, projector, "layers."), (m.predictor, predictor, "layers.")]
    for ours, theirs, prefix in pairs:
        reference_grads = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            if prefix and name == "0.bias":  # cancelled by the BN after it: no gradient
                torch.testing.assert_close(p.grad, torch.zeros_like(p), rtol=0, atol=1e-6)
                continue
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, reference_grads[prefix + name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_no_gradient_reaches_the_target_network():
    m = _byol()
    target = [*m.target_backbone.parameters(), *m.target_projector.parameters()]
    assert target and not any(p.requires_grad for p in target)
    for p in target:  # even a target that could take gradients must get none: it runs under no_grad
        p.requires_grad_(True)
    m([_batch(1), _batch(2)]).loss.backward()
    assert all(p.grad is None for p in target)
    assert all(p.grad is not None for p in m.predictor.parameters())


def test_the_ema_covers_every_target_parameter_and_follows_the_cosine_at_each_step():
    m = _byol(momentum=0.9)
    pairs = m.momentum_pairs()
    frozen = {id(p) for p in m.parameters() if not p.requires_grad}
    declared = {id(p) for _, target in pairs for p in target.parameters()}
    assert declared == frozen == {id(p) for p in [*m.target_backbone.parameters(), *m.target_projector.parameters()]}
    assert {id(online) for online, _ in pairs} == {id(m.backbone), id(m.projector)}

    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    moved = {n: p.clone() for n, p in m.named_parameters() if not p.requires_grad}
    for progress in (0.0, 0.25, 0.5, 0.9, 1.0):
        out = m([_batch(1), _batch(2)], progress=progress)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        tau = 1 - (1 - 0.9) * (math.cos(math.pi * progress) + 1) / 2  # Sec. 3.2, by hand
        assert m.momentum() == pytest.approx(tau, abs=1e-12) and float(out.logs["tau"]) == pytest.approx(tau)
        expected = [(t, tau * t.detach().clone() + (1 - tau) * o.detach()) for o_mod, t_mod in pairs
                    for o, t in zip(o_mod.parameters(), t_mod.parameters(), strict=True)]
        m.after_step(progress + 0.01)  # the engine's progress after the step: BYOL uses the step's own k/K
        for t, want in expected:
            torch.testing.assert_close(t, want, rtol=1e-6, atol=1e-7)
    assert m.momentum() == 1.0  # at the end of training the target stops moving
    still = [n for n, p in m.named_parameters() if not p.requires_grad and torch.equal(p, moved[n])]
    assert not still, f"target parameters the EMA never moved: {still}"


def test_it_learns_on_tiny_data():
    torch.manual_seed(0)
    m = _byol(momentum=0.99)
    images = torch.randn(4, 3, 6, 6).repeat(8, 1, 1, 1)  # 4 prototypes, 32 images
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    losses = []
    for step in range(40):
        views = [images + 0.3 * torch.randn_like(images), images.flip(-1) + 0.3 * torch.randn_like(images)]
        loss = m(views, progress=step / 40).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step((step + 1) / 40)
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def test_resume_is_bit_exact_with_the_target_and_the_checkpoint_encoder_is_the_online_backbone(tmp_path,
                                                                                                 monkeypatch):
    cfg = siamese_fit.tiny_config("byol", *TINY_HEAD, "views=null")
    taus: list[float] = []
    straight, resumed, run_dir = siamese_fit.straight_and_resumed(
        tmp_path, cfg, BYOL, monkeypatch, on_step=lambda method, progress: taus.append(method.momentum()))
    # the step of index k (0-based) used τ(k/K), as the official update
    assert taus == pytest.approx([1 - 0.004 * (math.cos(math.pi * k / siamese_fit.STEPS) + 1) / 2
                                  for k in range(siamese_fit.STEPS)], abs=1e-12)
    assert any(k.startswith("target_backbone.") for k in straight) and any(k.startswith("target_projector.")
                                                                          for k in straight)
    siamese_fit.assert_bit_exact(straight, resumed)

    saved = ckpt.load(run_dir)
    online = {k[len("backbone."):]: v for k, v in resumed.items() if k.startswith("backbone.")}
    target = {k[len("target_backbone."):]: v for k, v in resumed.items() if k.startswith("target_backbone.")}
    assert saved["encoder"].keys() == online.keys()
    assert all(torch.equal(saved["encoder"][k], online[k]) for k in online)
    assert not all(torch.equal(online[k], target[k]) for k in online)  # the online one, not the target

    trained = load_trained(run_dir)
    assert all(torch.equal(v, online[k]) for k, v in trained.backbone.state_dict().items())
    assert export_command([f"checkpoint={run_dir}", f"out={tmp_path / 'byol_backbone.pt'}"]) == 0
    exported = torch.load(tmp_path / "byol_backbone.pt", weights_only=True)
    exported = {k: v for k, v in exported.items() if not k.startswith("fc.")}  # the export's identity fc
    assert exported.keys() == online.keys() and all(torch.equal(exported[k], online[k]) for k in online)


@pytest.mark.slow  # two CLI trainings and a kNN evaluation in subprocesses: about a minute idle, minutes loaded
@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed (make data)")
def test_cli_trains_on_fashion_mnist_and_an_imagefolder_and_knn_scores_the_encoder(tmp_path):
    small = ("data.batch_size=32", "trainer.max_steps=2", "trainer.precision=32", "trainer.channels_last=false",
             "trainer.log_every_steps=1", "method.predictor_hidden_dim=64")
    out = tmp_path / "run"
    res = run_cli("train", "method=byol", "data.subset=64", *small, f"out={out}", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(0 <= r["loss"] <= 8 for r in records)
    res = run_cli("eval", "knn", f"checkpoint={out}", "eval.train_subset=200", "eval.test_subset=100", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    make_labeled(tmp_path / "imgs")
    res = run_cli("train", "method=byol", "data=imagefolder", f"data.root={tmp_path / 'imgs'}", "data.image_size=16",
                  "data.batch_size=2", "trainer.max_steps=2", "trainer.precision=32", "trainer.channels_last=false",
                  "method.predictor_hidden_dim=64", f"out={tmp_path / 'folder'}", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "folder" / "checkpoints" / "last.pt").is_file()
