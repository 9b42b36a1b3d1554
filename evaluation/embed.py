"""Embeddings of a folder of image files, streamed, resumable and written atomically.

Every image under the folder (recursively, any extension of `sslkit.data.imagefolder.EXTENSIONS`,
sorted by path) goes through the encoder's own evaluation view (`eval_transform`'s resize, crop and
normalisation at the image size, mean and std it was trained with) and the backbone in eval mode:
the features `sslkit eval knn` computes for the same files (to float rounding). Work is done in
chunks of `chunk_size` images; each chunk is written to `<out>/.chunks/` and recorded in
`<out>/manifest.json` (both atomically), so a killed embed continues at the first missing chunk and
ends with the same files as an uninterrupted one. Memory holds one chunk of embeddings, whatever
the number of images.

Outputs: `embeddings.parquet` (path, embedding, label where class folders give one),
`embeddings.npy` (N, D) float32 in the same order, `paths.txt`, and `manifest.json`. Unreadable files
are skipped, each named once on stderr, and listed in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from sslkit.data.imagefolder import EXTENSIONS, decode, list_images, resize_center_crop, warn_unreadable
from sslkit.errors import ConfigError, DataError
from sslkit.files import atomic_path, write_json

from .context import TrainedBackbone

KIND = "sslkit-embed"
VERSION = 1
MANIFEST = "manifest.json"
CHUNKS = ".chunks"
PARQUET, NPY, PATHS = "embeddings.parquet", "embeddings.npy", "paths.txt"
SPLIT_FOLDERS = ("train", "val", "test")  # sslkit's imagefolder layout: root/<split>/<class>/


@dataclass(frozen=True)
class Encoder:
    """A backbone and the evaluation view it was trained for; `ident` says which weights these are."""

    backbone: nn.Module
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    name: str

    @cached_property
    def ident(self) -> dict[str, Any]:
        return {"weights": weights_digest(self.backbone), "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std)}


def encoder_of(trained: TrainedBackbone) -> Encoder:
    data = trained.config.data
    return Encoder(trained.backbone, int(data.image_size), tuple(float(m) for m in data.mean),
                   tuple(float(s) for s in data.std), str(trained.file), trained.name)


def weights_digest(backbone: nn.Module) -> str:
    """sha256 of the backbone's weights (names, shapes, values): the same weights from a run or an export match."""
    h = hashlib.sha256()
    for name, t in sorted(backbone.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def folder_images(root: Path) -> list[str]:
    """Every image file under `root`, sorted; a one-line DataError when there is none."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (data.root)")
    paths = list_images(root)
    if not paths:
        raise DataError(f"no images found under {root} (looked for {', '.join(EXTENSIONS)}, recursively)")
    return paths


def class_labels(root: Path, paths: Sequence[str]) -> list[str | None]:
    """The class of each image from its folders, as torchvision's ImageFolder reads them: the first folder
    under `root` (under root/<split>/ when root holds only train/, val/ or test/); None for loose files."""
    rel = [Path(p).relative_to(root).parts for p in paths]
    split_layout = bool(rel) and all(len(r) >= 3 and r[0] in SPLIT_FOLDERS for r in rel)
    depth = 1 if split_layout else 0
    return [r[depth] if len(r) > depth + 1 else None for r in rel]


def images_digest(root: Path, paths: Sequence[str]) -> str:
    """sha256 of every file's path under `root`, size and modification time: which images these are."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


class FileImages(Dataset):
    """Images decoded from `paths`, short side to `image_size` and centre-cropped, still uint8 (the
    batch is normalised at once: `batch_eval_preprocess`); an unreadable file is named once on stderr
    and comes back as zeros with ok=False (the caller drops it)."""

    def __init__(self, paths: Sequence[str], image_size: int) -> None:
        self.paths, self.image_size = list(paths), image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, bool]:
        try:
            return resize_center_crop(decode(self.paths[index]), self.image_size), True
        except DataError as exc:
            warn_unreadable(exc)
            return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), False


@torch.no_grad()
def embed_batches(encoder: Encoder, paths: Sequence[str], batches: Sequence[Sequence[int]], device: torch.device,
                  workers: int = 0) -> Iterator[tuple[Sequence[int], np.ndarray, np.ndarray]]:
    """(indices, (B, D) float32 features, (B,) ok) for each batch of indices into `paths`, in order.

    The view is `eval_transform`'s, split in two: resize and crop per image (uint8, in the loader), then
    scaling and normalising per batch on the device, which costs a fraction of per-image tensor ops."""
    from sslkit.augment import batch_eval_preprocess

    loader = DataLoader(FileImages(paths, encoder.image_size), batch_sampler=[list(b) for b in batches],
                        num_workers=workers, pin_memory=device.type == "cuda")
    backbone = encoder.backbone.to(device).eval()
    size, mean, std = encoder.image_size, list(encoder.mean), list(encoder.std)
    for idx, (x, ok) in zip(batches, loader, strict=True):
        x = batch_eval_preprocess(x.to(device, non_blocking=True), size, mean, std)
        feats = backbone(x).float().cpu().numpy()
        yield idx, feats, ok.numpy().astype(bool)


def embed_paths(encoder: Encoder, paths: Sequence[str], device: torch.device, batch_size: int = 256,
                workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """In memory, for a few images (search queries): (N, D) features and (N,) ok."""
    batches = [range(s, min(s + batch_size, len(paths))) for s in range(0, len(paths), batch_size)]
    feats, oks = [], []
    for _, f, ok in embed_batches(encoder, paths, batches, device, workers):
        feats.append(f)
        oks.append(ok)
    return np.concatenate(feats), np.concatenate(oks)


@dataclass
class EmbedResult:
    out: Path
    count: int
    dim: int
    skipped: list[str]
    resumed_from: int
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise ConfigError(f"{path} is not an sslkit embed manifest; choose a new out=")
    return manifest


def _start(out: Path, root: Path, paths: Sequence[str], encoder: Encoder, chunk_size: int) -> dict[str, Any]:
    """The manifest to continue: the one in `out` when it is these images by this encoder, else a new one."""
    images = images_digest(root, paths)
    old = read_manifest(out)
    if old is not None:
        if old["images"] != images or old["root"] != str(root):
            raise ConfigError(f"out={out} holds an embed of other images ({old['count']} files under {old['root']}); "
                              "choose a new out= or delete it")
        if old["encoder"] != encoder.ident:
            raise ConfigError(f"out={out} holds an embed of these images by another encoder ({old['source']}); "
                              "choose a new out= or delete it")
        return old
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise ConfigError(f"out={out} is not empty and holds no sslkit embed; choose a new or empty folder")
    return {"kind": KIND, "version": VERSION, "root": str(root), "count": len(paths), "images": images,
            "encoder": encoder.ident, "source": encoder.source, "backbone": encoder.name,
            "chunk_size": int(chunk_size), "chunks": [], "dim": None, "complete": False}


def _chunk_file(out: Path, c: int) -> Path:
    return out / CHUNKS / f"{c:06d}.npz"


def _write_chunk(out: Path, c: int, feats: np.ndarray, ok: np.ndarray) -> None:
    with atomic_path(_chunk_file(out, c)) as tmp, open(tmp, "wb") as f:
        np.savez(f, feats=feats[ok], ok=ok)


def embed_folder(encoder: Encoder, root: Path, out: Path, device: torch.device, batch_size: int = 256,
                 workers: int = 0, chunk_size: int = 4096, progress: str = "auto") -> EmbedResult:
    """Embed every image under `root` into `out`, continuing an interrupted embed of the same images."""
    from sslkit.engine.progress import Progress

    if batch_size < 1 or chunk_size < 1:
        raise ConfigError(f"data.batch_size and embed.chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    start = time.perf_counter()
    root = root.expanduser().resolve()
    paths = folder_images(root)
    manifest = _start(out, root, paths, encoder, chunk_size)
    out.mkdir(parents=True, exist_ok=True)
    size = int(manifest["chunk_size"])
    n_chunks = -(-len(paths) // size)
    done = len(manifest["chunks"])
    resumed_from = min(done * size, len(paths))
    if not manifest["complete"]:
        batches = [range(s, min(s + batch_size, (c + 1) * size, len(paths)))
                   for c in range(done, n_chunks) for s in range(c * size, min((c + 1) * size, len(paths)), batch_size)]
        feats: list[np.ndarray] = []
        oks: list[np.ndarray] = []
        with Progress(len(paths), "embed", "img", progress, initial=resumed_from) as bar:
            for idx, f, ok in embed_batches(encoder, paths, batches, device, workers):
                feats.append(f)
                oks.append(ok)
                bar.update(len(idx))
                c = idx[0] // size
                if idx[-1] + 1 == min((c + 1) * size, len(paths)):  # the chunk is complete
                    _finish_chunk(out, manifest, c, np.concatenate(feats), np.concatenate(oks), paths)
                    feats, oks = [], []
        _assemble(out, manifest, paths, class_labels(root, paths))
        shutil.rmtree(out / CHUNKS, ignore_errors=True)
    skipped = [p for chunk in manifest["chunks"] for p in chunk["skipped"]]
    count = sum(int(chunk["kept"]) for chunk in manifest["chunks"])
    if count == 0:
        raise DataError(f"none of the {len(paths)} images under {root} could be decoded")
    return EmbedResult(out, count, int(manifest["dim"]), skipped, resumed_from, time.perf_counter() - start,
                       {"parquet": out / PARQUET, "npy": out / NPY, "paths": out / PATHS, "manifest": out / MANIFEST})


def _finish_chunk(out: Path, manifest: dict[str, Any], c: int, feats: np.ndarray, ok: np.ndarray,
                  paths: Sequence[str]) -> None:
    """Write chunk `c`, then record it in the manifest: a kill between the two only redoes the chunk."""
    _write_chunk(out, c, feats, ok)
    size = int(manifest["chunk_size"])
    manifest["dim"] = int(feats.shape[1])
    manifest["chunks"].append({"kept": int(ok.sum()),
                               "skipped": [paths[c * size + i] for i in np.flatnonzero(~ok).tolist()]})
    write_json(manifest, out / MANIFEST)


def _assemble(out: Path, manifest: dict[str, Any], paths: Sequence[str], labels: Sequence[str | None]) -> None:
    """The final files from the chunks, one chunk in memory at a time; then the manifest says complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = int(manifest["dim"] or 0)
    total = sum(int(chunk["kept"]) for chunk in manifest["chunks"])
    size = int(manifest["chunk_size"])
    schema = pa.schema([("path", pa.string()), ("embedding", pa.list_(pa.float32(), dim)), ("label", pa.string())])
    with atomic_path(out / NPY) as npy, atomic_path(out / PARQUET) as parquet, atomic_path(out / PATHS) as txt:
        array = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(total, dim))
        writer = pq.ParquetWriter(str(parquet), schema)
        row = 0
        with open(txt, "w", encoding="utf-8") as lines:
            for c in range(len(manifest["chunks"])):
                with np.load(_chunk_file(out, c)) as blob:
                    feats, ok = blob["feats"], blob["ok"]
                kept = [c * size + i for i in np.flatnonzero(ok).tolist()]
                array[row:row + len(kept)] = feats
                row += len(kept)
                writer.write_table(pa.table({
                    "path": pa.array([paths[i] for i in kept], pa.string()),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), pa.float32()), dim),
                    "label": pa.array([labels[i] for i in kept], pa.string())}, schema=schema))
                lines.writelines(paths[i] + "\n" for i in kept)
        writer.close()
        array.flush()
        del array
    manifest["complete"] = True
    write_json(manifest, out / MANIFEST)


def read_paths(embed_dir: Path) -> list[str]:
    """The image path of each embedding row."""
    return (embed_dir / PATHS).read_text(encoding="utf-8").splitlines()


def read_embeddings(embed_dir: Path) -> np.ndarray:
    """The (N, D) float32 embeddings, memory-mapped (read as needed, never all at once)."""
    manifest = read_manifest(embed_dir)
    if manifest is None or not manifest.get("complete"):
        raise DataError(f"{embed_dir} holds no complete embed (run `sslkit embed ... out={embed_dir}` first)")
    return np.load(embed_dir / NPY, mmap_mode="r")
