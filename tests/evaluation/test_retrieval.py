"""`sslkit eval retrieval`: the grid's neighbours are kNN's search's, on gray (Fashion-MNIST) and RGB
(image folder) data, trained and random-init encoders; unlabelled data is a one-line error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sslkit.config import as_dict
from sslkit.evaluation.context import load_trained
from sslkit.evaluation.features import load_features
from sslkit.evaluation.knn import knn_brute_force_torch, knn_predict, nearest_neighbours
from sslkit.evaluation.retrieval import choose_queries
from tests.conftest import needs_fashion
from tests.evaluation.pictures import assert_picture, has_colour

RED = (214, 39, 40)  # tab:red: frames and marks a neighbour of another class


def test_queries_go_round_robin_over_classes():
    labels = torch.tensor([2, 0, 0, 1, 2, 0, 1])
    assert choose_queries(labels, 5) == [1, 3, 0, 2, 6]  # first of classes 0, 1, 2, then the second ones
    assert choose_queries(labels, 100) == [1, 3, 0, 2, 6, 4, 5]


def test_nearest_neighbours_are_the_brute_force_top_k_and_feed_the_vote(monkeypatch):
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(300, 16, generator=g) * 3, torch.randn(20, 16, generator=g)
    labels = torch.randint(0, 4, (300,), generator=g)
    sims, idx = nearest_neighbours(train, test, 7)
    ref_sims, ref_idx = (F.normalize(test, dim=1) @ F.normalize(train, dim=1).t()).topk(7, dim=1)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(sims, ref_sims, rtol=1e-5, atol=1e-5)
    # the same search is what kNN classification votes over
    import sslkit.evaluation.knn as knn

    calls = []
    monkeypatch.setattr(knn, "nearest_neighbours", lambda *a: calls.append(a) or nearest_neighbours(*a))
    torch.testing.assert_close(knn_predict(train, labels, test, [7])[7],
                               knn_brute_force_torch(train, labels, test, [7])[7], rtol=1e-5, atol=0)
    assert len(calls) == 1 and calls[0][0] is train and calls[0][2] == 7


def _brute_neighbours(train, test, k):
    return (F.normalize(test.feats, dim=1) @ F.normalize(train.feats, dim=1).t()).topk(k, dim=1).indices


def _check_record(r, train_labels, test_labels, k):
    for name in ("trained", "random"):
        idx = torch.tensor(r["neighbours"][name])
        assert idx.shape == (len(r["queries"]), k)
        assert r["neighbour_labels"][name] == train_labels[idx].tolist()
    assert r["query_labels"] == test_labels[r["queries"]].tolist()


@needs_fashion
def test_grid_neighbours_equal_the_knn_search_on_fashion_mnist(trained_run, cli, tmp_path):
    res = cli("eval", "retrieval", f"checkpoint={trained_run}", "eval.train_subset=500", "eval.test_subset=100",
              "eval.queries=4", "eval.neighbours=5", f"out={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1].startswith("retrieval precision@5=")
    r = json.loads((tmp_path / "retrieval.json").read_text())
    trained = load_trained(trained_run)
    data = as_dict(trained.config.data)
    feats = {s: load_features("backbone", s, n, data, backbone=trained.backbone, checkpoint=trained.file,
                              cache_dir=tmp_path / "cache") for s, n in (("train", 500), ("test", 100))}
    assert feats["train"].cached and feats["test"].cached  # the features the grid was drawn from
    ref = _brute_neighbours(feats["train"], feats["test"], 5)[r["queries"]]
    assert r["neighbours"]["trained"] == ref.tolist()
    assert r["queries"] == [int(torch.nonzero(feats["test"].labels == c)[0]) for c in range(4)]
    _check_record(r, feats["train"].labels, feats["test"].labels, 5)
    assert r["neighbours"]["random"] != r["neighbours"]["trained"]
    wrong = sum(a != b for q, row in zip(r["query_labels"], r["neighbour_labels"]["trained"], strict=True)
                for a, b in zip([q] * 5, row, strict=True))
    px = assert_picture(tmp_path / "retrieval.png")
    assert px.shape[1] > 2 * px.shape[0]  # two panels side by side
    assert has_colour(px, RED) == (wrong > 0 or r["precision_at_5"]["random"] < 100)


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def _folder(root, labelled=True):
    rng = np.random.default_rng(0)
    splits = {"train": 8, "val": 3} if labelled else {"": 12}
    for split, n in splits.items():
        for name, rgb in COLOURS.items():
            d = root / split / name if labelled else root
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = np.clip(np.array(rgb) + rng.integers(-25, 25, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{name}{i}.png")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A 2-step MoCo v2 run on a labelled RGB image folder (3 colour classes)."""
    from sslkit.app.train import train
    from sslkit.config import compose

    root = tmp_path_factory.mktemp("folder")
    _folder(root / "images")
    torch.set_num_threads(1)
    cfg = compose(["data=imagefolder", f"data.root={root / 'images'}", "data.image_size=32", "data.batch_size=8",
                   "data.num_workers=0", "method.queue_size=16", "head.hidden_dim=32", "trainer.max_steps=2",
                   "trainer.progress=none", f"out={root / 'run'}"])
    return train(cfg), root


@pytest.mark.slow
def test_retrieval_and_embedding_on_an_rgb_image_folder(folder_run, tmp_path):
    from sslkit.app.evaluate import run_evaluation

    run, _ = folder_run
    r = run_evaluation("retrieval", [f"checkpoint={run}", "eval.neighbours=4", "eval.queries=3", f"out={tmp_path}"])
    assert r["train_size"] == 24 and r["test_size"] == 9 and r["classes"] == ["blue", "green", "red"]
    trained = load_trained(run)
    data = as_dict(trained.config.data)
    train = load_features("backbone", "train", 10000, data, backbone=trained.backbone, checkpoint=trained.file,
                          cache_dir=tmp_path / "cache")
    test = load_features("backbone", "test", 2000, data, backbone=trained.backbone, checkpoint=trained.file,
                         cache_dir=tmp_path / "cache")
    assert train.cached and test.cached
    assert r["neighbours"]["trained"] == _brute_neighbours(train, test, 4)[r["queries"]].tolist()
    _check_record(r, train.labels, test.labels, 4)
    px = assert_picture(tmp_path / "retrieval.png")
    assert has_colour(px, COLOURS["green"], tol=30)  # the images are drawn in colour

    e = run_evaluation("embedding", [f"checkpoint={run}", f"out={tmp_path}"])
    assert e["points"] == 9
    npz = np.load(tmp_path / "embedding.npz")
    assert npz["xy"].shape == (9, 2) and npz["labels"].tolist() == test.labels.tolist()
    assert_picture(tmp_path / "embedding.png", (720, 540))


@needs_fashion
@pytest.mark.parametrize("evaluation", ["retrieval", "embedding"])
def test_unlabelled_folder_is_a_one_line_error(trained_run, tmp_path, capsys, evaluation):
    from sslkit.app.cli import main

    _folder(tmp_path / "flat", labelled=False)
    rc = main(["eval", evaluation, f"checkpoint={trained_run}", "data=imagefolder", f"data.root={tmp_path / 'flat'}",
               f"out={tmp_path / 'out'}"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslkit: error: ") and "no train/ folder" in err[0]
    assert not (tmp_path / "out" / f"{evaluation}.png").exists()
