"""Folders of your own image files, decoded lazily in DataLoader workers.

Labeled data follows the ImageNet layout (Deng et al. 2009, "ImageNet: A Large-Scale Hierarchical Image
Database") as torchvision's ImageFolder reads it: root/train/<class>/*.jpg and root/val/<class>/*.jpg.
A folder without train/ is a flat (possibly nested) set of unlabeled images, for pretraining only.
"""

from __future__ import annotations

import copy
import io
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from sslkit.data.base import Transform
from sslkit.errors import DataError, one_line

TORCHVISION_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")
PIL_EXTENSIONS = (".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")  # torchvision.io cannot decode these
EXTENSIONS = TORCHVISION_EXTENSIONS + PIL_EXTENSIONS
EVAL_FOLDERS = ("val", "test")


SYMLINKS = ("inside", "follow")


class _Tree:
    """Walks data.root under its symlink rule (docs/security.md). `inside` (the default): a link is
    followed only when its target lies inside data.root; links out of it are skipped and counted.
    `follow`: every link is followed (a symlink farm you built yourself). Either way a link back up
    to a folder that holds it (a cycle) is not followed, and each directory is walked once per folder."""

    def __init__(self, root: Path, symlinks: str = "inside") -> None:
        if symlinks not in SYMLINKS:
            raise DataError(f"data.symlinks={symlinks} is invalid; valid: {', '.join(SYMLINKS)}")
        self.root = os.path.realpath(root)
        self.follow = symlinks == "follow"
        self.outside: set[str] = set()

    def allowed(self, path: str) -> bool:
        """False for a symlink whose target lies outside data.root (counted), unless links are followed."""
        if self.follow or not os.path.islink(path):
            return True
        real = os.path.realpath(path)
        if real == self.root or real.startswith(self.root + os.sep):
            return True
        self.outside.add(path)
        return False

    def list_images(self, folder: Path) -> list[str]:
        """Every image file under `folder`, recursively, sorted; hidden files and folders are skipped."""
        found: list[str] = []
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a link back to a folder already walked: a cycle or a duplicate
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and self.allowed(os.path.join(dirpath, d))
                           and not _is_ancestor(os.path.realpath(os.path.join(dirpath, d)), real)]
            found += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".")
                      and f.lower().endswith(EXTENSIONS) and self.allowed(os.path.join(dirpath, f))]
        return sorted(found)

    def class_folders(self, folder: Path) -> list[str]:
        """The sorted names of the (non-hidden) sub-folders of `folder`."""
        return sorted(p.name for p in folder.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and self.allowed(str(p)))

    def warn(self) -> None:
        if self.outside:
            n = len(self.outside)
            print(f"sslkit: warning: skipped {n} symlink{'s' if n != 1 else ''} under "
                  f"{self.root} that point outside it (data.symlinks=inside; data.symlinks=follow follows them)",
                  file=sys.stderr, flush=True)


def _is_ancestor(target: str, here: str) -> bool:
    """True when a link to `target` from the folder `here` leads back up: a cycle, never followed."""
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)


def list_images(folder: Path) -> list[str]:
    """Every image file under `folder` (symlinks out of `folder` skipped; see `_Tree`)."""
    return _Tree(folder).list_images(folder)


def class_folders(folder: Path) -> list[str]:
    """The sorted names of the (non-hidden) sub-folders of `folder`."""
    return _Tree(folder).class_folders(folder)


#: an image file larger than this is refused unread (a 24-megapixel JPEG is about 10 MB)
MAX_IMAGE_FILE_BYTES = 256 << 20


def read_image_file(path: str) -> bytes:
    size = os.path.getsize(path)
    if size > MAX_IMAGE_FILE_BYTES:
        raise ValueError(f"{size} bytes, over {MAX_IMAGE_FILE_BYTES >> 20} MiB")
    with open(path, "rb") as f:
        return f.read()


def image_size_ok(path: str | io.BytesIO) -> str:
    """The format PIL reads in the header of `path` (JPEG, PNG, ...), or an error for an image whose header
    claims more than PIL's MAX_IMAGE_PIXELS (a decompression bomb: a few KB of PNG can claim 50000 x 50000
    pixels), before any decoding."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            width, height = im.size
            fmt = str(im.format)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ValueError(f"{width} x {height} pixels is over PIL's MAX_IMAGE_PIXELS ({limit}): a decompression bomb?")
    return fmt


#: formats decoded by torchvision.io (faster); everything else by PIL. Chosen by the file's content, not its
#: name: torchvision's decode_image segfaulted on an 80-byte corrupt PNG, also when it was named .jpg
#: (found by tests/security/test_fuzz_parsers.py; kept as tests/security/crash.png), where PIL raises.
TORCHVISION_FORMATS = ("JPEG", "WEBP")


def decode(path: str) -> Tensor:
    """The image at `path` as a uint8 (3, H, W) RGB tensor (a GIF's first frame). The file is read once,
    whole, and decoded from memory: a chunk length that claims gigabytes cannot make a reader allocate them."""
    try:
        data = read_image_file(path)
        if image_size_ok(io.BytesIO(data)) in TORCHVISION_FORMATS:
            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        else:
            with Image.open(io.BytesIO(data)) as im:
                img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
    except Exception as exc:  # torchvision raises RuntimeError, PIL a zoo of its own
        raise DataError(f"cannot decode image {path}: {one_line(exc)}") from None
    if img.dtype != torch.uint8:  # 16-bit PNGs
        img = F.to_dtype(img, torch.uint8, scale=True)
    return img


def warn_unreadable(exc: DataError) -> None:
    """The one line naming a skipped file (once per file: callers keep count)."""
    print(f"sslkit: warning: skipping unreadable image: {exc}", file=sys.stderr, flush=True)


def resize_center_crop(img: Tensor, size: int) -> Tensor:
    """Resize so the short side is `size`, then crop the central size x size square."""
    if img.shape[-2:] != (size, size):
        img = F.resize(img, [size], antialias=True)
        img = F.center_crop(img, [size, size])
    return img


class ImageFolderDataset(Dataset):
    """Image files decoded on access; items are (uint8 3xHxW tensor, label), label -1 when unlabeled.

    Without a transform images are resized and center-cropped to `image_size` squares so batches stack;
    a transform receives the full decoded image instead. Paths are packed into one byte buffer so
    forked DataLoader workers do not copy them page by page (python lists of str do).
    """

    in_memory = False

    def __init__(self, paths: Sequence[str], targets: Tensor, classes: Sequence[str], image_size: int,
                 transform: Transform | None = None, max_bad_fraction: float = 0.01) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        encoded = [os.fsencode(p) for p in paths]
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        self.targets = targets.long()
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.image_size = image_size
        self.transform = transform
        self.max_bad_fraction = float(max_bad_fraction)
        # 1 marks an unreadable file; shared memory, so DataLoader workers' marks reach the main process
        self._bad = torch.zeros(len(paths), dtype=torch.uint8).share_memory_()

    def path(self, index: int) -> str:
        """The file behind item `index`."""
        start = int(self._ends[index - 1]) if index > 0 else 0
        return os.fsdecode(self._blob[start: int(self._ends[index])].tobytes())

    @property
    def paths(self) -> list[str]:
        return [self.path(i) for i in range(len(self))]

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> tuple[object, int]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        img, index = self._readable(index)
        label = int(self.targets[index])
        if self.transform is not None:
            return self.transform(img), label
        return resize_center_crop(img, self.image_size), label

    def _readable(self, index: int) -> tuple[Tensor, int]:
        """Decode item `index`; an unreadable file is logged once, counted, and replaced by the next
        readable one, until more than `max_bad_fraction` of the images are unreadable (DataError)."""
        n = len(self)
        for attempt in range(n):
            i = (index + attempt) % n
            try:
                return decode(self.path(i)), i
            except DataError as exc:
                first = not self._bad[i]
                self._bad[i] = 1
                count = self.bad_count()
                if count > self.max_bad_fraction * n:
                    raise DataError(f"{exc} ({count} of {n} images unreadable, more than "
                                    f"data.max_bad_fraction={self.max_bad_fraction:g})") from None
                if first:
                    warn_unreadable(exc)
        raise DataError(f"none of the {n} images under data.root can be decoded")

    def bad_count(self) -> int:
        """How many files were found unreadable so far (in this process and its DataLoader workers)."""
        return int(self._bad[: len(self)].sum())

    def bad_paths(self) -> list[str]:
        return [self.path(i) for i in torch.nonzero(self._bad[: len(self)]).flatten().tolist()]

    def subset(self, n: int | None, seed: int = 0) -> ImageFolderDataset:
        """`n` images drawn per class in proportion, seeded (all when n is None): `stratified_indices`."""
        if n is None or n >= len(self):
            return self
        from sslkit.data.subset import stratified_indices

        idx = stratified_indices(self.targets, n, seed)
        return ImageFolderDataset([self.path(int(i)) for i in idx], self.targets[idx], self.classes,
                                  self.image_size, self.transform, self.max_bad_fraction)

    def with_transform(self, transform: Transform | None) -> ImageFolderDataset:
        """A copy that applies `transform` to the decoded uint8 images."""
        out = copy.copy(self)
        out.transform = transform
        return out


def _labeled(tree: _Tree, folder: Path, classes: list[str], train_dir: Path) -> tuple[list[str], list[int]]:
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    for name in tree.class_folders(folder):
        if name not in index:
            raise DataError(f"class folder {folder / name} has no counterpart in {train_dir}; "
                            "the evaluation folder must use the training class names")
        found = tree.list_images(folder / name)
        paths += found
        labels += [index[name]] * len(found)
    return paths, labels


def load_imagefolder(root: str | None, split: str, image_size: int,
                     max_bad_fraction: float = 0.01, symlinks: str = "inside") -> ImageFolderDataset:
    """`split` is "pretrain" (train/, else the flat folder), "train" (train/) or "test" (val/ or test/);
    `symlinks` is the rule for links under data.root (`_Tree`)."""
    if split not in ("pretrain", "train", "test"):
        raise ValueError(f"split must be 'pretrain', 'train' or 'test', got {split!r}")
    if not root:
        raise DataError("the imagefolder dataset needs data.root: a folder with train/<class>/ and "
                        "val/<class>/ image folders, or a flat folder of images for pretraining")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"image folder {base} does not exist (data.root)")
    tree = _Tree(base, symlinks)
    train_dir = base / "train"
    if train_dir.is_dir():
        classes = tree.class_folders(train_dir)
        if not classes:
            raise DataError(f"{train_dir} has no class folders; put the images in {train_dir}/<class>/")
        folder = train_dir
        if split == "test":
            evals = [base / d for d in EVAL_FOLDERS if (base / d).is_dir()]
            if not evals:
                raise DataError(f"{base} has train/ but no val/ (or test/) class folders for evaluation")
            folder = evals[0]
        paths, labels = _labeled(tree, folder, classes, train_dir)
    else:
        if split != "pretrain":
            raise DataError(f"{base} has no train/ folder: evaluation ({split} split) needs train/<class>/ "
                            "and val/<class>/ class folders; a flat folder of images is for pretraining only")
        folder, classes = base, []
        paths = tree.list_images(base)
        labels = [-1] * len(paths)
    tree.warn()
    if not paths:
        raise DataError(f"no images found under {folder} (looked for {', '.join(EXTENSIONS)})")
    return ImageFolderDataset(paths, torch.tensor(labels, dtype=torch.long), classes, image_size,
                              max_bad_fraction=max_bad_fraction)
