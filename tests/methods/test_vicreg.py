"""VICReg (Bardes et al. 2022, arXiv 2105.04906): the method's loss equals lightly's `VICRegLoss` and
the official code's formula by value and gradient; the expander, parameter groups and schedule are the
paper's; it learns; a resume is bit-exact; its encoder is what evaluation and export read; and (slow)
the CLI trains it on Fashion-MNIST and an ImageFolder and scores it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import VICRegLoss
from torch import nn

from sslkit.build import build_method, method_defaults
from sslkit.config import compose
from sslkit.errors import ConfigError, one_line
from sslkit.losses.vicreg import vicreg_loss
from sslkit.methods.vicreg import VICReg
from tests.conftest import TinyEncoder
from tests.methods import redundancy as rr

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HEAD = {"kind": "layers", "layers": [{"out_dim": 24, "bn": "affine", "activation": "relu", "bias": True},
                                     {"out_dim": 12, "bias": False}]}


def official_loss(x: torch.Tensor, y: torch.Tensor, sim: float, std: float, cov: float) -> torch.Tensor:
    """facebookresearch/vicreg `VICReg.forward` on one process (batch_size = N, num_features = D)."""
    n, d = x.shape
    repr_loss = F.mse_loss(x, y)
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    std_x, std_y = torch.sqrt(x.var(dim=0) + 0.0001), torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x, cov_y = x.T @ x / (n - 1), y.T @ y / (n - 1)
    off = ~torch.eye(d, dtype=torch.bool)
    cov_loss = cov_x[off].pow(2).sum() / d + cov_y[off].pow(2).sum() / d
    return sim * repr_loss + std * std_loss + cov * cov_loss


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (5.0, 10.0, 2.0)])
def test_loss_equals_lightly_and_the_official_formula_by_value_and_gradient(weights):
    sim, std, cov = weights
    torch.manual_seed(0)
    method = VICReg(TinyEncoder(8), 8, HEAD, **method_defaults("vicreg", invariance=sim, variance=std,
                                                                 covariance=cov)).double()
    x_a, x_b = torch.rand(2, 16, 3, 8, 8, dtype=torch.float64)
    reference = copy.deepcopy(method)
    out = method([x_a, x_b])
    out.loss.backward()

    lightly_loss = VICRegLoss(lambda_param=sim, mu_param=std, nu_param=cov)
    for ref_loss in (lightly_loss, lambda a, b: official_loss(a, b, sim, std, cov)):
        reference.zero_grad()
        z_a, z_b = reference.projector(reference.backbone(x_a)), reference.projector(reference.backbone(x_b))
        expected = ref_loss(z_a, z_b)
        expected.backward()
        torch.testing.assert_close(out.loss, expected, rtol=1e-10, atol=1e-10)
        got, want = grads(method), grads(reference)
        assert got.keys() == want.keys() and len(got) == len(list(method.parameters()))
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-8, atol=1e-10, msg=name)


def test_the_variance_term_acts_where_features_collapse():
    """A collapsed embedding (every row equal) costs μ x (1 - sqrt(ε)) from the variance hinge alone."""
    z = torch.ones(8, 4, dtype=torch.float64)
    assert float(vicreg_loss(z, z)) == pytest.approx(25.0 * (1 - 1e-2))


def test_the_loss_is_computed_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    method = VICReg(TinyEncoder(8), 8, HEAD, **method_defaults("vicreg"))
    rr.check_loss_in_fp32(method, lambda a, b: vicreg_loss(a, b))


def test_the_expander_is_the_papers_three_layers():
    cfg = compose(["method=vicreg"])
    assert [layer["out_dim"] for layer in cfg.head.layers] == [8192, 8192, 8192]  # the paper's default
    assert cfg.views == "byol" and cfg.optim.name == "lars" and cfg.optim.lr == 0.2
    method, _ = rr.small_method("vicreg")
    kinds = [type(m) for m in method.projector]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    linears = [m for m in method.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 32), (32, 16)]
    # the official `Projector`: the hidden fc keep their bias, the last has none
    assert [m.bias is not None for m in linears] == [True, True, False]
    assert VICReg.family == "redundancy reduction" and "2105.04906" in VICReg.paper


def test_param_groups_biases_and_norms_without_decay_or_adaptation():
    rr.check_param_groups("vicreg", bias_lr_scale=1.0, weight_decay=1e-6)


def test_lr_schedule_warms_up_10_epochs_then_cosine_to_a_thousandth():
    rr.check_lr_schedule("vicreg", bias_lr_scale=1.0)


def test_it_learns_on_tiny_data():
    first, last = rr.check_learns("vicreg")
    assert last < 0.7 * first, (first, last)


def test_resume_is_bit_exact_and_the_encoder_is_what_evaluation_and_export_read(tmp_path, monkeypatch):
    run_dir = rr.check_resume_is_bit_exact("vicreg", tmp_path, monkeypatch)
    rr.check_encoder_is_evaluated(run_dir, tmp_path)


@pytest.mark.parametrize("change, message", [
    ("method.invariance=-1", "method.invariance"),
    ("method.covariance=nan", "method.covariance"),
    ("method.sim_coeff=25", "unknown config key 'method.sim_coeff'"),
])
def test_bad_parameters_are_one_line_errors(change, message):
    with pytest.raises(ConfigError) as info:
        build_method(rr.small_config("vicreg", change))
    assert message in one_line(info.value) and "\n" not in str(info.value)


def test_all_weights_zero_is_an_error():
    with pytest.raises(ConfigError, match="nothing to train"):
        VICReg(TinyEncoder(8), 8, HEAD, **method_defaults("vicreg", invariance=0, variance=0, covariance=0))


@pytest.mark.slow
def test_cli_trains_on_fashion_mnist_and_an_imagefolder_and_knn_scores_it(tmp_path, cli):
    rr.check_cli("vicreg", tmp_path, cli)


def test_other_than_two_views_is_a_one_line_error():
    """views=dino (2 global + 8 local crops) reaches the first step as one line: `sslkit: error: ...`, exit 2."""
    method = VICReg(TinyEncoder(8), 8, HEAD, **method_defaults("vicreg"))
    with pytest.raises(ConfigError, match="takes 2 views per step, got 3; use views=byol"):
        method([torch.rand(4, 3, 8, 8)] * 3)
