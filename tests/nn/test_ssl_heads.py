"""Per-layer MLP heads, the predictor, DINO's head, SwAV's prototypes and the gradient edits, against
lightly's heads (same weights, same outputs and gradients), torch's weight norm and DINO's formulas."""

import pytest
import torch
import torch.nn.functional as F
from lightly.models.modules.heads import (
    BarlowTwinsProjectionHead,
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOProjectionHead,
    SimSiamPredictionHead,
    SimSiamProjectionHead,
)
from torch import nn

from sslkit.errors import ConfigError
from sslkit.nn import (
    DINOHead,
    LayerSpec,
    Prototypes,
    WeightNormLinear,
    build_head,
    build_mlp,
    cancel_gradients_,
    clip_gradients_,
    mlp_layers,
    normalize_prototypes_,
    predictor,
)


def _same_function(ours: nn.Module, ref: nn.Module, in_dim: int) -> None:
    """Copy `ref`'s parameters into `ours` in order (shapes must agree), then outputs and input gradients match."""
    ours_p, ref_p = list(ours.parameters()), list(ref.parameters())
    assert [p.shape for p in ours_p] == [p.shape for p in ref_p]
    assert [p.requires_grad for p in ours_p] == [p.requires_grad for p in ref_p]
    with torch.no_grad():
        for a, b in zip(ours_p, ref_p, strict=True):
            a.copy_(torch.randn_like(b))
            b.copy_(a)
    x = torch.randn(8, in_dim, dtype=torch.float64, requires_grad=True)
    ours.double().train(), ref.double().train()
    out, expected = ours(x), ref(x)
    torch.testing.assert_close(out, expected)
    w = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad((out * w).sum(), x)[0],
                               torch.autograd.grad((expected * w).sum(), x)[0])


def test_projectors_and_predictors_equal_lightlys():
    # BYOL (Sec. 3.3): 4096 hidden with BN, 256 out
    _same_function(build_mlp(32, [LayerSpec(64, "affine", "relu"), LayerSpec(16, bias=True)]),
                   BYOLProjectionHead(32, 64, 16), 32)
    _same_function(predictor(16, 64), BYOLPredictionHead(16, 64, 16), 16)
    # SimSiam (Sec. 4.2): 3 layers with BN, the last BN without affine parameters; predictor 2048 -> 512 -> 2048
    _same_function(build_mlp(32, mlp_layers(48, 48, 3, last_bn="plain")), SimSiamProjectionHead(32, 48, 48), 32)
    _same_function(predictor(48, 12), SimSiamPredictionHead(48, 12, 48), 48)
    # Barlow Twins (Sec. 4): fc + BN + ReLU twice, a last fc without BN (lightly gives it a bias, the
    # official code does not: a method config says `bias: false`)
    _same_function(build_mlp(32, mlp_layers(40, 40, 3, last_bn="none")),
                   BarlowTwinsProjectionHead(32, 40, 40), 32)


def test_layer_specs_choose_bn_per_layer_and_the_bias_follows():
    head = build_head({"kind": "layers", "layers": [
        {"out_dim": 8, "bn": True, "activation": "relu"},
        {"out_dim": 8, "bn": "scale", "activation": "gelu"},
        {"out_dim": 4, "bn": "plain"},
        {"out_dim": 3, "bias": False},
    ]}, 5)
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "GELU",
                                                "Linear", "BatchNorm1d", "Linear"]
    assert head[0].bias is None and head[3].bias is None and head[6].bias is None and head[8].bias is None
    assert head[1].affine and head[4].affine and not head[4].bias.requires_grad and not head[7].affine
    assert build_mlp(4, [LayerSpec(2)])[0].bias is not None  # no BN after it: a bias


@pytest.mark.parametrize(("layers", "words"), [
    ([{"out_dim": 8, "bn": "batch"}], ["bn='batch'", "valid: affine, none, plain, scale"]),
    ([{"out_dim": 8, "activation": "tanh"}], ["activation='tanh'", "valid:"]),
    ([{"out_dim": 8, "dropout": 0.1}], ["unknown head layer key 'dropout'"]),
    ([{"bn": True}], ["needs out_dim"]),
    ([{"out_dim": 0}], ["out_dim must be an integer >= 1"]),
    ([{"out_dim": 4, "bias": "yes"}], ["bias must be true, false or null"]),
    ([], ["at least one layer"]),
])
def test_bad_layer_specs_are_one_line_config_errors(layers, words):
    with pytest.raises(ConfigError) as err:
        build_head({"kind": "layers", "layers": layers}, 4)
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


def test_the_old_mlp_head_keeps_its_structure_and_keys():
    head = build_head({"kind": "mlp", "hidden_dim": 16, "out_dim": 8, "num_layers": 3, "batch_norm": True}, 4)
    assert list(head.state_dict()) == [
        "0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
        "3.weight", "4.weight", "4.bias", "4.running_mean", "4.running_var", "4.num_batches_tracked",
        "6.weight", "7.weight", "7.bias", "7.running_mean", "7.running_var", "7.num_batches_tracked"]
    assert not head[7].bias.requires_grad
    plain = build_head({"kind": "mlp", "hidden_dim": 16, "out_dim": 8}, 4)
    assert list(plain.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")  # inside lightly
def test_dino_head_equals_lightlys_with_fixed_g():
    ours = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    ref = DINOProjectionHead(16, 24, 8, 32, batch_norm=False, norm_last_layer=True)
    assert not ours.last_layer.weight_g.requires_grad and torch.equal(ours.last_layer.weight_g, torch.ones(32, 1))
    # lightly's weight_norm registers g before v; ours names them the same, v first
    ours_params = dict(ours.named_parameters())
    with torch.no_grad():
        for a, b in zip(ours.mlp.parameters(), ref.layers.parameters(), strict=True):
            b.copy_(a)
        ref.last_layer.weight_v.copy_(ours_params["last_layer.weight_v"])
    x = torch.randn(5, 16, requires_grad=True)
    torch.testing.assert_close(ours(x), ref(x))
    # the official init: trunc-normal(0.02) weights and zero biases in the MLP, g = 1
    assert float(ours.mlp[0].weight.detach().std()) < 0.03 and torch.equal(ours.mlp[0].bias, torch.zeros(24))
    assert DINOHead(16, 32, 24, 8, norm_last_layer=False).last_layer.weight_g.requires_grad


def test_weight_norm_linear_equals_torch_weight_norm_by_value_and_gradient():
    layer = WeightNormLinear(6, 4, fix_g=False)
    with torch.no_grad():
        layer.weight_g.uniform_(0.5, 2.0)
    ref = nn.utils.parametrizations.weight_norm(nn.Linear(6, 4, bias=False))
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(layer.weight_g)
        ref.parametrizations.weight.original1.copy_(layer.weight_v)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), ref(x))
    layer(x).square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(layer.weight_g.grad, ref.parametrizations.weight.original0.grad)
    torch.testing.assert_close(layer.weight_v.grad, ref.parametrizations.weight.original1.grad)
    fixed = WeightNormLinear(6, 4)  # g fixed at 1: unit rows, whatever v does
    with torch.no_grad():
        fixed.weight_v.mul_(7.0)
    torch.testing.assert_close(fixed.weight.norm(dim=1), torch.ones(4))


def test_prototypes_score_cosines_and_normalising_keeps_the_parameter():
    proto = Prototypes(8, 5)
    assert proto.bias is None
    torch.testing.assert_close(proto.weight.norm(dim=1), torch.ones(5))
    with torch.no_grad():
        proto.weight.mul_(3.0).add_(0.1)
    weight = proto.weight
    normalize_prototypes_(proto)
    assert proto.weight is weight  # in place: optimizer state still points at it
    torch.testing.assert_close(proto.weight.norm(dim=1), torch.ones(5))
    z = torch.randn(4, 8) * 10
    scores = proto(z)
    torch.testing.assert_close(scores, F.normalize(z, dim=1) @ F.normalize(proto.weight, dim=1).T)
    assert scores.abs().max() <= 1 + 1e-6


def _dino_clip(model: nn.Module, clip: float) -> None:
    """DINO's utils.clip_gradients, verbatim in behaviour."""
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.data.norm(2)
            coef = clip / (norm + 1e-6)
            if coef < 1:
                p.grad.data.mul_(coef)


def test_per_parameter_clipping_equals_dinos_and_global_clipping_torchs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    (model(torch.randn(7, 5) * 5).square().sum()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    ref = [g.clone() for g in grads]
    clip = float(torch.stack([g.norm() for g in grads]).median())  # clips some and leaves some
    norms = clip_gradients_(model.parameters(), clip)
    holder = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    for p, g in zip(holder.parameters(), ref, strict=True):
        p.grad = g
    _dino_clip(holder, clip)
    for a, b in zip(model.parameters(), holder.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(norms, torch.stack([g.norm() for g in grads]))
    assert (norms > clip).any() and (norms <= clip).any()
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    total = clip_gradients_(model.parameters(), 1.0, mode="global")
    for p, g in zip(holder.parameters(), grads, strict=True):
        p.grad = g.clone()
    torch.testing.assert_close(total, nn.utils.clip_grad_norm_(holder.parameters(), 1.0))
    for a, b in zip(model.parameters(), holder.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    with pytest.raises(ValueError, match="unknown clipping mode"):
        clip_gradients_(model.parameters(), 1.0, mode="value")


def test_cancelled_gradients_freeze_a_part_under_adamw_until_the_given_epoch_only():
    torch.manual_seed(0)
    head = DINOHead(4, out_dim=6, hidden_dim=8, bottleneck_dim=3, norm_last_layer=True)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=0.1, weight_decay=0.04)
    last = head.last_layer.weight_v
    for epoch, step in [(0, 0), (0, 1), (1, 2)]:
        before, mlp_before = last.detach().clone(), head.mlp[0].weight.detach().clone()
        head(torch.randn(5, 4)).logsumexp(1).mean().backward()
        cancelled = cancel_gradients_(head.last_layer.parameters(), epoch, 1)
        opt.step()
        opt.zero_grad()
        assert cancelled == (epoch < 1)
        assert torch.equal(last, before) == (epoch < 1), step  # frozen in epoch 0 (no decay either), moves after
        assert not torch.equal(head.mlp[0].weight, mlp_before)  # the rest always trains


def test_dino_head_defaults_are_the_papers():
    """DINO (Caron et al. 2021, appendix; main_dino.py): a 3-layer MLP of width 2048, a 256-d bottleneck
    and 65536 prototypes; g of the last layer fixed."""
    head = DINOHead(32)
    linears = [m for m in head.mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 2048), (2048, 2048), (2048, 256)]
    assert head.last_layer.weight_v.shape == (65536, 256)
    assert not head.last_layer.weight_g.requires_grad


def test_weight_norm_linear_fixes_g_by_default_and_starts_v_as_nn_linear_does():
    """v starts as `nn.Linear`'s weight would (kaiming uniform, a = sqrt(5), as the official
    `nn.utils.weight_norm(nn.Linear(...))`), g at 1 without gradient unless asked."""
    from sslkit.nn.dino_head import WeightNormLinear

    torch.manual_seed(5)
    layer = WeightNormLinear(7, 5)
    torch.manual_seed(5)
    reference = nn.Linear(7, 5, bias=False)
    torch.testing.assert_close(layer.weight_v.detach(), reference.weight.detach(), rtol=0, atol=0)
    assert not layer.weight_g.requires_grad and bool((layer.weight_g == 1).all())
    assert WeightNormLinear(7, 5, fix_g=False).weight_g.requires_grad


def test_prototypes_default_to_swavs_3000_unit_vectors_without_bias():
    proto = Prototypes(16)
    assert proto.weight.shape == (3000, 16) and proto.bias is None
    torch.testing.assert_close(proto.weight.norm(dim=1), torch.ones(3000))
