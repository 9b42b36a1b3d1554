"""sslkit embed / index / search / dedupe (issue 21): embeddings equal `sslkit eval knn`'s features, a
killed embed resumes to the same files, search returns the brute-force neighbours, dedupe finds the
planted copies; and the bad inputs are one line and exit 2."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sslkit.app.cli import main
from sslkit.data.imagefolder import load_imagefolder
from sslkit.evaluation.context import load_trained
from sslkit.evaluation.embed import MANIFEST, NPY, PARQUET, PATHS, embed_folder, embed_paths, encoder_of
from sslkit.evaluation.index import FLAT_MAX, build_index, choose_kind, normalized

from .embed_fixtures import make_checkpoint, write_images

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "c.pt")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class folders, a nested one, a loose file at the top, and one corrupt PNG."""
    root = tmp_path_factory.mktemp("images")
    write_images(root, {"cat": 6, "dog": 5, "birds/small": 3})
    write_images(root, {"": 1}, seed=3, corrupt=False)
    return root


@pytest.fixture(scope="module")
def indexed(ckpt: Path, folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder plus a planted duplicate (dog/copy.png = cat/0_1.png), embedded and indexed: <dir>/img, <dir>/e."""
    work = tmp_path_factory.mktemp("indexed")
    shutil.copytree(folder, work / "img")
    shutil.copy(work / "img" / "cat" / "0_1.png", work / "img" / "dog" / "copy.png")
    assert _embed(ckpt, work / "img", work / "e") == 0
    assert main(["index", f"embeddings={work / 'e'}"]) == 0
    return work


def _embed(ckpt: Path, root: Path, out: Path, *extra: str) -> int:
    return main(["embed", f"checkpoint={ckpt}", "data=imagefolder", f"data.root={root}", f"out={out}",
                 "data.batch_size=4", *extra])


def _one_line(capsys: pytest.CaptureFixture[str], *words: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    last = err[-1]
    assert last.startswith("sslkit: error: ") and "Traceback" not in "".join(err), err
    for w in words:
        assert w in last, last


def test_embed_writes_parquet_npy_paths_and_skips_the_corrupt_file(ckpt, folder, tmp_path, capsys):
    assert _embed(ckpt, folder, tmp_path / "e") == 0
    captured = capsys.readouterr()
    assert captured.err.count("skipping unreadable image") == 1 and "broken.png" in captured.err
    assert "embedded 15 images (64-d" in captured.out and "1 unreadable skipped" in captured.out
    table = pq.read_table(tmp_path / "e" / PARQUET)
    paths = (tmp_path / "e" / PATHS).read_text().splitlines()
    emb = np.load(tmp_path / "e" / NPY)
    assert table.column_names == ["path", "embedding", "label"]
    assert table.num_rows == len(paths) == emb.shape[0] == 15
    assert table.column("path").to_pylist() == paths and not any(p.endswith("broken.png") for p in paths)
    assert np.array_equal(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), emb)
    labels = dict(zip(paths, table.column("label").to_pylist(), strict=True))
    assert {labels[p] for p in paths if "/cat/" in p} == {"cat"}
    assert labels[str(folder / "birds/small/2_0.jpg")] == "birds"
    assert labels[str(folder / "0_0.jpg")] is None  # a loose file has no class
    manifest = json.loads((tmp_path / "e" / MANIFEST).read_text())
    assert manifest["complete"]
    assert [p for c in manifest["chunks"] for p in c["skipped"]] == [str(folder / "cat/broken.png")]
    assert not (tmp_path / "e" / ".chunks").exists()


def test_embeddings_equal_eval_knn_features(ckpt, tmp_path):
    """`sslkit eval knn` on root/train + root/val caches its training features: embed root/train, compare by path."""
    root = tmp_path / "data"
    write_images(root / "train", {"a": 5, "b": 4}, corrupt=False)
    write_images(root / "val", {"a": 2, "b": 2}, seed=1, corrupt=False)
    assert main(["eval", "knn", f"checkpoint={ckpt}", "data=imagefolder", f"data.root={root}", "eval.k=[3]",
                 "data.image_size=32",
                 f"out={tmp_path / 'eval'}", "eval.batch_size=5"]) == 0
    (cache,) = (tmp_path / "eval" / "cache").glob("backbone-train-*.pt")
    knn = torch.load(cache, weights_only=True)["feats"].numpy()
    knn_paths = load_imagefolder(str(root), "train", 32).paths
    result = embed_folder(encoder_of(load_trained(ckpt)), root / "train", tmp_path / "e", torch.device("cpu"),
                          batch_size=3, chunk_size=4)
    mine = dict(zip((tmp_path / "e" / PATHS).read_text().splitlines(), np.load(result.files["npy"]), strict=True))
    assert sorted(mine) == sorted(knn_paths)
    np.testing.assert_allclose(np.stack([mine[p] for p in knn_paths]), knn, rtol=1e-5, atol=1e-5)
    labels = pq.read_table(result.files["parquet"]).column("label").to_pylist()
    assert labels == ["a"] * 5 + ["b"] * 4


KILL_AFTER_CHUNK = """
import os, signal, sys
import sslkit.evaluation.embed as embed
from sslkit.app.cli import main
original, written = embed._write_chunk, []
def write_then_die(out, c, feats, ok):
    original(out, c, feats, ok)
    written.append(c)
    if len(written) == {n}:  # chunk written, manifest not yet: the worst instant
        os.kill(os.getpid(), signal.SIGKILL)
embed._write_chunk = write_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_embed_resumes_to_the_same_files(ckpt, folder, tmp_path):
    args = ["embed", f"checkpoint={ckpt}", "data=imagefolder", f"data.root={folder}", "data.batch_size=2",
            "embed.chunk_size=4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_CHUNK.format(n=2), *args, f"out={tmp_path / 'r'}"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    manifest = json.loads((tmp_path / "r" / MANIFEST).read_text())
    assert len(manifest["chunks"]) == 1 and not manifest["complete"] and not (tmp_path / "r" / NPY).exists()
    encoder = encoder_of(load_trained(ckpt))
    resumed = embed_folder(encoder, folder, tmp_path / "r", torch.device("cpu"), batch_size=2, chunk_size=99)
    assert resumed.resumed_from == 4  # chunk 1 kept, chunk 2 (unrecorded) redone; the manifest's chunk size wins
    whole = embed_folder(encoder, folder, tmp_path / "w", torch.device("cpu"), batch_size=2, chunk_size=4)
    for name in (NPY, PATHS):
        assert (tmp_path / "r" / name).read_bytes() == (tmp_path / "w" / name).read_bytes(), name
    assert pq.read_table(tmp_path / "r" / PARQUET).equals(pq.read_table(tmp_path / "w" / PARQUET))
    assert resumed.skipped == whole.skipped == [str(folder / "cat/broken.png")]


def test_a_crash_while_assembling_leaves_no_half_file_and_reruns(ckpt, folder, tmp_path, monkeypatch):
    import pyarrow.parquet as parquet

    encoder = encoder_of(load_trained(ckpt))
    monkeypatch.setattr(parquet.ParquetWriter, "close", lambda self: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        embed_folder(encoder, folder, tmp_path / "e", torch.device("cpu"), batch_size=4, chunk_size=8)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [".chunks", MANIFEST]  # no temporary left behind
    again = embed_folder(encoder, folder, tmp_path / "e", torch.device("cpu"), batch_size=4, chunk_size=8)
    assert again.resumed_from == 16 and again.count == 15


def test_search_returns_the_brute_force_neighbours(ckpt, indexed, tmp_path, capsys):
    capsys.readouterr()
    assert main(["search", f"index={indexed / 'e'}", f"query={indexed / 'img' / 'dog'}", "k=4",
                 f"out={tmp_path / 's'}", "grid=2"]) == 0
    out = capsys.readouterr().out
    assert "query " in out and "search: 6 queries, k=4" in out
    with open(tmp_path / "s" / "neighbours.csv") as f:
        rows = list(csv.DictReader(f))
    db = normalized(np.load(indexed / "e" / NPY))
    paths = (indexed / "e" / PATHS).read_text().splitlines()
    queries = sorted(str(p) for p in (indexed / "img" / "dog").iterdir())
    feats, ok = embed_paths(encoder_of(load_trained(ckpt)), queries, torch.device("cpu"))
    sims = normalized(feats) @ db.T
    for q, s in zip(queries, sims, strict=True):
        mine = [r for r in rows if r["query"] == q]
        order = np.argsort(-s, kind="stable")[:4]
        found = [r["path"] for r in mine]
        cosines = [float(r["cosine"]) for r in mine]
        if q.endswith("copy.png"):  # two identical files tie at cosine 1: either may come first
            assert set(found[:2]) == {paths[j] for j in order[:2]} and found[2:] == [paths[j] for j in order[2:]]
        else:
            assert found == [paths[j] for j in order] and found[0] == q  # each query is in the index
        np.testing.assert_allclose(cosines, s[order], atol=1e-5)
        np.testing.assert_allclose(cosines, [s[paths.index(p)] for p in found], atol=1e-5)
    assert (tmp_path / "s" / "search.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "s" / "search.html").read_text().count("<tr>") == 2


@pytest.mark.parametrize("source", ["index", "embeddings"])
def test_dedupe_finds_exactly_the_pairs_above_the_threshold(indexed, tmp_path, capsys, source):
    emb = normalized(np.load(indexed / "e" / NPY))
    paths = (indexed / "e" / PATHS).read_text().splitlines()
    cos = emb @ emb.T
    top = np.sort(cos[np.triu_indices(len(paths), 1)])
    threshold = float(top[-6] + top[-7]) / 2  # between the 6th and 7th most similar pairs
    capsys.readouterr()
    assert main(["dedupe", f"{source}={indexed / 'e'}", f"threshold={threshold}", f"out={tmp_path / 'd'}"]) == 0
    with open(tmp_path / "d" / "pairs.csv") as f:
        rows = list(csv.DictReader(f))
    pairs = zip(*np.triu_indices(len(paths), 1), strict=True)
    want = {(paths[i], paths[j]) for i, j in pairs if cos[i, j] >= threshold}
    assert {(r["path_a"], r["path_b"]) for r in rows} == want and len(rows) == 6
    top = (str(indexed / "img/cat/0_1.png"), str(indexed / "img/dog/copy.png"))
    assert (rows[0]["path_a"], rows[0]["path_b"]) == top
    assert float(rows[0]["cosine"]) > 0.9999
    assert [float(r["cosine"]) for r in rows] == sorted((float(r["cosine"]) for r in rows), reverse=True)
    assert (tmp_path / "d" / "pairs.png").is_file() and "6 pairs" in capsys.readouterr().out


def test_index_kind_is_flat_up_to_a_million_and_approximate_indexes_find_the_neighbours():
    assert choose_kind(FLAT_MAX) == "flat" and choose_kind(FLAT_MAX + 1) == "ivf" and choose_kind(10, "hnsw") == "hnsw"
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    x = (centres[rng.integers(0, 40, 3000)] + 0.3 * rng.normal(size=(3000, 32))).astype(np.float32)
    q = normalized(x[:200])
    truth = np.argsort(-(q @ normalized(x).T), axis=1)[:, :10]
    exact = build_index(x, "flat").search(q, 10)[1]
    assert np.array_equal(np.sort(exact, axis=1), np.sort(truth, axis=1))
    for kind in ("ivf", "hnsw"):
        found = build_index(x, kind).search(q, 10)[1]
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
        assert recall >= 0.9, (kind, recall)


# ---- bad input: one line, exit 2 ------------------------------------------------------------------------

def test_a_folder_without_images_is_one_line(ckpt, tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    assert _embed(ckpt, tmp_path / "empty", tmp_path / "e") == 2
    _one_line(capsys, "no images found under")


def test_a_file_that_is_neither_a_run_nor_an_export_is_one_line(folder, tmp_path, capsys):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    assert _embed(tmp_path / "foreign.pt", folder, tmp_path / "e") == 2
    _one_line(capsys, "not an sslkit checkpoint")


def test_search_with_an_encoder_of_another_dimension_is_one_line(indexed, folder, tmp_path, capsys):
    wide = make_checkpoint(tmp_path / "wide.pt", {"name": "resnet18", "width": 16, "small_images": True})
    assert main(["search", f"index={indexed / 'e'}", f"query={folder / 'dog'}", f"checkpoint={wide}"]) == 2
    _one_line(capsys, "128-d", "64-d")


def test_out_naming_an_embed_of_other_images_is_one_line(ckpt, folder, tmp_path, capsys):
    assert _embed(ckpt, folder / "dog", tmp_path / "e") == 0
    assert _embed(ckpt, folder / "cat", tmp_path / "e") == 2
    _one_line(capsys, "holds an embed of other images", "choose a new out=")
    assert _embed(ckpt, folder / "dog", tmp_path / "e") == 0  # the same images: nothing to redo
    assert "embedded 5 images" in capsys.readouterr().out


def test_a_threshold_that_pairs_everything_is_one_line(indexed, tmp_path, capsys):
    """16 images, 120 pairs at threshold -1: more than max_pairs=50 stops with a hint instead of filling memory."""
    assert main(["dedupe", f"index={indexed / 'e'}", "threshold=-1", "max_pairs=50", f"out={tmp_path / 'd'}"]) == 2
    _one_line(capsys, "more than 50 pairs", "raise threshold=")
