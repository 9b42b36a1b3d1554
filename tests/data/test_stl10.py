"""STL-10 loader: column-major binaries written in the real format, so the transpose is checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sslkit.data import build_dataset
from sslkit.data.stl10 import load_stl10
from sslkit.errors import ConfigError, DataError

S = 96


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("SSLKIT_DATA", raising=False)


def _write_x(path: Path, images: np.ndarray) -> None:
    """Store (N, 3, H, W) images the way STL-10 does: each channel column by column."""
    path.write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, S, S), dtype=np.uint8)


def make_stl10(base: Path, names: bool = True) -> dict[str, np.ndarray]:
    folder = base / "stl10_binary"
    folder.mkdir(parents=True)
    train, test, unlabeled = _images(3, 1), _images(2, 2), _images(4, 3)
    train[0] = 0
    train[0, :, 0, :] = 255  # image 0: a white top row only
    train[0, 1, 5, 70] = 9  # one green pixel at row 5, column 70
    _write_x(folder / "train_X.bin", train)
    _write_x(folder / "test_X.bin", test)
    _write_x(folder / "unlabeled_X.bin", unlabeled)
    (folder / "train_y.bin").write_bytes(bytes([1, 10, 4]))
    (folder / "test_y.bin").write_bytes(bytes([2, 7]))
    if names:
        (folder / "class_names.txt").write_text("\n".join(f"n{i}" for i in range(10)) + "\n")
    return {"train": train, "test": test, "unlabeled": unlabeled}


def test_train_orientation_and_labels(tmp_path):
    exp = make_stl10(tmp_path)
    ds = load_stl10(str(tmp_path), "train", False)
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (3, 3, S, S)
    assert ds.images.is_contiguous()
    first = ds.images[0]
    assert bool((first[:, 0, :] == 255).all())  # the top row, not the left column
    assert int(first[:, 1:, 0].sum()) == 0
    assert first[1, 5, 70] == 9 and first[1, 70, 5] == 0
    assert torch.equal(ds.images, torch.from_numpy(exp["train"]))
    assert ds.targets.tolist() == [0, 9, 3]  # stored 1..10
    assert ds.num_classes == 10 and ds.classes == [f"n{i}" for i in range(10)]


def test_test_split(tmp_path):
    exp = make_stl10(tmp_path)
    ds = load_stl10(str(tmp_path), "test", False)
    assert torch.equal(ds.images, torch.from_numpy(exp["test"]))
    assert ds.targets.tolist() == [1, 6]


def test_unlabeled_split_gets_minus_one(tmp_path):
    exp = make_stl10(tmp_path)
    ds = load_stl10(str(tmp_path), "unlabeled", False)
    assert torch.equal(ds.images, torch.from_numpy(exp["unlabeled"]))
    assert ds.targets.tolist() == [-1] * 4


def test_train_plus_unlabeled_concatenates(tmp_path):
    exp = make_stl10(tmp_path)
    ds = load_stl10(str(tmp_path), "train+unlabeled", False)
    assert len(ds) == 7
    assert torch.equal(ds.images, torch.from_numpy(np.concatenate([exp["train"], exp["unlabeled"]])))
    assert ds.targets.tolist() == [0, 9, 3, -1, -1, -1, -1]
    # 4 of 7: 3 labeled + 4 unlabeled -> quotas 1.71 and 2.29 -> 2 labeled, 2 unlabeled (largest remainder)
    assert sorted(ds.subset(4).targets.tolist()).count(-1) == 2


def test_default_class_names_without_the_file(tmp_path):
    make_stl10(tmp_path, names=False)
    ds = load_stl10(str(tmp_path), "test", False)
    assert ds.classes[0] == "airplane" and ds.classes[-1] == "truck"


def test_only_the_split_files_are_required(tmp_path):
    make_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    assert len(load_stl10(str(tmp_path), "train", False)) == 3
    with pytest.raises(DataError, match="stl10 not found"):
        load_stl10(str(tmp_path), "train+unlabeled", False)


@pytest.mark.parametrize("sub", ["", "stl10"])
def test_sslkit_data_env_var(tmp_path, monkeypatch, sub):
    make_stl10(tmp_path / sub if sub else tmp_path)
    monkeypatch.setenv("SSLKIT_DATA", str(tmp_path))
    assert load_stl10(None, "test", False).targets.tolist() == [1, 6]


def test_root_may_be_the_extracted_folder_itself(tmp_path):
    make_stl10(tmp_path)
    assert len(load_stl10(str(tmp_path / "stl10_binary"), "unlabeled", False)) == 4


def test_missing_dataset_names_every_path_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLKIT_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as info:
        load_stl10(str(tmp_path / "root"), "train", False)
    msg = str(info.value)
    assert "\n" not in msg
    env = tmp_path / "env"
    for p in (tmp_path / "root" / "stl10_binary", tmp_path / "root", env, env / "stl10"):
        assert str(p) in msg
    assert "data.download=true" in msg and "stl10_binary.tar.gz" in msg


def test_truncated_images_file(tmp_path):
    make_stl10(tmp_path)
    bad = tmp_path / "stl10_binary" / "test_X.bin"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DataError) as info:
        load_stl10(str(tmp_path), "test", False)
    assert str(bad) in str(info.value) and "3x96x96" in str(info.value) and "\n" not in str(info.value)


def test_label_count_mismatch(tmp_path):
    make_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "train_y.bin").write_bytes(bytes([1, 2]))
    with pytest.raises(DataError, match="train_y.bin holds 2 labels"):
        load_stl10(str(tmp_path), "train", False)


def test_label_out_of_range(tmp_path):
    make_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(bytes([0, 3]))
    with pytest.raises(DataError, match="outside 1..10"):
        load_stl10(str(tmp_path), "test", False)


def test_unknown_split(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'unlabeled'"):
        load_stl10(str(tmp_path), "unlabelled", False)


def test_build_dataset(tmp_path):
    exp = make_stl10(tmp_path)
    cfg = {"name": "stl10", "root": str(tmp_path), "download": False, "subset": None}
    pre = build_dataset(cfg, "pretrain")
    assert len(pre) == 7 and pre.targets.tolist()[3:] == [-1] * 4
    assert len(build_dataset({**cfg, "train_split": "unlabeled"}, "pretrain")) == 4
    assert len(build_dataset({**cfg, "subset": 2}, "pretrain")) == 2
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.targets.tolist() == [0, 9, 3] and test.targets.tolist() == [1, 6]
    x, y = test[1]
    assert torch.equal(x, torch.from_numpy(exp["test"][1])) and y == 6
