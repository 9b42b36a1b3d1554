"""A FAISS nearest-neighbour index over an embed's vectors, for search and near-duplicates.

Vectors are L2-normalised, so inner product is cosine similarity (as in `knn.nearest_neighbours`).
Up to `FLAT_MAX` vectors the index is exact (`IndexFlatIP`); above, an inverted file (`IndexIVFFlat`,
4 * sqrt(N) lists, the low end of FAISS's guideline of 4-16 * sqrt(N), searched with nprobe = lists / 16)
keeps search fast; HNSW (`IndexHNSWFlat`, M = 32) is the other choice. `kind=` overrides the choice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sslkit.errors import ConfigError, DataError, suggestion
from sslkit.files import atomic_path, write_json

from .embed import MANIFEST, read_embeddings, read_manifest, read_paths

KINDS = ("auto", "flat", "ivf", "hnsw")
FLAT_MAX = 1_000_000
INDEX_FILE, INDEX_META = "index.faiss", "index.json"
HNSW_M = 32
BATCH = 65536


def choose_kind(n: int, requested: str = "auto") -> str:
    """`requested`, or for auto: flat (exact) up to FLAT_MAX vectors, IVF above."""
    if requested not in KINDS:
        raise ConfigError(f"unknown index.kind '{requested}'; {suggestion(requested, KINDS)}")
    if requested != "auto":
        return requested
    return "flat" if n <= FLAT_MAX else "ivf"


def normalized(rows: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (all-zero rows stay zero)."""
    x = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def row_batches(vectors: np.ndarray, batch: int = BATCH) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, normalised rows) in batches: a memory-mapped array is read one batch at a time."""
    for s in range(0, vectors.shape[0], batch):
        yield s, normalized(vectors[s:s + batch])


def build_index(vectors: np.ndarray, kind: str = "auto", nlist: int | None = None, seed: int = 0) -> Any:
    """A FAISS index over the normalised rows of `vectors` (N, D)."""
    import faiss

    n, dim = vectors.shape
    if n == 0:
        raise DataError("no embeddings to index")
    kind = choose_kind(n, kind)
    if kind == "flat":
        index: Any = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
    else:
        lists = int(nlist or max(1, min(n, round(4 * math.sqrt(n)))))
        if not 1 <= lists <= n:
            raise ConfigError(f"index.nlist must be between 1 and the {n} vectors, got {lists}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 64 * lists), replace=False))
        index.train(normalized(vectors[sample]))
        index.nprobe = max(1, lists // 16)
    for _, rows in row_batches(vectors):
        index.add(rows)
    return index


@dataclass
class Index:
    """A saved index: the FAISS object, its description and the embed it was built from."""

    faiss: Any
    meta: dict[str, Any]
    directory: Path

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def embed_dir(self) -> Path:
        return Path(self.meta["embeddings"])

    def paths(self) -> list[str]:
        return read_paths(self.embed_dir)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(M, k) cosine similarities, descending, and (M, k) row indices (-1 where fewer than k exist)."""
        if queries.shape[1] != self.dim:
            raise ConfigError(f"the queries are {queries.shape[1]}-d embeddings but the index in {self.directory} "
                              f"holds {self.dim}-d ones (from {self.meta['source']}); search with the encoder "
                              "that built the index")
        sims, idx = self.faiss.search(normalized(queries), int(k))
        return sims, idx


def write_index(embed_dir: Path, out: Path, kind: str = "auto", nlist: int | None = None) -> Index:
    """Build the index of the embed in `embed_dir` and save `index.faiss` + `index.json` in `out`."""
    import faiss

    vectors = read_embeddings(embed_dir)
    manifest = read_manifest(embed_dir) or {}
    index = build_index(vectors, kind, nlist)
    chosen = choose_kind(vectors.shape[0], kind)
    meta = {"kind": chosen, "requested": kind, "count": int(vectors.shape[0]), "dim": int(vectors.shape[1]),
            "embeddings": str(embed_dir.resolve()), "source": manifest.get("source"),
            "encoder": manifest.get("encoder"), "metric": "cosine (inner product of L2-normalised vectors)"}
    if chosen == "ivf":
        meta.update(nlist=int(index.nlist), nprobe=int(index.nprobe))
    if chosen == "hnsw":
        meta.update(M=HNSW_M, efSearch=int(index.hnsw.efSearch))
    with atomic_path(out / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    write_json(meta, out / INDEX_META)
    return Index(index, meta, out)


def load_index(directory: Path) -> Index:
    """The index saved in `directory` (by `sslkit index`)."""
    import faiss

    meta_file = directory / INDEX_META
    if not meta_file.is_file():
        hint = " (it holds an embed: build its index with `sslkit index embeddings=...`)" \
            if (directory / MANIFEST).is_file() else ""
        raise DataError(f"{directory} holds no index ({INDEX_META}){hint}")
    meta = json.loads(meta_file.read_text())
    index: Any = faiss.read_index(str(directory / INDEX_FILE))
    if "nprobe" in meta:
        index.nprobe = int(meta["nprobe"])
    return Index(index, meta, directory)


MAX_PAIRS = 1_000_000


def duplicate_pairs(index: Index, threshold: float, k: int = 20, batch: int = 4096, max_pairs: int = MAX_PAIRS
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of rows with cosine >= `threshold`: (a, b, cosine), most similar first.

    Flat and IVF indexes answer a range search (all pairs for flat, exact); HNSW answers the k nearest of
    each row, so a row with more than k - 1 duplicates reports only k - 1 of them. More than `max_pairs`
    pairs is a one-line ConfigError: the threshold is below what separates duplicates for this encoder."""
    import faiss

    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    vectors = read_embeddings(index.embed_dir)
    ranged = not isinstance(index.faiss, faiss.IndexHNSW)
    found_a, found_b, found_s = [], [], []
    for start, rows in row_batches(vectors, batch):
        if ranged:
            lims, sims, idx = index.faiss.range_search(rows, float(np.nextafter(np.float32(threshold), -np.inf)))
            a = np.repeat(np.arange(start, start + rows.shape[0]), np.diff(lims).astype(np.int64))
        else:
            sims, idx = index.faiss.search(rows, k)
            a = np.repeat(np.arange(start, start + rows.shape[0]), k)
            sims, idx = sims.reshape(-1), idx.reshape(-1)
        keep = (idx >= 0) & (idx != a) & (sims >= threshold)
        found_a.append(np.minimum(a, idx)[keep])
        found_b.append(np.maximum(a, idx)[keep])
        found_s.append(sims[keep])
        if sum(len(f) for f in found_s) > 2 * max_pairs:
            raise ConfigError(f"more than {max_pairs} pairs have cosine >= {threshold:g} (after {start + len(rows)} of "
                              f"{vectors.shape[0]} images): this encoder puts many images that close; raise "
                              "threshold= (or max_pairs=)")
    a, b, s = (np.concatenate(v).astype(t) for v, t in ((found_a, np.int64), (found_b, np.int64),
                                                         (found_s, np.float32)))
    order = np.lexsort((b, a, np.negative(s)))  # most similar first, then by rows
    a, b, s = a[order], b[order], s[order]
    _, first = np.unique(a * vectors.shape[0] + b, return_index=True)  # a pair found from both of its rows
    first.sort()
    return a[first], b[first], s[first]
