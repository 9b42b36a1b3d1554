"""CIFAR-10/100 loader: pickle batches written in the real format, read back pixel for pixel."""

from __future__ import annotations

import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sslkit.data import build_dataset
from sslkit.data import cifar as cifar_mod
from sslkit.data.cifar import load_cifar
from sslkit.errors import DataError

PER_BATCH = 3


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("SSLKIT_DATA", raising=False)


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def make_cifar10(base: Path) -> dict[str, np.ndarray]:
    """cifar-10-batches-py/ under `base` with 5 train batches and a test batch of PER_BATCH images each."""
    folder = base / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    expected = {"train_x": [], "train_y": []}
    for i in range(1, 6):
        imgs = _images(PER_BATCH, i)
        labels = [(i * PER_BATCH + k) % 10 for k in range(PER_BATCH)]
        _dump(folder / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": labels,
                                           b"data": imgs.reshape(PER_BATCH, 3072), b"filenames": []})
        expected["train_x"].append(imgs)
        expected["train_y"] += labels
    test = _images(PER_BATCH, 99)
    test[0] = 0
    test[0, 0, 0, 1] = 200  # red at row 0, column 1: the channel-major, row-major layout
    test[0, 2, 31, 0] = 77  # blue at the bottom-left corner
    _dump(folder / "test_batch", {b"labels": [9, 0, 5], b"data": test.reshape(PER_BATCH, 3072)})
    _dump(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)],
                                    b"num_cases_per_batch": PER_BATCH})
    return {"train_x": np.concatenate(expected["train_x"]), "train_y": np.array(expected["train_y"]),
            "test_x": test, "test_y": np.array([9, 0, 5])}


def make_cifar100(base: Path) -> dict[str, np.ndarray]:
    folder = base / "cifar-100-python"
    folder.mkdir(parents=True)
    train, test = _images(4, 1), _images(2, 2)
    _dump(folder / "train", {b"fine_labels": [0, 99, 42, 7], b"coarse_labels": [0, 19, 3, 1],
                             b"data": train.reshape(4, 3072)})
    _dump(folder / "test", {b"fine_labels": [98, 1], b"coarse_labels": [2, 2],
                            b"data": test.reshape(2, 3072)})
    _dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"k{i}".encode() for i in range(20)]})
    return {"train_x": train, "train_y": np.array([0, 99, 42, 7]),
            "test_x": test, "test_y": np.array([98, 1])}


def test_cifar10_train_concatenates_the_five_batches(tmp_path):
    exp = make_cifar10(tmp_path)
    ds = load_cifar("cifar10", str(tmp_path), "train", False)
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (5 * PER_BATCH, 3, 32, 32)
    assert torch.equal(ds.images, torch.from_numpy(exp["train_x"]))
    assert ds.targets.dtype == torch.long and ds.targets.tolist() == exp["train_y"].tolist()
    assert ds.num_classes == 10 and ds.classes == [f"c{i}" for i in range(10)]
    x, y = ds[4]
    assert torch.equal(x, torch.from_numpy(exp["train_x"][4])) and y == exp["train_y"][4]


def test_cifar10_test_split_pixel_layout(tmp_path):
    exp = make_cifar10(tmp_path)
    ds = load_cifar("cifar10", str(tmp_path), "test", False)
    assert len(ds) == PER_BATCH and ds.targets.tolist() == [9, 0, 5]
    img = ds.images[0]
    assert img[0, 0, 1] == 200 and img[0, 1, 0] == 0  # row 0, column 1 (not transposed)
    assert img[2, 31, 0] == 77 and img[2, 0, 31] == 0
    assert int(img.sum()) == 277
    assert torch.equal(ds.images, torch.from_numpy(exp["test_x"]))


def test_root_may_be_the_extracted_folder_itself(tmp_path):
    make_cifar10(tmp_path)
    ds = load_cifar("cifar10", str(tmp_path / "cifar-10-batches-py"), "test", False)
    assert len(ds) == PER_BATCH


def test_cifar100_fine_labels_and_names(tmp_path):
    exp = make_cifar100(tmp_path)
    train = load_cifar("cifar100", str(tmp_path), "train", False)
    test = load_cifar("cifar100", str(tmp_path), "test", False)
    assert torch.equal(train.images, torch.from_numpy(exp["train_x"]))
    assert train.targets.tolist() == [0, 99, 42, 7] and test.targets.tolist() == [98, 1]
    assert torch.equal(test.images, torch.from_numpy(exp["test_x"]))
    assert train.num_classes == 100 and len(train.classes) == 100
    assert train.classes[0] == "f0" and train.classes[99] == "f99"


@pytest.mark.parametrize("sub", ["", "cifar10"])
def test_sslkit_data_env_var(tmp_path, monkeypatch, sub):
    make_cifar10(tmp_path / sub if sub else tmp_path)
    monkeypatch.setenv("SSLKIT_DATA", str(tmp_path))
    ds = load_cifar("cifar10", None, "test", False)
    assert ds.targets.tolist() == [9, 0, 5]


def test_data_root_wins_over_env(tmp_path, monkeypatch):
    make_cifar10(tmp_path / "a")
    monkeypatch.setenv("SSLKIT_DATA", str(tmp_path / "elsewhere"))
    assert len(load_cifar("cifar10", str(tmp_path / "a"), "test", False)) == PER_BATCH


def test_missing_dataset_names_every_path_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLKIT_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as info:
        load_cifar("cifar100", str(tmp_path / "root"), "train", False)
    msg = str(info.value)
    assert "\n" not in msg
    env = tmp_path / "env"
    for p in (tmp_path / "root" / "cifar-100-python", tmp_path / "root", env / "cifar-100-python", env,
              env / "cifar100"):
        assert str(p) in msg
    assert "data.download=true" in msg and "data.root" in msg and "cifar-100-python.tar.gz" in msg


def test_missing_without_any_root(tmp_path):
    with pytest.raises(DataError, match="cifar10 not found.*data.download=true"):
        load_cifar("cifar10", None, "train", False)


def test_corrupt_pickle_names_the_file(tmp_path):
    make_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"\x80\x02}q\x00garbage\nmore garbage")
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", str(tmp_path), "train", False)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    # the test split does not read the corrupt batch
    assert len(load_cifar("cifar10", str(tmp_path), "test", False)) == PER_BATCH


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_pickle_cannot_run_code(tmp_path):
    make_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    _dump(bad, {b"labels": [1], b"data": _Evil(tmp_path / "pwned")})
    with pytest.raises(DataError, match="refusing to load global .*mkdir"):
        load_cifar("cifar10", str(tmp_path), "test", False)
    assert not (tmp_path / "pwned").exists()


def _py2_str(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)


def _py2_pickle(images: np.ndarray, labels: list[int]) -> bytes:
    """A python-2 cPickle (protocol 2) batch, opcode for opcode like the official files: str, not bytes."""
    rows = images.reshape(len(images), 3072)
    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    shape = b"(" + b"".join(b"M" + struct.pack("<H", d) for d in rows.shape) + b"t"
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
             + b"(K\x01" + shape + dtype + b"\x89" + _py2_str(rows.tobytes()) + b"tb")
    label_list = b"]" + b"".join(b"K" + bytes([y]) + b"a" for y in labels)
    return b"\x80\x02}(" + _py2_str(b"data") + array + _py2_str(b"labels") + label_list + b"u."


def test_python2_pickle_like_the_official_files(tmp_path):
    make_cifar10(tmp_path)
    images = _images(2, 5)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(_py2_pickle(images, [3, 8]))
    ds = load_cifar("cifar10", str(tmp_path), "test", False)
    assert torch.equal(ds.images, torch.from_numpy(images)) and ds.targets.tolist() == [3, 8]


def test_wrong_shape_batch_is_a_data_error(tmp_path):
    make_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    _dump(bad, {b"labels": [1], b"data": np.zeros((1, 100), np.uint8)})
    with pytest.raises(DataError, match="test_batch"):
        load_cifar("cifar10", str(tmp_path), "test", False)


def test_download_extracts_the_archive(tmp_path, monkeypatch):
    """data.download=true, served from a local tar.gz through a file:// URL."""
    src = tmp_path / "src"
    make_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setitem(cifar_mod.SOURCES["cifar10"], "url", archive.as_uri())
    root = tmp_path / "root"
    ds = load_cifar("cifar10", str(root), "test", True)
    assert ds.targets.tolist() == [9, 0, 5]
    assert (root / "cifar-10-batches-py" / "batches.meta").is_file()
    assert [p.name for p in root.iterdir()] == ["cifar-10-batches-py"]  # no archive or temp dir left


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_build_dataset(tmp_path, name):
    (make_cifar10 if name == "cifar10" else make_cifar100)(tmp_path)
    cfg = {"name": name, "root": str(tmp_path), "download": False, "subset": 2}
    pre = build_dataset(cfg, "pretrain")
    train = build_dataset(cfg, "train")
    test = build_dataset(cfg, "test")
    assert len(pre) == 2 and pre.in_memory
    assert len(train) == (5 * PER_BATCH if name == "cifar10" else 4)
    assert len(test) == (PER_BATCH if name == "cifar10" else 2)
    kept = [i for i in range(len(train)) if any(torch.equal(train.images[i], x) for x in pre.images)]
    assert len(kept) == 2 and torch.equal(pre.targets, train.targets[kept])  # 2 of the training images
    assert train.num_classes == (10 if name == "cifar10" else 100)
