"""Image-folder loader: PNG/JPEG/BMP files written with PIL, both layouts, errors and worker loading."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sslkit.data import build_dataset
from sslkit.data.base import collate
from sslkit.data.imagefolder import ImageFolderDataset, load_imagefolder
from sslkit.errors import DataError

SIZE = 8
COLORS = {"cat": (255, 0, 0), "dog": (0, 0, 255)}


def _save(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (SIZE, SIZE),
          fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, fmt)


def make_labeled(root: Path, eval_dir: str = "val") -> None:
    """train/{cat,dog}/ and <eval_dir>/{cat,dog}/: solid-color PNGs, plus one JPEG and one BMP."""
    for split in ("train", eval_dir):
        _save(root / split / "cat" / "a.png", COLORS["cat"])
        _save(root / split / "dog" / "b.png", COLORS["dog"])
    _save(root / "train" / "cat" / "c.png", (0, 255, 0))
    _save(root / "train" / "dog" / "sub" / "d.jpg", COLORS["dog"], fmt="JPEG")
    _save(root / "train" / "dog" / "e.BMP", (10, 20, 30), fmt="BMP")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    (root / "train" / ".hidden").mkdir()  # not a class


def _pixel(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0].tolist()


def test_labeled_train_split(tmp_path):
    make_labeled(tmp_path)
    ds = load_imagefolder(str(tmp_path), "train", SIZE)
    assert isinstance(ds, ImageFolderDataset) and ds.in_memory is False
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert ds.targets.dtype == torch.long and ds.targets.tolist() == [0, 0, 1, 1, 1]
    assert [Path(p).name for p in ds.paths] == ["a.png", "c.png", "b.png", "e.BMP", "d.jpg"]
    x, y = ds[0]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, SIZE, SIZE) and y == 0
    assert bool((x == torch.tensor(COLORS["cat"], dtype=torch.uint8).view(3, 1, 1)).all())
    assert _pixel(ds[1][0]) == [0, 255, 0]
    assert _pixel(ds[3][0]) == [10, 20, 30]  # BMP, decoded through PIL
    jpg, label = ds[4]
    assert label == 1 and np.allclose(_pixel(jpg), COLORS["dog"], atol=8)


def test_test_split_uses_val_then_test(tmp_path):
    make_labeled(tmp_path, eval_dir="test")
    ds = load_imagefolder(str(tmp_path), "test", SIZE)
    assert ds.targets.tolist() == [0, 1] and ds.classes == ["cat", "dog"]
    _save(tmp_path / "val" / "dog" / "z.png", COLORS["dog"])  # val/ wins when both exist
    ds = load_imagefolder(str(tmp_path), "test", SIZE)
    assert ds.targets.tolist() == [1] and ds.num_classes == 2


def test_val_class_must_exist_in_train(tmp_path):
    make_labeled(tmp_path)
    _save(tmp_path / "val" / "bird" / "x.png", (1, 2, 3))
    with pytest.raises(DataError, match="bird"):
        load_imagefolder(str(tmp_path), "test", SIZE)


def test_pretrain_uses_train_folder(tmp_path):
    make_labeled(tmp_path)
    (tmp_path / "stray.png").write_bytes(b"ignored: outside train/")
    ds = load_imagefolder(str(tmp_path), "pretrain", SIZE)
    assert len(ds) == 5 and ds.targets.tolist() == [0, 0, 1, 1, 1]


def test_resize_and_center_crop_without_transform(tmp_path):
    img = np.zeros((8, 24, 3), np.uint8)  # 8 high, 24 wide: red left edge, green middle, blue right edge
    img[:, :4] = (255, 0, 0)
    img[:, 4:20] = (0, 255, 0)
    img[:, 20:] = (0, 0, 255)
    (tmp_path / "flat").mkdir()
    Image.fromarray(img).save(tmp_path / "flat" / "wide.png")
    ds = load_imagefolder(str(tmp_path / "flat"), "pretrain", 4)
    x, y = ds[0]
    assert tuple(x.shape) == (3, 4, 4) and y == -1
    assert bool((x[1] == 255).all()) and int(x[0].sum()) == int(x[2].sum()) == 0  # 4x12, then the center
    full, _ = ds.with_transform(lambda t: t)[0]
    assert tuple(full.shape) == (3, 8, 24) and torch.equal(full.permute(1, 2, 0), torch.from_numpy(img))


def test_flat_folder_is_unlabeled(tmp_path):
    _save(tmp_path / "b.png", (1, 1, 1))
    _save(tmp_path / "a" / "deep" / "c.webp", (2, 2, 2), fmt="WEBP")
    _save(tmp_path / "a.jpeg", (3, 3, 3), fmt="JPEG")
    ds = load_imagefolder(str(tmp_path), "pretrain", SIZE)
    rel = [Path(p).relative_to(tmp_path).as_posix() for p in ds.paths]
    assert rel == ["a.jpeg", "a/deep/c.webp", "b.png"]
    assert ds.targets.tolist() == [-1, -1, -1] and ds.num_classes == 0 and ds.classes == []
    for split in ("train", "test"):
        with pytest.raises(DataError, match="needs train/<class>/ and val/<class>/") as info:
            load_imagefolder(str(tmp_path), split, SIZE)
        assert "\n" not in str(info.value)


def test_subset_and_with_transform(tmp_path):
    make_labeled(tmp_path)
    ds = load_imagefolder(str(tmp_path), "train", SIZE)
    sub = ds.subset(2)  # one cat, one dog (stratified), in dataset order
    assert len(sub) == 2 and set(sub.paths) <= set(ds.paths) and sub.targets.tolist() == [0, 1]
    assert [_pixel(sub[i][0]) for i in range(2)] == [_pixel(ds[ds.paths.index(p)][0]) for p in sub.paths]
    assert ds.subset(None) is ds and len(ds.subset(100)) == 5 and len(ds) == 5
    t = ds.with_transform(lambda x: x.float() / 255)
    assert t.transform is not None and ds.transform is None
    x, y = t[2]
    assert x.dtype == torch.float32 and y == 1 and x[2, 0, 0] == 1.0
    with pytest.raises(IndexError):
        ds[5]
    assert _pixel(ds[-1][0]) == _pixel(ds[4][0])


def test_corrupt_image(tmp_path):
    make_labeled(tmp_path)
    bad = tmp_path / "train" / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    ds = load_imagefolder(str(tmp_path), "train", SIZE)
    i = ds.paths.index(str(bad))
    with pytest.raises(DataError) as info:
        ds[i]
    msg = str(info.value)
    assert msg.startswith(f"cannot decode image {bad}: ") and "\n" not in msg and ".cpp" not in msg
    bmp = tmp_path / "train" / "dog" / "e.BMP"
    bmp.write_bytes(b"BM garbage")
    with pytest.raises(DataError, match="cannot decode image .*e.BMP"):
        ds[ds.paths.index(str(bmp))]


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no images found under .*empty \(looked for \.jpg, .*\.png"):
        load_imagefolder(str(tmp_path / "empty"), "pretrain", SIZE)
    (tmp_path / "labeled" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found under .*train"):
        load_imagefolder(str(tmp_path / "labeled"), "train", SIZE)


def test_root_missing_or_unset(tmp_path):
    with pytest.raises(DataError, match="needs data.root"):
        load_imagefolder(None, "pretrain", SIZE)
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        load_imagefolder(str(tmp_path / "nope"), "pretrain", SIZE)


def test_train_without_classes_or_val(tmp_path):
    _save(tmp_path / "train" / "loose.png", (0, 0, 0))
    with pytest.raises(DataError, match="no class folders"):
        load_imagefolder(str(tmp_path), "train", SIZE)
    _save(tmp_path / "train" / "cat" / "x.png", (0, 0, 0))
    with pytest.raises(DataError, match="no val/"):
        load_imagefolder(str(tmp_path), "test", SIZE)


def test_dataloader_with_workers(tmp_path):
    make_labeled(tmp_path)
    for i in range(6):
        _save(tmp_path / "train" / "cat" / f"x{i}.png", (i, i, i), size=(12, 10))
    ds = load_imagefolder(str(tmp_path), "train", SIZE)
    assert len(pickle.loads(pickle.dumps(ds))) == len(ds) == 11
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    xs, ys = zip(*[(x, y) for x, y in loader], strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (11, 3, SIZE, SIZE) and x.dtype == torch.uint8
    assert y.tolist() == ds.targets.tolist()
    assert torch.equal(x[1], ds[1][0])


def test_build_dataset(tmp_path):
    make_labeled(tmp_path)
    cfg = {"name": "imagefolder", "root": str(tmp_path), "image_size": 6, "subset": 3}
    pre = build_dataset(cfg, "pretrain")
    assert isinstance(pre, ImageFolderDataset) and len(pre) == 3
    assert tuple(pre[0][0].shape) == (3, 6, 6)
    assert len(build_dataset(cfg, "train")) == 5
    test = build_dataset(cfg, "test")
    assert test.targets.tolist() == [0, 1] and test.classes == ["cat", "dog"]


def test_subsets_of_a_class_sorted_folder_are_stratified_and_seeded(tmp_path):
    """ImageFolder lists images class by class: the first N would be one class; a subset keeps the balance."""
    for c in range(4):
        for i in range(25):
            _save(tmp_path / "train" / f"class{c}" / f"{i:02d}.png", (c * 60, i * 10, 0))
            if i < 10:
                _save(tmp_path / "val" / f"class{c}" / f"{i:02d}.png", (c * 60, i * 10, 0))
    cfg = {"name": "imagefolder", "root": str(tmp_path), "image_size": SIZE, "subset": 20, "subset_seed": 0}
    pre = build_dataset(cfg, "pretrain")
    assert torch.bincount(pre.targets, minlength=4).tolist() == [5, 5, 5, 5]
    assert torch.bincount(build_dataset(cfg, "test", 8).targets, minlength=4).tolist() == [2, 2, 2, 2]
    again = build_dataset(cfg, "pretrain")
    other = build_dataset({**cfg, "subset_seed": 1}, "pretrain")
    assert again.paths == pre.paths and other.paths != pre.paths  # seeded: reproducible, seed-dependent
    assert sorted(pre.paths) == pre.paths  # dataset order kept
    full = build_dataset({**cfg, "subset": None}, "pretrain")
    assert pre.paths != full.paths[:20]  # not the first 20 (which are all class0)
