"""The IDX reader (the default dataset's format) against files built byte by byte."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from sslkit.data import build_dataset
from sslkit.data.idx import read_idx
from sslkit.errors import DataError
from tests.idx_files import idx_bytes, write_idx_dataset


def test_read_idx_is_pixel_exact_gzipped_or_not(tmp_path):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5) * 7  # distinct values, row-major
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(array)))
    (tmp_path / "a").write_bytes(idx_bytes(array))
    for name in ("a.gz", "a"):
        got = read_idx(tmp_path / name)
        assert got.shape == (2, 3, 5) and got.dtype == np.uint8
        assert np.array_equal(got, array)
    assert read_idx(tmp_path / "a")[1, 2, 4] == (2 * 3 * 5 - 1) * 7 % 256  # last pixel: no offset error


def test_dataset_images_and_labels_match_the_files(tmp_path):
    written = write_idx_dataset(tmp_path, n_train=12, n_test=5)
    data = {"name": "fashion_mnist", "root": str(tmp_path)}
    for split, key in (("train", "train"), ("pretrain", "train"), ("test", "test")):
        ds = build_dataset(data, split)
        images, labels = written[key]
        assert len(ds) == len(images)
        for i in (0, len(images) - 1):
            x, y = ds[i]
            assert x.dtype == torch.uint8 and x.shape == (3, 28, 28)
            assert all(np.array_equal(x[c].numpy(), images[i]) for c in range(3))  # grey repeated to RGB
            assert y == int(labels[i])


def test_a_file_with_a_bad_magic_number_is_a_data_error(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x08\x01" + b"\x00" * 8))
    with pytest.raises(DataError, match="not a valid IDX file"):
        read_idx(tmp_path / "bad.gz")
