"""`sslkit embed`, `sslkit index`, `sslkit search` and `sslkit dedupe`: apply a trained encoder to a
folder of image files, search the embeddings and find near-duplicates (docs/embed.md)."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslkit.errors import ConfigError, DataError
from sslkit.overrides import key_values

if TYPE_CHECKING:  # the CLI imports this module lazily; torch loads only when a command runs
    import torch

    from sslkit.evaluation.embed import Encoder

EMBED_KEYS = {"checkpoint", "data", "data.root", "data.batch_size", "data.num_workers", "out", "device",
              "embed.chunk_size", "trainer.threads"}
PRINTED_QUERIES = 20  # search prints the neighbours of this many queries; the CSV has them all


def _int(opts: dict[str, str], key: str, default: int) -> int:
    value = opts.get(key)
    if value in (None, "", "null"):
        return default
    try:
        return int(str(value))
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {value!r}") from None


def _float(opts: dict[str, str], key: str, default: float) -> float:
    try:
        return float(opts[key]) if opts.get(key) not in (None, "") else default
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {opts[key]!r}") from None


def _encoder(checkpoint: str, device_spec: str, threads: str | None, workers: str | None
             ) -> tuple[Encoder, torch.device, int]:
    """The encoder of a run, checkpoint or export, the device, and the loader workers for decoding files."""
    from sslkit.devices import pick_device
    from sslkit.engine.hardware import apply_cpu_split
    from sslkit.evaluation.context import load_trained
    from sslkit.evaluation.embed import encoder_of

    device = pick_device(device_spec, 0)
    split = apply_cpu_split(device, True, threads, workers)
    return encoder_of(load_trained(checkpoint)), device, split.workers


def embed_command(overrides: list[str]) -> int:
    """`sslkit embed checkpoint=<run or export> data=imagefolder data.root=<dir> out=<dir>`."""
    from sslkit.engine.outputs import writable_dir
    from sslkit.evaluation.embed import embed_folder

    opts = key_values(overrides, EMBED_KEYS)
    if opts.get("data", "imagefolder") != "imagefolder":
        raise ConfigError(f"embed reads a folder of image files: data=imagefolder, not data={opts['data']}")
    for key, what in (("checkpoint", "<run dir, checkpoint or exported .pt>"), ("data.root", "<folder of images>"),
                      ("out", "<new folder> (the same out= resumes an interrupted embed)")):
        if not opts.get(key):
            raise ConfigError(f"embed needs {key}={what}")
    root = Path(opts["data.root"])
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (data.root)")
    encoder, device, workers = _encoder(opts["checkpoint"], opts.get("device", "auto"), opts.get("trainer.threads"),
                                        opts.get("data.num_workers"))
    out = writable_dir(Path(opts["out"]))
    result = embed_folder(encoder, root, out, device, _int(opts, "data.batch_size", 256), workers,
                          _int(opts, "embed.chunk_size", 4096))
    resumed = f", resumed after {result.resumed_from}" if result.resumed_from else ""
    skipped = f", {len(result.skipped)} unreadable skipped (listed in manifest.json)" if result.skipped else ""
    print(f"embedded {result.count} images ({result.dim}-d, {encoder.name}{resumed}{skipped}, "
          f"{result.seconds:.1f}s) -> {result.files['parquet']}, {result.files['npy'].name}, "
          f"{result.files['paths'].name}", flush=True)
    return 0


def index_command(overrides: list[str]) -> int:
    """`sslkit index embeddings=<embed dir> [out=<dir>] [index.kind=auto|flat|ivf|hnsw] [index.nlist=N]`."""
    from sslkit.engine.outputs import writable_dir
    from sslkit.evaluation.index import write_index

    opts = key_values(overrides, {"embeddings", "out", "index.kind", "index.nlist"})
    if not opts.get("embeddings"):
        raise ConfigError("index needs embeddings=<folder written by sslkit embed>")
    embed_dir = Path(opts["embeddings"])
    out = writable_dir(Path(opts["out"])) if opts.get("out") else embed_dir
    start = time.perf_counter()
    nlist = _int(opts, "index.nlist", 0) or None
    index = write_index(embed_dir, out, opts.get("index.kind", "auto"), nlist)
    m = index.meta
    detail = f", nlist={m['nlist']} nprobe={m['nprobe']}" if "nlist" in m else ""
    print(f"index: {m['kind']}{detail}, {m['count']} vectors of {m['dim']}-d, cosine "
          f"({time.perf_counter() - start:.1f}s) -> {out / 'index.faiss'}", flush=True)
    return 0


def _queries(query: str) -> list[str]:
    from sslkit.evaluation.embed import folder_images

    path = Path(query)
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        return folder_images(path)
    raise DataError(f"query={query} is neither an image file nor a folder")


def search_command(overrides: list[str]) -> int:
    """`sslkit search index=<dir> query=<image or folder> [k=10] [out=<dir>] [checkpoint=...] [grid=16]`."""
    from sslkit.engine.outputs import writable_dir
    from sslkit.evaluation.embed import embed_paths
    from sslkit.evaluation.gallery import plot_rows, write_html
    from sslkit.evaluation.index import load_index
    from sslkit.files import write_text_atomic

    opts = key_values(overrides, {"index", "query", "k", "out", "checkpoint", "device", "grid", "data.batch_size",
                                  "data.num_workers", "trainer.threads"})
    for key, what in (("index", "<folder with index.faiss>"), ("query", "<image or folder of images>")):
        if not opts.get(key):
            raise ConfigError(f"search needs {key}={what}")
    k, grid = _int(opts, "k", 10), _int(opts, "grid", 16)
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    index = load_index(Path(opts["index"]))
    k = min(k, int(index.meta["count"]))
    queries = _queries(opts["query"])
    checkpoint = opts.get("checkpoint") or index.meta.get("source")
    if not checkpoint:
        raise ConfigError("the index does not name its encoder; pass checkpoint=<run dir or export>")
    encoder, device, workers = _encoder(checkpoint, opts.get("device", "auto"), opts.get("trainer.threads"),
                                        opts.get("data.num_workers"))
    _check_encoder(encoder, index.meta, checkpoint, index.directory)
    start = time.perf_counter()
    feats, ok = embed_paths(encoder, queries, device, _int(opts, "data.batch_size", 256), workers)
    queries = [q for q, good in zip(queries, ok, strict=True) if good]
    if not queries:
        raise DataError(f"none of the query images under {opts['query']} could be decoded")
    sims, idx = index.search(feats[ok], k)
    paths = index.paths()
    rows = [(q, [(paths[j], float(s)) for j, s in zip(idx[r], sims[r], strict=True) if j >= 0])
            for r, q in enumerate(queries)]
    out = writable_dir(Path(opts["out"]) if opts.get("out") else index.directory / "search")
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["query", "rank", "path", "cosine"])
    writer.writerows((q, rank + 1, p, f"{s:.6f}") for q, ns in rows for rank, (p, s) in enumerate(ns))
    write_text_atomic(table.getvalue(), out / "neighbours.csv")
    title = f"{len(queries)} queries, {k} nearest of {index.meta['count']} by cosine ({index.meta['kind']} index)"
    png = plot_rows(rows[:grid], out / "search.png", title)
    page = write_html(rows[:grid], out / "search.html", title)
    for q, ns in rows[:PRINTED_QUERIES]:
        print(f"query {q}")
        for rank, (p, s) in enumerate(ns):
            print(f"  {rank + 1:>3}  {s:.4f}  {p}")
    more = f" (the first {PRINTED_QUERIES} printed)" if len(rows) > PRINTED_QUERIES else ""
    print(f"search: {len(queries)} queries{more}, k={k}, {time.perf_counter() - start:.1f}s -> "
          f"{out / 'neighbours.csv'}, {png.name}, {page.name}", flush=True)
    return 0


def _check_encoder(encoder: Encoder, meta: dict[str, Any], checkpoint: str, directory: Path) -> None:
    """The query encoder must be the one that embedded the index: same dimension, same weights and view."""
    import torch

    with torch.no_grad():
        x = torch.zeros(1, 3, encoder.image_size, encoder.image_size)
        dim = int(encoder.backbone.eval()(x).shape[1])
    if dim != int(meta["dim"]):
        raise ConfigError(f"checkpoint {checkpoint} gives {dim}-d embeddings but the index in {directory} holds "
                          f"{meta['dim']}-d ones (from {meta.get('source')}); search with the encoder that built it")
    if meta.get("encoder") and encoder.ident != meta["encoder"]:
        raise ConfigError(f"checkpoint {checkpoint} is not the encoder that built the index in {directory} "
                          f"({meta.get('source')}); its embeddings would not be comparable")


def dedupe_command(overrides: list[str]) -> int:
    """`sslkit dedupe index=<dir> [threshold=0.95] [out=<dir>] [grid=16] [k=20]` (or embeddings=<embed dir>)."""
    from sslkit.engine.outputs import writable_dir
    from sslkit.evaluation.embed import read_embeddings, read_manifest
    from sslkit.evaluation.gallery import plot_pairs, write_html
    from sslkit.evaluation.index import Index, build_index, duplicate_pairs, load_index
    from sslkit.files import write_text_atomic

    opts = key_values(overrides, {"index", "embeddings", "threshold", "out", "grid", "k", "max_pairs"})
    threshold, grid, k = _float(opts, "threshold", 0.95), _int(opts, "grid", 16), _int(opts, "k", 20)
    max_pairs = _int(opts, "max_pairs", 1_000_000)
    start = time.perf_counter()
    if opts.get("index"):
        index = load_index(Path(opts["index"]))
    elif opts.get("embeddings"):  # an exact index, in memory only
        embed_dir = Path(opts["embeddings"])
        vectors = read_embeddings(embed_dir)
        manifest = read_manifest(embed_dir) or {}
        index = Index(build_index(vectors, "flat"), {"kind": "flat", "count": int(vectors.shape[0]),
                                                     "dim": int(vectors.shape[1]), "embeddings": str(embed_dir),
                                                     "source": manifest.get("source")}, embed_dir)
    else:
        raise ConfigError("dedupe needs index=<folder with index.faiss> or embeddings=<folder from sslkit embed>")
    a, b, s = duplicate_pairs(index, threshold, k, max_pairs=max_pairs)
    paths = index.paths()
    out = writable_dir(Path(opts["out"]) if opts.get("out") else index.directory / "dedupe")
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["path_a", "path_b", "cosine"])
    writer.writerows((paths[i], paths[j], f"{c:.6f}") for i, j, c in zip(a.tolist(), b.tolist(), s.tolist(),
                                                                          strict=True))
    write_text_atomic(table.getvalue(), out / "pairs.csv")
    top = [(paths[i], paths[j], float(c)) for i, j, c in zip(a[:grid].tolist(), b[:grid].tolist(),
                                                              s[:grid].tolist(), strict=True)]
    title = f"{len(a)} pairs with cosine >= {threshold:g} among {index.meta['count']} images (top {len(top)})"
    png = plot_pairs(top, out / "pairs.png", title)
    page = write_html([(x, [(y, c)]) for x, y, c in top], out / "pairs.html", title, first="image")
    for i, j, c in zip(a[:PRINTED_QUERIES].tolist(), b[:PRINTED_QUERIES].tolist(), s[:PRINTED_QUERIES].tolist(),
                       strict=True):
        print(f"{c:.4f}  {paths[i]}  {paths[j]}")
    print(f"dedupe: {len(a)} pairs with cosine >= {threshold:g} ({time.perf_counter() - start:.1f}s) -> "
          f"{out / 'pairs.csv'}, {png.name}, {page.name}", flush=True)
    return 0
