"""The dataset contract: items are (uint8 CHW tensor with 3 channels, int label; -1 when unlabeled)."""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized

import torch
from torch import Tensor
from torch.utils.data import Dataset

Transform = Callable[[Tensor], object]


class TensorImageDataset(Dataset):
    """Images held in memory as one uint8 tensor (N, C, H, W); C=1 is repeated to 3 channels.

    Without a transform, `__getitems__` slices a whole batch at once, so the DataLoader pays
    one indexing call per batch instead of one per image.
    """

    in_memory = True

    def __init__(self, images: Tensor, targets: Tensor, num_classes: int, transform: Transform | None = None,
                 classes: Sequence[str] | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 (N, 1|3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.targets = targets.long()
        self.num_classes = num_classes
        self.transform = transform
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]

    def __len__(self) -> int:
        return self.images.shape[0]

    def _rgb(self, x: Tensor) -> Tensor:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]) if x.shape[-3] == 1 else x

    def __getitem__(self, index: int) -> tuple[object, int]:
        x = self._rgb(self.images[index])
        if self.transform is not None:
            return self.transform(x.contiguous()), int(self.targets[index])
        return x.contiguous(), int(self.targets[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[object, int]] | tuple[Tensor, Tensor]:
        if self.transform is not None:
            return [self[i] for i in indices]
        idx = torch.as_tensor(indices)
        return _Batch((self._rgb(self.images[idx]).contiguous(), self.targets[idx]))

    def subset(self, n: int | None, seed: int = 0) -> TensorImageDataset:
        """`n` images drawn per class in proportion, seeded (all when n is None): `stratified_indices`."""
        if n is None or n >= len(self):
            return self
        from sslkit.data.subset import stratified_indices

        idx = stratified_indices(self.targets, n, seed)
        return TensorImageDataset(self.images[idx], self.targets[idx], self.num_classes, self.transform,
                                  self.classes)

    def with_transform(self, transform: Transform | None) -> TensorImageDataset:
        return TensorImageDataset(self.images, self.targets, self.num_classes, transform, self.classes)


class _Batch(tuple):
    """A pre-collated (images, targets) batch; `collate` passes it through untouched."""


def num_images(dataset: Dataset) -> int:
    """len(dataset): every sslkit dataset has one (torch's Dataset type does not declare it)."""
    if not isinstance(dataset, Sized):
        raise TypeError(f"{type(dataset).__name__} has no length")
    return len(dataset)


def collate(batch: object) -> object:
    """Default collation, except for batches `__getitems__` already stacked."""
    if isinstance(batch, _Batch):
        return tuple(batch)
    return torch.utils.data.default_collate(batch)  # type: ignore[arg-type]
