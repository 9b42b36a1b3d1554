"""Loaders with a resumable, rank-aware sampler (torch's DistributedSampler, skipping ahead on resume)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from sslkit.data.base import collate, num_images
from sslkit.errors import DataError


class ResumableSampler(DistributedSampler):
    """DistributedSampler of one rank's share, in batches of `batch_size`, whose first epoch after a
    resume skips the batches already trained (`start_epoch`)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int,
                 batch_size: int = 1) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=True)
        self.batch_size = batch_size
        self.skip = 0

    def start_epoch(self, epoch: int, batches_done: int = 0) -> None:
        """Shuffle for `epoch` and leave out its first `batches_done` batches (a resumed epoch)."""
        self.set_epoch(epoch)
        self.skip = batches_done * self.batch_size

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def steps_per_epoch(n_images: int, global_batch: int, world: int, drop_last: bool = True) -> int:
    """Optimizer steps per epoch: each rank's equal share of the images (torch's DistributedSampler
    with drop_last) in batches of `global_batch // world`; with `drop_last` (data.drop_last) a
    partial last batch is dropped, without it the last step trains on fewer images."""
    share, batch = n_images // world, global_batch // world
    return share // batch if drop_last else -(-share // batch)


def check_batch(global_batch: int, world: int, what: str = "") -> None:
    """The global batch must be positive and split evenly over `world` processes (one place for the check:
    `sslkit train` runs it before torchrun starts, the loader for every other caller)."""
    if global_batch <= 0:
        raise DataError(f"data.batch_size must be positive, got {global_batch}")
    if global_batch % world:
        by = f"{what}={world}" if what else f"the {world} processes"
        raise DataError(f"data.batch_size={global_batch} must be divisible by {by}")


def train_loader(dataset: Dataset, global_batch: int, *, world: int = 1, rank: int = 0, seed: int = 0,
                 num_workers: int = 0, shuffle: bool = True, drop_last: bool = True) -> DataLoader:
    """A loader of per-rank batches of `global_batch // world` images; `drop_last` (data.drop_last):
    whether a partial last batch of an epoch is dropped."""
    n = num_images(dataset)
    check_batch(global_batch, world)
    if global_batch > n:
        raise DataError(f"data.batch_size={global_batch} is larger than the {n} training images; "
                        f"use data.batch_size<={n} or more data (data.subset)")
    sampler = ResumableSampler(dataset, world, rank, shuffle, seed, global_batch // world)
    batches = BatchSampler(sampler, global_batch // world, drop_last=drop_last)
    # Its own generator: creating an iterator must not draw from the global RNG, or a run resumed
    # mid-epoch would see different augmentations than the uninterrupted one.
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                      pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed + rank), worker_init_fn=ignore_stop_signals)


def resumable_sampler(loader: DataLoader) -> ResumableSampler:
    """The sampler of a loader made by `train_loader`."""
    sampler = getattr(loader.batch_sampler, "sampler", None)
    if not isinstance(sampler, ResumableSampler):
        raise TypeError("the training loop needs a loader made by sslkit.data.loader.train_loader")
    return sampler


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGUSR1 (a terminal's Ctrl-C reaches the whole process
    group): the main process stops at a step boundary and then ends its workers. SIGTERM keeps its
    default action: multiprocessing ends worker processes with it."""
    for s in (signal.SIGINT, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Sequential, complete batches for feature extraction."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
