import torch
from torch import nn

from sslkit.nn.split_bn import SplitBatchNorm2d, convert_split_bn


def _per_group_reference(x, groups, eps):
    out = torch.empty_like(x)
    for b in range(groups):  # group b: samples b, b+G, b+2G, ...
        part = x[b::groups]
        mean = part.mean(dim=(0, 2, 3), keepdim=True)
        var = part.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        out[b::groups] = (part - mean) / torch.sqrt(var + eps)
    return out


def test_statistics_are_per_group_even_and_uneven():
    torch.manual_seed(0)
    for n in (16, 14):  # 14 is not a multiple of 4: the short-batch path
        bn = SplitBatchNorm2d(3, num_splits=4)
        x = torch.randn(n, 3, 5, 5) * torch.arange(1, n + 1.0).view(n, 1, 1, 1)
        torch.testing.assert_close(bn(x), _per_group_reference(x, 4, bn.eps), rtol=1e-4, atol=1e-5)


def test_running_stats_average_the_groups():
    torch.manual_seed(1)
    bn = SplitBatchNorm2d(2, num_splits=2, momentum=1.0)  # momentum 1: running stats = last batch stats
    x = torch.randn(8, 2, 3, 3)
    bn(x)
    means = torch.stack([x[b::2].mean(dim=(0, 2, 3)) for b in range(2)]).mean(0)
    vars_ = torch.stack([x[b::2].var(dim=(0, 2, 3), unbiased=True) for b in range(2)]).mean(0)
    torch.testing.assert_close(bn.running_mean, means)
    torch.testing.assert_close(bn.running_var, vars_)


def test_eval_mode_is_plain_batchnorm_and_state_dict_compatible():
    bn = SplitBatchNorm2d(3, num_splits=4)
    bn.running_mean.fill_(0.5)
    plain = nn.BatchNorm2d(3)
    plain.load_state_dict(bn.state_dict())
    bn.eval()
    plain.eval()
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(bn(x), plain(x))


def test_convert_replaces_every_bn_and_keeps_weights():
    import torchvision

    model = torchvision.models.resnet18()
    model.bn1.weight.data.fill_(3.0)
    convert_split_bn(model, 8)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, SplitBatchNorm2d) for m in bns)
    assert torch.all(model.bn1.weight == 3.0)
