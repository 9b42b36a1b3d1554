"""`sslkit eval embedding`: t-SNE separates separable classes, the map, coordinates and projector files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from matplotlib import colormaps
from sklearn.neighbors import NearestNeighbors

from sslkit.evaluation.embedding import plot_map, save_coordinates, tsne_2d
from tests.conftest import needs_fashion
from tests.evaluation.pictures import assert_picture, has_colour


def _blobs(n_per=40, classes=3, dim=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (classes, dim))
    x = np.concatenate([c + rng.normal(0, 1, (n_per, dim)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(classes), n_per)


def test_tsne_keeps_separable_classes_apart():
    x, labels = _blobs()
    xy = tsne_2d(x, perplexity=30.0, pca_dim=10, seed=0)
    assert xy.shape == (120, 2) and np.isfinite(xy).all()
    idx = NearestNeighbors(n_neighbors=6).fit(xy).kneighbors(xy, return_distance=False)[:, 1:]
    assert (labels[idx] == labels[:, None]).mean() > 0.95
    assert tsne_2d(x[:5], perplexity=30.0, pca_dim=None).shape == (5, 2)  # perplexity capped below N


def test_map_has_each_class_colour_and_coordinates_round_trip(tmp_path):
    x, labels = _blobs(classes=4)
    xy = np.random.default_rng(1).normal(size=(len(x), 2)).astype(np.float32)
    names = ["cat", "dog", "bird", "fish"]
    px = assert_picture(plot_map(xy, labels, names, "test map", tmp_path / "map.png"), (720, 540))
    for i in range(4):  # dots are drawn at alpha 0.8 over white
        rgb = tuple(int(0.8 * 255 * c + 0.2 * 255) for c in colormaps["tab10"](i)[:3])
        assert has_colour(px, rgb, tol=12)
    assert not has_colour(px, tuple(int(0.8 * 255 * c + 0.2 * 255) for c in colormaps["tab10"](4)[:3]), tol=12)
    npz_path, csv_path = save_coordinates(xy, labels, names, tmp_path)
    npz = np.load(npz_path)
    assert np.array_equal(npz["xy"], xy) and np.array_equal(npz["labels"], labels)
    assert npz["classes"].tolist() == names
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == len(xy) and rows[50]["class"] == names[labels[50]]
    assert abs(float(rows[50]["x"]) - xy[50, 0]) < 1e-4


@pytest.mark.slow  # a CLI subprocess run of ~15 s: make test-slow
@needs_fashion
def test_embedding_command_writes_map_coordinates_and_projector(trained_run, cli, tmp_path):
    res = cli("eval", "embedding", f"checkpoint={trained_run}", "eval.test_subset=150", "eval.tensorboard=true",
              f"out={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1].startswith("embedding tsne of 150 test images")
    r = json.loads((tmp_path / "embedding.json").read_text())
    assert r["points"] == 150 and r["reducer"] == "tsne"
    assert_picture(tmp_path / "embedding.png", (720, 540))
    from sslkit.data import build_dataset

    ds = build_dataset({"name": "fashion_mnist", "root": None}, "test", 150)
    npz = np.load(tmp_path / "embedding.npz")
    assert npz["xy"].shape == (150, 2) and npz["labels"].tolist() == ds.targets.tolist()
    assert npz["classes"].tolist() == ds.classes
    # TensorBoard projector: config, a class-name label per point, the sprite and the tensor
    proj = tmp_path / "projector"
    config = next(proj.rglob("projector_config.pbtxt")).read_text()
    assert "sprite" in config and "metadata.tsv" in config
    meta = next(proj.rglob("metadata.tsv")).read_text().splitlines()
    assert meta == [ds.classes[int(c)] for c in ds.targets]
    sprite = next(proj.rglob("sprite.png"))
    assert_picture(sprite, (13 * 28, 13 * 28))  # ceil(sqrt(150)) = 13 images a side, 28 px each
    tensors = next(proj.rglob("tensors.tsv")).read_text().splitlines()
    assert len(tensors) == 150 and len(tensors[0].split("\t")) == 512


def test_umap_without_umap_learn_is_a_one_line_error(monkeypatch):
    import sys

    import pytest

    from sslkit.errors import ConfigError
    from sslkit.evaluation.embedding import umap_2d

    monkeypatch.setitem(sys.modules, "umap", None)  # as where umap-learn is not installed
    with pytest.raises(ConfigError, match="pip install umap-learn"):
        umap_2d(np.zeros((10, 4), dtype=np.float32))
