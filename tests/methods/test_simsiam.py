"""SimSiam against independent references: lightly's heads and NegativeCosineSimilarity for the loss and
its gradient, the stop-gradient on z, the predictor's fixed learning rate through the optimizer and
schedule builders, learning on tiny data, a bit-exact resume through `engine.fit`, the checkpoint's
encoder read by evaluation and export, and the CLI (slow)."""

from __future__ import annotations

import copy
import functools
import json
import math

import pytest
import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import SimSiamPredictionHead, SimSiamProjectionHead
from torch import nn

from sslkit.app.export import export_command
from sslkit.build import method_defaults
from sslkit.config import compose
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.optim import build_optimizer
from sslkit.engine.schedule import build_scheduler
from sslkit.errors import ConfigError
from sslkit.evaluation.context import load_trained
from sslkit.methods.simsiam import SimSiam
from tests.conftest import FASHION, TinyEncoder, run_cli
from tests.data.test_imagefolder import make_labeled
from tests.methods import siamese_fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

DIM, HIDDEN, OUT, BOTTLENECK = 16, 32, 8, 4
HEAD = {"kind": "layers", "layers": [{"out_dim": HIDDEN, "bn": "affine", "activation": "relu"},
                                     {"out_dim": HIDDEN, "bn": "affine", "activation": "relu"},
                                     {"out_dim": OUT, "bn": "plain"}]}
TINY_HEAD = ("head.layers=[{out_dim: 32, bn: affine, activation: relu}, {out_dim: 32, bn: affine, activation: relu},"
             " {out_dim: 16, bn: plain}]", "method.predictor_hidden_dim=8")


@functools.cache
def _defaults() -> dict:
    return method_defaults("simsiam", predictor_hidden_dim=BOTTLENECK)


def _simsiam(**kw) -> SimSiam:
    torch.manual_seed(0)
    return SimSiam(TinyEncoder(DIM), DIM, HEAD, **{**_defaults(), **kw})


def _batch(seed: int, n: int = 12) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def _into_lightly(ours: nn.Sequential, theirs: nn.Module) -> nn.Module:
    theirs.load_state_dict({f"layers.{k}": v for k, v in ours.state_dict().items()})  # strict: the same layers
    return theirs


def test_the_defaults_are_the_papers():
    cfg = compose(["method=simsiam"])
    assert dict(cfg.method) == {"name": "simsiam", "predictor_hidden_dim": 512, "fix_predictor_lr": True}
    assert [dict(layer) for layer in cfg.head.layers] == [
        {"out_dim": 2048, "bn": "affine", "activation": "relu"},
        {"out_dim": 2048, "bn": "affine", "activation": "relu"},
        {"out_dim": 2048, "bn": "plain", "activation": "none"}]
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.lr_scaling, cfg.optim.weight_decay, cfg.optim.momentum,
            cfg.optim.schedule, cfg.optim.warmup_epochs) == ("sgd", 0.05, "linear", 1e-4, 0.9, "cosine", 0.0)
    assert cfg.views is None and cfg.aug.recipe == "mocov2" and SimSiam.n_views == 2  # MoCo v2's aug, two views
    assert SimSiam.paper.startswith("Chen & He 2021")
    m = _simsiam()
    assert not any("target" in n or "momentum" in n for n, _ in m.named_parameters())  # no momentum encoder
    opt = build_optimizer(m, cfg.optim, 512, m.param_rules())
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1] * len(opt.param_groups))  # 0.05 x 512/256
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups)  # the official SGD decays every parameter


@pytest.mark.parametrize(("key", "value"), [("predictor_hidden_dim", 0), ("predictor_hidden_dim", 2.5),
                                            ("fix_predictor_lr", "yes")])
def test_bad_parameters_are_one_line_config_errors(key, value):
    with pytest.raises(ConfigError) as info:
        _simsiam(**{key: value})
    assert key in str(info.value) and "\n" not in str(info.value)


def _reference(m: SimSiam, x1: torch.Tensor, x2: torch.Tensor, stop_gradient: bool = True):
    """Lightly's heads with our weights and lightly's loss, eq. 2; returns the loss and the parameters."""
    backbone = copy.deepcopy(m.backbone)
    projector = _into_lightly(m.projector, SimSiamProjectionHead(DIM, HIDDEN, OUT))
    predictor = _into_lightly(m.predictor, SimSiamPredictionHead(OUT, BOTTLENECK, OUT))
    criterion = NegativeCosineSimilarity()
    z1, z2 = projector(backbone(x1)), projector(backbone(x2))
    p1, p2 = predictor(z1), predictor(z2)
    if stop_gradient:
        z1, z2 = z1.detach(), z2.detach()
    loss = 0.5 * criterion(p1, z2) + 0.5 * criterion(p2, z1)
    loss.backward()
    return loss, {"backbone": backbone, "projector": projector, "predictor": predictor}


def _grads(m: SimSiam) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def _reference_grads(parts: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{part}.{n.removeprefix('layers.')}": p.grad for part, module in parts.items()
            for n, p in module.named_parameters() if p.grad is not None}


def test_loss_and_gradients_equal_lightlys_heads_and_negative_cosine():
    m = _simsiam()
    x1, x2 = _batch(1), _batch(2)
    loss = m([x1, x2]).loss
    loss.backward()
    reference, parts = _reference(m, x1, x2)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    ours, theirs = _grads(m), _reference_grads(parts)
    assert ours.keys() == theirs.keys() == {n for n, p in m.named_parameters() if p.requires_grad}
    for name, grad in theirs.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(ours[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_stop_gradient_stops_z():
    m = _simsiam()
    x1, x2 = _batch(1), _batch(2)
    m([x1, x2]).loss.backward()
    ours = _grads(m)
    _, parts = _reference(m, x1, x2, stop_gradient=False)  # what a missing stop-gradient would give
    through_z = _reference_grads(parts)
    gap = max(float((ours[n] - through_z[n]).abs().max() / through_z[n].abs().max())
              for n in ours if n.startswith(("backbone.", "projector.")))
    assert gap > 1e-2  # the encoder's gradient differs from the one flowing through z too
    # the predictor's gradient is the same either way: z is its target, not its input's only path
    for n in ours:
        if n.startswith("predictor."):
            torch.testing.assert_close(ours[n], through_z[n], rtol=1e-4, atol=1e-6)
    # and directly: the gradient reaching z_i is the one through p_i = h(z_i) alone, none as p_j's target
    m.zero_grad()
    seen: dict[int, torch.Tensor] = {}

    calls: list[int] = []

    def capture(module: nn.Module, args: object, out: torch.Tensor) -> None:
        index = len(calls)  # the forward's order: z1, then z2
        calls.append(index)
        out.register_hook(lambda grad: seen.__setitem__(index, grad))

    handle = m.projector.register_forward_hook(capture)
    m([x1, x2]).loss.backward()
    handle.remove()
    with torch.no_grad():
        z1, z2 = m.projector(m.backbone(x1)), m.projector(m.backbone(x2))
    leaf1, leaf2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    (-0.5 * torch.cosine_similarity(m.predictor(leaf1), z2, dim=1).mean()
     - 0.5 * torch.cosine_similarity(m.predictor(leaf2), z1, dim=1).mean()).backward()
    assert sorted(seen) == [0, 1]
    torch.testing.assert_close(seen[0], leaf1.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(seen[1], leaf2.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("fixed", [True, False])
def test_the_predictor_rate_stays_fixed_while_the_rest_follows_the_cosine(fixed):
    cfg = compose(["method=simsiam"])
    m = _simsiam(fix_predictor_lr=fixed)
    opt = build_optimizer(m, cfg.optim, 64, m.param_rules())
    steps = 6
    sched = build_scheduler(opt, cfg.optim, steps, steps)
    names = {id(p): n for n, p in m.named_parameters()}
    base = 0.05 * 64 / 256
    x1, x2 = _batch(1), _batch(2)
    for step in range(steps):
        cosine = base * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            is_predictor = {names[id(p)].startswith("predictor.") for p in g["params"]}
            assert len(is_predictor) == 1 or not fixed  # with the rule, a group holds predictor parameters or none
            want = base if fixed and is_predictor == {True} else cosine
            assert g["lr"] == pytest.approx(want, rel=1e-12), (step, sorted(names[id(p)] for p in g["params"]))
        opt.zero_grad()
        m([x1, x2]).loss.backward()
        opt.step()
        sched.step()
    assert any(names[id(p)].startswith("predictor.") for g in opt.param_groups for p in g["params"])


def test_it_learns_on_tiny_data():
    torch.manual_seed(0)
    m = _simsiam()
    images = torch.randn(4, 3, 6, 6).repeat(8, 1, 1, 1)  # 4 prototypes, 32 images
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(40):
        views = [images + 0.3 * torch.randn_like(images), images.flip(-1) + 0.3 * torch.randn_like(images)]
        loss = m(views).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert -1.0 <= min(losses) and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses


def test_resume_is_bit_exact_and_the_checkpoint_encoder_is_the_backbone(tmp_path, monkeypatch):
    cfg = siamese_fit.tiny_config("simsiam", *TINY_HEAD)
    straight, resumed, run_dir = siamese_fit.straight_and_resumed(tmp_path, cfg, SimSiam, monkeypatch)
    siamese_fit.assert_bit_exact(straight, resumed)

    saved = ckpt.load(run_dir)
    backbone = {k[len("backbone."):]: v for k, v in resumed.items() if k.startswith("backbone.")}
    assert saved["encoder"].keys() == backbone.keys()
    assert all(torch.equal(saved["encoder"][k], backbone[k]) for k in backbone)
    trained = load_trained(run_dir)
    assert all(torch.equal(v, backbone[k]) for k, v in trained.backbone.state_dict().items())
    assert export_command([f"checkpoint={run_dir}", f"out={tmp_path / 'simsiam_backbone.pt'}"]) == 0
    exported = torch.load(tmp_path / "simsiam_backbone.pt", weights_only=True)
    exported = {k: v for k, v in exported.items() if not k.startswith("fc.")}  # the export's identity fc
    assert exported.keys() == backbone.keys() and all(torch.equal(exported[k], backbone[k]) for k in backbone)


@pytest.mark.slow  # two CLI trainings and a kNN evaluation in subprocesses: about a minute idle, minutes loaded
@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed (make data)")
def test_cli_trains_on_fashion_mnist_and_an_imagefolder_and_knn_scores_the_encoder(tmp_path):
    small = ("data.batch_size=32", "trainer.max_steps=2", "trainer.precision=32", "trainer.channels_last=false",
             "trainer.log_every_steps=1", "method.predictor_hidden_dim=64",
             "head.layers=[{out_dim: 256, bn: affine, activation: relu}, {out_dim: 256, bn: affine, activation: relu},"
             " {out_dim: 256, bn: plain}]")
    out = tmp_path / "run"
    res = run_cli("train", "method=simsiam", "data.subset=64", *small, f"out={out}", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(-1 <= r["loss"] <= 1 for r in records)
    res = run_cli("eval", "knn", f"checkpoint={out}", "eval.train_subset=200", "eval.test_subset=100", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    make_labeled(tmp_path / "imgs")
    res = run_cli("train", "method=simsiam", "data=imagefolder", f"data.root={tmp_path / 'imgs'}",
                  "data.image_size=16", "data.batch_size=2", "trainer.max_steps=2", "trainer.precision=32",
                  "trainer.channels_last=false", *small[-2:], f"out={tmp_path / 'folder'}", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "folder" / "checkpoints" / "last.pt").is_file()
