"""`stratified_indices`: class shares by largest remainder, seeded draws, dataset order."""

import torch

from sslkit.data.base import TensorImageDataset
from sslkit.data.subset import stratified_indices


def test_quotas_follow_class_shares_by_largest_remainder():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)  # sorted by class, as ImageFolder lists them
    idx = stratified_indices(labels, 10, seed=0)
    assert torch.bincount(labels[idx], minlength=3).tolist() == [5, 3, 2]
    # 7 of 100: exact shares 3.5, 2.1, 1.4 -> floors 3, 2, 1 and the one left goes to the largest remainder (0.5)
    assert torch.bincount(labels[stratified_indices(labels, 7, 0)], minlength=3).tolist() == [4, 2, 1]
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == 10


def test_seeded_reproducible_and_uniform_within_a_class():
    labels = torch.tensor([0] * 1000 + [1] * 1000)
    a, b, c = (stratified_indices(labels, 100, s) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    draws = torch.cat([stratified_indices(labels, 100, s) for s in range(200)])
    counts = torch.bincount(draws, minlength=2000).float()
    assert abs(counts.mean().item() - 10.0) < 1e-6 and counts.std().item() < 4.5  # ~Binomial(200, 0.05): sd 3.1
    assert (counts[:1000] > 0).float().mean() > 0.99  # every item gets drawn under some seed


def test_unlabeled_items_count_as_a_class_and_small_requests_work():
    labels = torch.tensor([-1] * 6 + [0] * 2 + [1] * 2)
    assert torch.bincount(labels[stratified_indices(labels, 5, 3)] + 1, minlength=3).tolist() == [3, 1, 1]
    assert stratified_indices(labels, 0, 0).numel() == 0 and stratified_indices(labels, 50, 0).numel() == 10


def test_in_memory_dataset_subset_is_stratified():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    ds = TensorImageDataset(images, torch.arange(40) // 10, 4)
    sub = ds.subset(8, seed=5)
    assert torch.bincount(sub.targets, minlength=4).tolist() == [2, 2, 2, 2]
    assert torch.equal(sub.images[:, 0, 0, 0].long() // 10, sub.targets)  # images travel with their labels
