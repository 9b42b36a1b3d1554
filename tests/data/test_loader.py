"""The training loader: a resumed epoch skips the batches already trained, and steps per epoch are the
loader's batches on every rank."""

from __future__ import annotations

import torch

from sslkit.data.base import TensorImageDataset
from sslkit.data.loader import ResumableSampler, resumable_sampler, steps_per_epoch, train_loader


def test_start_epoch_skips_the_batches_already_trained_once():
    s = ResumableSampler(list(range(20)), 1, 0, True, seed=3, batch_size=4)
    s.start_epoch(2)
    full = list(s)
    s.start_epoch(2, batches_done=3)
    assert len(s) == 8 and list(s) == full[12:]
    assert list(s) == full  # the next pass is whole again
    s.start_epoch(3)
    assert sorted(s) == list(range(20)) and list(s) != full


def test_steps_per_epoch_are_the_loaders_batches_on_every_rank():
    ds = TensorImageDataset(torch.zeros(37, 1, 4, 4, dtype=torch.uint8), torch.zeros(37, dtype=torch.long), 1)
    for world in (1, 2, 4):
        for rank in range(world):
            loader = train_loader(ds, 8, world=world, rank=rank)
            assert len(loader) == steps_per_epoch(37, 8, world)
            assert resumable_sampler(loader).batch_size == 8 // world
