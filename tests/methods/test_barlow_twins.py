"""Barlow Twins (Zbontar et al. 2021, arXiv 2103.03230): the method's loss equals lightly's
`BarlowTwinsLoss` and the official code's formula by value and gradient; the projector, parameter
groups and schedule are the paper's; it learns; a resume is bit-exact; its encoder is what evaluation
and export read; and (slow) the CLI trains it on Fashion-MNIST and an ImageFolder and scores it."""

from __future__ import annotations

import copy

import pytest
import torch
from lightly.loss import BarlowTwinsLoss
from torch import nn

from sslkit.build import build_method, method_defaults
from sslkit.config import as_dict, compose
from sslkit.engine.optim import build_optimizer
from sslkit.errors import ConfigError, one_line
from sslkit.losses.barlow_twins import barlow_twins_loss
from sslkit.methods.barlow_twins import BarlowTwins
from tests.conftest import TinyEncoder
from tests.methods import redundancy as rr

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HEAD = {"kind": "layers", "layers": [{"out_dim": 24, "bn": "affine", "activation": "relu", "bias": False},
                                     {"out_dim": 12, "bias": False}]}


def official_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """facebookresearch/barlowtwins `BarlowTwins.forward` on one process: BN(affine=False), c / N."""
    bn = nn.BatchNorm1d(z1.shape[1], affine=False).to(z1.dtype)
    c = bn(z1).T @ bn(z2) / z1.shape[0]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lambd", [5e-3, 0.05])
def test_loss_equals_lightly_and_the_official_formula_by_value_and_gradient(lambd):
    torch.manual_seed(0)
    method = BarlowTwins(TinyEncoder(8), 8, HEAD, **method_defaults("barlow_twins", lambd=lambd)).double()
    x_a, x_b = torch.rand(2, 16, 3, 8, 8, dtype=torch.float64)
    reference = copy.deepcopy(method)
    out = method([x_a, x_b])
    out.loss.backward()

    for ref_loss in (BarlowTwinsLoss(lambda_param=lambd), lambda a, b: official_loss(a, b, lambd)):
        reference.zero_grad()
        z_a, z_b = reference.projector(reference.backbone(x_a)), reference.projector(reference.backbone(x_b))
        expected = ref_loss(z_a, z_b)
        expected.backward()
        torch.testing.assert_close(out.loss, expected, rtol=1e-10, atol=1e-10)
        got, want = grads(method), grads(reference)
        assert got.keys() == want.keys() and len(got) == len(list(method.parameters()))
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-8, atol=1e-10, msg=name)
    assert float(out.logs["loss"]) == pytest.approx(float(out.loss.detach()))


def test_the_loss_is_computed_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    method = BarlowTwins(TinyEncoder(8), 8, HEAD, **method_defaults("barlow_twins"))
    rr.check_loss_in_fp32(method, lambda a, b: barlow_twins_loss(a, b))


def test_the_projector_is_the_papers_three_layers_without_bias():
    cfg = compose(["method=barlow_twins"])
    assert [layer["out_dim"] for layer in cfg.head.layers] == [8192, 8192, 8192]  # the paper's default
    method, _ = rr.small_method("barlow_twins")
    kinds = [type(m) for m in method.projector]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    linears = [m for m in method.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 32), (32, 16)]
    assert all(m.bias is None for m in linears)  # as the official code: BN follows, and the last has none
    assert all(m.affine for m in method.projector if isinstance(m, nn.BatchNorm1d))
    assert compose(["method=barlow_twins"]).views == "byol"
    assert BarlowTwins.family == "redundancy reduction" and "2103.03230" in BarlowTwins.paper


def test_param_groups_biases_and_norms_at_0_0048_without_decay_or_adaptation():
    rr.check_param_groups("barlow_twins", bias_lr_scale=0.0048 / 0.2, weight_decay=1.5e-6)


def test_one_rate_for_all_when_bias_lr_scale_is_1():
    method, cfg = rr.small_method("barlow_twins", "method.bias_lr_scale=1.0")
    assert method.param_rules() == ()


def test_lr_schedule_warms_up_10_epochs_then_cosine_to_a_thousandth():
    rr.check_lr_schedule("barlow_twins", bias_lr_scale=0.024)


def test_it_learns_on_tiny_data():
    first, last = rr.check_learns("barlow_twins")
    assert last < 0.7 * first, (first, last)


def test_resume_is_bit_exact_and_the_encoder_is_what_evaluation_and_export_read(tmp_path, monkeypatch):
    run_dir = rr.check_resume_is_bit_exact("barlow_twins", tmp_path, monkeypatch)
    rr.check_encoder_is_evaluated(run_dir, tmp_path)


@pytest.mark.parametrize("change, message", [
    ("method.lambd=-1", "method.lambd"),
    ("method.bias_lr_scale=-0.5", "method.bias_lr_scale"),
    ("method.lambda=0.1", "unknown config key 'method.lambda'"),
])
def test_bad_parameters_are_one_line_errors(change, message):
    with pytest.raises(ConfigError) as info:
        build_method(rr.small_config("barlow_twins", change))
    assert message in one_line(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_cli_trains_on_fashion_mnist_and_an_imagefolder_and_knn_scores_it(tmp_path, cli):
    rr.check_cli("barlow_twins", tmp_path, cli)


def test_biases_keep_their_rate_when_the_optimizer_decays_them():
    """An optimizer told to decay and adapt biases too (`exclude_bias_and_norm` false) does so; their rate
    stays 0.024 x the weights'."""
    method, cfg = rr.small_method("barlow_twins")
    optim = {**as_dict(cfg.optim), "exclude_bias_and_norm": False}
    opt = build_optimizer(method, optim, 256, method.param_rules())
    for g in opt.param_groups:
        assert g["weight_decay"] == pytest.approx(1.5e-6) and not g["lars_exclude"]
        assert g["lr"] == pytest.approx(0.2 * (0.024 if g["params"][0].ndim <= 1 else 1.0))


def test_other_than_two_views_is_a_one_line_error():
    """views=dino (2 global + 8 local crops) reaches the first step as one line: `sslkit: error: ...`, exit 2."""
    method = BarlowTwins(TinyEncoder(8), 8, HEAD, **method_defaults("barlow_twins"))
    with pytest.raises(ConfigError, match="takes 2 views per step, got 3; use views=byol"):
        method([torch.rand(4, 3, 8, 8)] * 3)
