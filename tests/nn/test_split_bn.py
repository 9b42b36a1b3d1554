import copy

import pytest
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


@pytest.mark.parametrize("n", [8, 7])  # 7: the short-batch path (uneven groups)
def test_running_stats_average_the_groups(n):
    torch.manual_seed(1)
    bn = SplitBatchNorm2d(2, num_splits=2, momentum=1.0)  # momentum 1: running stats = last batch stats
    x = torch.randn(n, 2, 3, 3) + 3.0
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


def _previous_forward(bn, x):
    """The earlier SplitBatchNorm2d forward (groups folded into channels by reshape), as a reference."""
    g = bn.num_splits
    n, c, h, w = x.shape
    mean, var = bn.running_mean.repeat(g), bn.running_var.repeat(g)
    out = torch.nn.functional.batch_norm(x.reshape(n // g, c * g, h, w), mean, var, bn.weight.repeat(g),
                                         bn.bias.repeat(g), True, bn.momentum, bn.eps).view(n, c, h, w)
    bn.running_mean.copy_(mean.view(g, c).mean(0))
    bn.running_var.copy_(var.view(g, c).mean(0))
    bn.num_batches_tracked.add_(1)
    return out


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("spatial", [(5, 3), (1, 1)])
def test_forward_backward_and_running_stats_equal_the_previous_implementation(memory_format, spatial):
    torch.manual_seed(2)
    bn = SplitBatchNorm2d(6, num_splits=4, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    ref = copy.deepcopy(bn)
    for step in range(3):  # running statistics accumulate over steps
        x = (torch.randn(16, 6, *spatial, dtype=torch.float64) * (step + 1) + step)
        x = x.contiguous(memory_format=memory_format)
        x_ref = x.detach().clone().requires_grad_(True)
        x.requires_grad_(True)
        weights = torch.randn(16, 6, *spatial, dtype=torch.float64)
        out = bn(x)
        out_ref = _previous_forward(ref, x_ref)
        torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
        assert out._base is None  # not a view: an in-place op after it needs no CopySlices
        assert out.is_contiguous(memory_format=memory_format)
        torch.relu_(out)  # as ResNet's ReLU(inplace=True) does
        (out * weights).sum().backward()
        (torch.relu(out_ref) * weights).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
        for name in ("weight", "bias"):
            torch.testing.assert_close(getattr(bn, name).grad, getattr(ref, name).grad, rtol=1e-10, atol=1e-12)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(bn, name), getattr(ref, name), rtol=1e-12, atol=1e-14)
    assert bn.weight.grad.abs().sum() > 0 and not torch.allclose(bn.running_var, torch.ones(6, dtype=torch.float64))


def test_channels_last_statistics_are_per_group_and_eval_is_plain_bn():
    torch.manual_seed(3)
    bn = SplitBatchNorm2d(3, num_splits=4)
    x = (torch.randn(16, 3, 5, 5) * torch.arange(1, 17.0).view(16, 1, 1, 1)).contiguous(
        memory_format=torch.channels_last)
    torch.testing.assert_close(bn(x), _per_group_reference(x, 4, bn.eps), rtol=1e-4, atol=1e-5)
    plain = nn.BatchNorm2d(3)
    plain.load_state_dict(bn.state_dict())
    bn.eval()
    plain.eval()
    torch.testing.assert_close(bn(x), plain(x))


def test_momentum_none_is_a_cumulative_average():
    torch.manual_seed(4)
    bn = SplitBatchNorm2d(2, num_splits=2, momentum=None)
    xs = [torch.randn(8, 2, 3, 3) + i for i in range(2)]
    for x in xs:
        bn(x)
    group_means = [torch.stack([x[b::2].mean(dim=(0, 2, 3)) for b in range(2)]).mean(0) for x in xs]
    torch.testing.assert_close(bn.running_mean, (group_means[0] + group_means[1]) / 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_reduced_precision_equals_batch_norm_per_group_and_fp32(dtype, channels_last):
    """bf16/fp16 activations with fp32 parameters (what autocast hands BN): forward and backward run,
    equal F.batch_norm applied per group to the same reduced input, and equal the fp32 split BN within
    the reduced type's tolerance; running statistics stay fp32 (issue 19: the folded path crashed)."""
    import torch.nn.functional as F

    torch.manual_seed(3)
    groups, n = 4, 16
    x32 = (torch.randn(n, 3, 5, 5) * 2 + 1)
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def run(x):
        bn = SplitBatchNorm2d(3, num_splits=groups, momentum=0.5)
        bn.weight.data.copy_(w)
        bn.bias.data.copy_(b)
        x = x.contiguous(memory_format=fmt).requires_grad_()
        y = bn(x)
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return y, x.grad, bn

    y, gx, bn = run(x32.to(dtype))
    assert y.dtype == dtype and gx.dtype == dtype and bn.running_mean.dtype == torch.float32
    # the reference: the native kernel on each group of the same reduced-precision input
    xr = x32.to(dtype).requires_grad_()
    ref = torch.empty(n, 3, 5, 5, dtype=dtype)
    for g in range(groups):
        ref[g::groups] = F.batch_norm(xr[g::groups], None, None, w, b, True, 0.0, 1e-5)
    (ref.float() * torch.linspace(-1, 1, ref.numel()).view_as(ref)).sum().backward()
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(y.float(), ref.float(), **tol)
    torch.testing.assert_close(gx.float(), xr.grad.float(), **tol)
    y32, g32, bn32 = run(x32)
    torch.testing.assert_close(y.float(), y32, **tol)
    torch.testing.assert_close(gx.float(), g32, **tol)
    torch.testing.assert_close(bn.running_mean, bn32.running_mean, **tol)
    torch.testing.assert_close(bn.running_var, bn32.running_var, **tol)
    torch.testing.assert_close(bn.weight.grad, bn32.weight.grad, **tol)
