import pytest
import torch
import torchvision

from sslkit.errors import ConfigError
from sslkit.nn.backbones import build_backbone
from sslkit.nn.heads import build_head


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet50", 2048)])
def test_torchvision_backbones_pool_to_feature_dim(name, dim):
    model, d = build_backbone({"name": name})
    assert d == dim == measured_dim(model, 32)


@torch.no_grad()
def measured_dim(model, image_size: int) -> int:
    """The feature dimension of one dummy forward, against the dimension a backbone declares."""
    model.eval()
    return int(model(torch.zeros(2, 3, image_size, image_size)).shape[-1])


def test_small_images_stem():
    model, _ = build_backbone({"name": "resnet18", "small_images": True})
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_timm_vit_is_built_for_the_data_size():
    model, d = build_backbone({"name": "timm", "timm_name": "vit_tiny_patch16_224", "image_size": 32})
    assert d == 192 and model(torch.zeros(2, 3, 32, 32)).shape == (2, 192)


def test_timm_backbone_and_errors():
    model, d = build_backbone({"name": "timm", "timm_name": "resnet10t"})
    assert d == measured_dim(model, 32)
    with pytest.raises(ConfigError, match="unknown timm model 'resnet10q'"):
        build_backbone({"name": "timm", "timm_name": "resnet10q"})
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_backbone({"name": "resnet81"})


def test_backbone_state_loads_into_torchvision():
    model, _ = build_backbone({"name": "resnet18"})
    ref = torchvision.models.resnet18()
    missing, unexpected = ref.load_state_dict(model.state_dict(), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected


def test_heads():
    lin = build_head({"kind": "linear", "out_dim": 128}, 512)
    assert [type(m).__name__ for m in lin] == ["Linear"]
    mlp = build_head({"kind": "mlp", "hidden_dim": 2048, "out_dim": 128, "num_layers": 2}, 512)
    assert [type(m).__name__ for m in mlp] == ["Linear", "ReLU", "Linear"]
    assert mlp[0].out_features == 2048 and mlp[2].out_features == 128
    bn3 = build_head({"kind": "mlp", "hidden_dim": 64, "out_dim": 8, "num_layers": 3, "batch_norm": True}, 16)
    assert [type(m).__name__ for m in bn3] == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear", "BatchNorm1d"]
    with pytest.raises(ConfigError):
        build_head({"kind": "transformer"}, 4)


def test_head_defaults_follow_the_official_code():
    """MoCo v2 (main_moco.py): hidden width = the backbone's feature dim, no BN. SimCLR: BN after every fc,
    no bias before a BN, and the last BN without a learned shift."""
    from sslkit.build import build_method
    from sslkit.config import compose

    moco = build_method(compose(["method=mocov2"])).head  # ResNet-18: 512-d features
    assert [type(m).__name__ for m in moco] == ["Linear", "ReLU", "Linear"]
    assert (moco[0].in_features, moco[0].out_features, moco[2].out_features) == (512, 512, 128)
    simclr = build_method(compose(["method=simclr"])).head
    assert [type(m).__name__ for m in simclr] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert simclr[0].out_features == 512 and simclr[0].bias is None and simclr[3].bias is None
    assert not simclr[4].bias.requires_grad and simclr[4].weight.requires_grad
    assert build_head({"kind": "mlp", "hidden_dim": None}, 2048)[0].out_features == 2048  # ResNet-50
    assert [type(m).__name__ for m in build_method(compose(["method=mocov1"])).head] == ["Linear"]


@pytest.mark.parametrize("name, expansion", [("resnet18", 1), ("resnet50", 4)])
def test_width_scales_every_stage(name, expansion):
    model, d = build_backbone({"name": name, "small_images": True, "width": 16})
    assert d == 16 * 8 * expansion == measured_dim(model, 28)
    assert model.conv1.out_channels == 16 and model.bn1.num_features == 16
    for i, planes in enumerate((16, 32, 64, 128), 1):  # width x (1, 2, 4, 8), as torchvision's 64 x ...
        first = getattr(model, f"layer{i}")[0]
        assert first.conv1.out_channels == planes
    # same depth as the full-width model: the only change is the number of channels
    full, _ = build_backbone({"name": name, "small_images": True})
    assert [type(m) for m in model.modules()] == [type(m) for m in full.modules()]
    n, n_full = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in full.parameters())
    assert n < n_full / 10  # about (16/64)^2 of the weights
    with pytest.raises(ConfigError, match="backbone.width"):
        build_backbone({"name": name, "width": -4})
