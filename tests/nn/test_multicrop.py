"""`forward_by_size`: consecutive views of one size go through the network as one batch, in order."""

import pytest
import torch

from sslkit.nn.multicrop import forward_by_size


@pytest.mark.parametrize(("sizes", "batches"), [
    ([8, 8, 8, 4], [3, 1]),            # an odd run of one size
    ([8, 4, 4, 4, 4, 4], [1, 5]),
    ([4, 8, 8, 4], [1, 2, 1]),         # a larger size after a smaller one, then back
    ([8, 6, 8], [1, 1, 1]),            # sizes that repeat but not consecutively
    ([6], [1]),
])
def test_consecutive_views_of_one_size_form_one_batch_and_outputs_keep_the_order(sizes, batches):
    views = [torch.full((2, 3, s, s), float(i)) for i, s in enumerate(sizes)]
    seen = []

    def net(x):
        seen.append(x.shape[0] // 2)
        return x.mean(dim=(1, 2, 3))

    out = forward_by_size(views, net)
    assert seen == batches
    assert [o.tolist() for o in out] == [[float(i)] * 2 for i in range(len(sizes))]


def test_only_the_spatial_size_decides_not_the_channels_or_the_batch():
    views = [torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 6), torch.zeros(2, 3, 6, 8)]
    seen = []
    forward_by_size(views, lambda x: seen.append(x.shape) or x.mean(dim=(1, 2, 3)))
    assert [tuple(s) for s in seen] == [(2, 3, 8, 8), (2, 3, 8, 6), (2, 3, 6, 8)]
