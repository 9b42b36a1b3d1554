"""Feature extraction: the in-memory fast path equals the per-image DataLoader path; the cache is
keyed by checkpoint identity and data settings."""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from sslkit.data.base import TensorImageDataset
from sslkit.evaluation import features as F
from tests.conftest import TinyEncoder

DATA = {"name": "toy", "root": None, "image_size": 32, "mean": [0.3, 0.4, 0.5], "std": [0.2, 0.25, 0.3]}


class DiskLike(Dataset):
    """The same images served one by one through a transform, like a dataset read from disk."""

    in_memory = False

    def __init__(self, base: TensorImageDataset, transform=None) -> None:
        self.base, self.transform = base, transform
        self.targets, self.num_classes = base.targets, base.num_classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return (self.transform(x) if self.transform else x), y

    def with_transform(self, transform):
        return DiskLike(self.base, transform)


def toy(n: int = 40, channels: int = 1) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, 28, 28), generator=g, dtype=torch.uint8)
    return TensorImageDataset(images, torch.arange(n) % 4, 4)


def test_in_memory_batches_equal_the_per_image_loader_path():
    torch.manual_seed(0)
    encoder = TinyEncoder().train()
    for channels in (1, 3):
        ds = toy(channels=channels)
        fast = F.backbone_features(encoder, ds, DATA, torch.device("cpu"), batch_size=16)
        slow = F.backbone_features(encoder, DiskLike(ds), DATA, torch.device("cpu"), batch_size=7)
        assert fast.shape == (40, 16)
        # torchvision resizes uint8 images in uint8 (one rounding step, 1/255), the batch path in float
        torch.testing.assert_close(fast, slow, rtol=0.02, atol=5e-3)
        assert (fast - slow).abs().mean() < 1e-3
    assert encoder.training  # mode restored


def test_features_use_eval_mode_batch_norm():
    torch.manual_seed(0)
    encoder = TinyEncoder()
    ds = toy()
    one_by_one = F.backbone_features(encoder, ds, DATA, torch.device("cpu"), batch_size=1)
    batched = F.backbone_features(encoder, ds, DATA, torch.device("cpu"), batch_size=40)
    torch.testing.assert_close(one_by_one, batched)  # running stats, not batch stats


def test_pixel_features_resize_and_flatten():
    ds = toy(5)
    feats = F.pixel_features(ds, 28)
    assert feats.shape == (5, 784)
    torch.testing.assert_close(feats, ds.images.flatten(1).float() / 255)
    assert F.pixel_features(ds, 32).shape == (5, 1024)


def test_cache_key_follows_checkpoint_identity_and_data(tmp_path):
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"x" * 10)
    key = F.cache_key("backbone", "train", 100, DATA, ckpt)
    assert key == F.cache_key("backbone", "train", 100, dict(DATA), ckpt)
    assert key != F.cache_key("backbone", "test", 100, DATA, ckpt)
    assert key != F.cache_key("backbone", "train", 200, DATA, ckpt)
    assert key != F.cache_key("backbone", "train", 100, {**DATA, "image_size": 64}, ckpt)
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a retrained checkpoint
    assert key != F.cache_key("backbone", "train", 100, DATA, ckpt)
    assert F.cache_key("pixels", "train", 100, DATA, None).startswith("pixels-train-")


def test_load_features_writes_then_reuses_the_cache(tmp_path, monkeypatch):
    ds = toy(12)
    calls = []

    def fake_build(data, split, subset):
        calls.append(split)
        return ds.subset(subset)

    monkeypatch.setattr("sslkit.data.build_dataset", fake_build)
    first = F.load_features("pixels", "train", 10, DATA, cache_dir=tmp_path)
    assert not first.cached and first.path is not None and first.path.is_file()
    second = F.load_features("pixels", "train", 10, DATA, cache_dir=tmp_path)
    assert second.cached and calls == ["train"]
    assert torch.equal(first.feats, second.feats) and torch.equal(first.labels, second.labels)
    assert second.num_classes == 4 and len(second) == 10
    first.path.write_bytes(b"damaged")  # a torn cache file is recomputed, not fatal
    third = F.load_features("pixels", "train", 10, DATA, cache_dir=tmp_path)
    assert not third.cached and torch.equal(third.feats, first.feats)
