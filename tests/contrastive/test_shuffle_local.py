import torch

from sslkit.contrastive.shuffle_bn import shuffle_local, unshuffle_local


def test_shuffle_then_unshuffle_restores_order():
    x = torch.arange(20.0).view(10, 2)
    g = torch.Generator().manual_seed(0)
    shuffled, inverse = shuffle_local(x, g)
    assert not torch.equal(shuffled, x)
    assert torch.equal(torch.sort(shuffled[:, 0]).values, x[:, 0])
    torch.testing.assert_close(unshuffle_local(shuffled * 2, inverse), x * 2)


def test_shuffle_helpers_build_no_graph():
    x = torch.randn(6, 3, requires_grad=True)
    shuffled, inverse = shuffle_local(x)
    assert not shuffled.requires_grad
    assert not unshuffle_local(x * 2, inverse).requires_grad
