"""Detection datasets as (float image CHW in [0, 1], target) pairs, targets holding `boxes` (N, 4)
xyxy pixels, `labels` (N,) in 1..C (0 is background) and `iscrowd` (N,) (VOC "difficult")."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import ConcatDataset, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from sslkit.errors import ConfigError, DataError, one_line

Sample = tuple[Tensor, dict[str, Tensor]]
DATASETS = ("mosaic", "voc", "coco")
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def transforms(train: bool) -> Callable[..., Any]:
    """torchvision v2 detection transforms: horizontal flip for training (the Detectron recipe), then float."""
    steps: list[Any] = [v2.ToImage()]
    if train:
        steps.append(v2.RandomHorizontalFlip(0.5))
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)])


def _target(boxes: Sequence[Sequence[float]], labels: Sequence[int], crowd: Sequence[int],
            size: tuple[int, int]) -> dict[str, Any]:
    return {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                              format="XYXY", canvas_size=size),
            "labels": torch.tensor(labels, dtype=torch.int64), "iscrowd": torch.tensor(crowd, dtype=torch.int64)}


def _plain(sample: tuple[Any, dict[str, Any]]) -> Sample:
    image, target = sample
    return image.as_subclass(Tensor), {k: v.as_subclass(Tensor) for k, v in target.items()}


class MosaicDataset(Dataset):
    """Fashion-MNIST items pasted at varied scales on textured canvases: a detection set built offline.

    Image i is a pure function of (seed, split, i): the canvas is low-frequency colour noise plus a
    random stripe pattern; each of 1..max objects is an item resized to `scale` x canvas, tinted
    and alpha-blended with its own intensity, placed where it overlaps earlier boxes at IoU < 0.3.
    Boxes are the tight extent of the pasted pixels (alpha > 0.2)."""

    def __init__(self, objects: Tensor, labels: Tensor, size: int, *, canvas: int = 128, min_objects: int = 1,
                 max_objects: int = 6, scale: tuple[float, float] = (0.15, 0.5), classes: int = 10, seed: int = 0,
                 salt: int = 0, train: bool = False) -> None:
        keep = labels < classes
        self.objects, self.labels = objects[keep], labels[keep]
        if len(self.objects) == 0 or size < 1 or not 1 <= min_objects <= max_objects:
            raise ConfigError("mosaic needs objects, size >= 1 and 1 <= min_objects <= max_objects")
        self.size, self.canvas, self.min_objects, self.max_objects = size, canvas, min_objects, max_objects
        self.scale, self.num_classes, self.seed, self.salt = scale, classes, seed, salt
        self.transform = transforms(train)

    def __len__(self) -> int:
        return self.size

    def _background(self, rng: np.random.Generator) -> Tensor:
        c = self.canvas
        low = F.interpolate(torch.from_numpy(rng.random((1, 3, 4, 4), dtype=np.float32)), size=(c, c),
                            mode="bicubic", align_corners=False)[0]
        yy, xx = torch.meshgrid(torch.arange(c, dtype=torch.float32), torch.arange(c, dtype=torch.float32),
                                indexing="ij")
        angle, freq = rng.uniform(0, np.pi), rng.uniform(0.1, 0.6)
        stripes = torch.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
        return (0.25 + 0.35 * low + 0.1 * stripes).clamp(0, 1)

    def render(self, index: int) -> tuple[Tensor, list[list[float]], list[int]]:
        """The uint8 image (3, canvas, canvas), its boxes and labels (1..classes)."""
        rng = np.random.default_rng([self.seed, self.salt, index])
        image = self._background(rng)
        c = self.canvas
        boxes: list[list[float]] = []
        labels: list[int] = []
        for _ in range(int(rng.integers(self.min_objects, self.max_objects + 1))):
            j = int(rng.integers(len(self.objects)))
            side = max(8, int(round(rng.uniform(*self.scale) * c)))
            alpha = F.interpolate(self.objects[j][None, None].float() / 255, size=(side, side), mode="bilinear",
                                  align_corners=False)[0, 0].clamp(0, 1)
            rows, cols = torch.nonzero(alpha.amax(1) > 0.2).flatten(), torch.nonzero(alpha.amax(0) > 0.2).flatten()
            if len(rows) == 0:
                continue
            for _try in range(10):
                y, x = (int(v) for v in rng.integers(0, c - side + 1, size=2))
                box = [x + float(cols[0]), y + float(rows[0]), x + float(cols[-1]) + 1, y + float(rows[-1]) + 1]
                if all(_iou(box, b) < 0.3 for b in boxes):
                    color = torch.from_numpy(rng.uniform(0.5, 1.0, size=3).astype(np.float32))
                    if rng.random() < 0.5:  # dark objects on the lighter canvases too
                        color = 1 - color
                    patch = image[:, y:y + side, x:x + side]
                    image[:, y:y + side, x:x + side] = patch * (1 - alpha) + alpha * color[:, None, None]
                    boxes.append(box)
                    labels.append(int(self.labels[j]) + 1)
                    break
        return (image * 255).round().to(torch.uint8), boxes, labels

    def __getitem__(self, index: int) -> Sample:
        image, boxes, labels = self.render(index)
        return _plain(self.transform(image, _target(boxes, labels, [0] * len(labels), (self.canvas,) * 2)))


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


#: a VOC annotation is about 1 KB; a larger XML file is refused before it is parsed
MAX_XML_BYTES = 1 << 20


def read_voc_xml(path: Path) -> dict[str, Any]:
    """One VOC annotation file in torchvision's dict layout, parsed by defusedxml with DTDs forbidden:
    no entity expansion (billion laughs), no external entities, at most MAX_XML_BYTES."""
    import defusedxml.ElementTree as SafeET
    from defusedxml import DefusedXmlException
    from torchvision.datasets import VOCDetection

    try:
        if path.stat().st_size > MAX_XML_BYTES:
            raise ValueError(f"over {MAX_XML_BYTES >> 20} MiB")
        root = SafeET.fromstring(path.read_bytes(), forbid_dtd=True)
    except (OSError, ValueError, SyntaxError, DefusedXmlException) as exc:  # ParseError is a SyntaxError
        raise DataError(f"{path} is not a VOC annotation ({type(exc).__name__}: {one_line(exc)})") from None
    parser = VOCDetection.__new__(VOCDetection)  # parse_voc_xml uses no state: no dataset folder needed
    parsed: dict[str, Any] = parser.parse_voc_xml(root)
    return parsed


def voc_target(annotation: Mapping[str, Any], classes: Sequence[str] = VOC_CLASSES) -> tuple[list[list[float]],
                                                                                           list[int], list[int]]:
    """Boxes, labels (1..20) and difficult flags from a parsed VOC XML (torchvision's dict layout).
    VOC corners are 1-based inclusive pixels; like Detectron, xmin and ymin are shifted by -1.
    A missing field or a non-number is a one-line DataError."""
    try:
        objects = annotation["annotation"].get("object", [])
        boxes, labels, difficult = [], [], []
        for obj in objects if isinstance(objects, list) else [objects]:
            name = str(obj["name"]).strip()
            if name not in classes:
                raise DataError(f"VOC object class {name[:80]!r} is not one of the 20 VOC classes")
            b = obj["bndbox"]
            box = [float(b["xmin"]) - 1, float(b["ymin"]) - 1, float(b["xmax"]), float(b["ymax"])]
            if not all(np.isfinite(box)):
                raise ValueError(f"box {box} is not finite")
            boxes.append(box)
            labels.append(classes.index(name) + 1)
            difficult.append(int(obj.get("difficult", 0) or 0))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"a VOC annotation lacks or garbles a field ({type(exc).__name__}: {one_line(exc)})") from None
    return boxes, labels, difficult


def open_image(path: Path) -> Any:
    """A PIL RGB image, or a one-line DataError: unreadable, or a header over PIL's MAX_IMAGE_PIXELS
    (a decompression bomb, checked before decoding: sslkit.data.imagefolder.image_size_ok)."""
    import io

    from PIL import Image

    from sslkit.data.imagefolder import image_size_ok, read_image_file

    try:
        data = read_image_file(str(path))
        image_size_ok(io.BytesIO(data))
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except Exception as exc:  # PIL raises a zoo of errors on hostile files
        raise DataError(f"cannot read image {path}: {one_line(exc)}") from None


def inside(folder: Path, name: Any, what: str) -> Path:
    """`folder / name` for a file name read from an annotation file: a relative path that stays inside
    `folder` (no absolute path, no `..` out of it), or a one-line DataError."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise DataError(f"{what}: file name {name!r} is not a file name")
    path = folder / name
    if Path(name).is_absolute() or not path.resolve().is_relative_to(folder.resolve()):
        raise DataError(f"{what}: file name {name!r} points outside {folder}; annotation file names must be "
                        "relative paths inside the image folder")
    return path


class VOCDataset(Dataset):
    """One `year`/`image_set` of PASCAL VOC in its VOCdevkit layout, parsed by torchvision's VOCDetection."""

    num_classes = len(VOC_CLASSES)

    def __init__(self, root: str, year: str, image_set: str, train: bool) -> None:
        from torchvision.datasets import VOCDetection

        base = Path(root).expanduser()
        expected = base / "VOCdevkit" / f"VOC{year}"
        if not (expected / "ImageSets" / "Main" / f"{image_set}.txt").is_file():
            raise DataError(f"VOC {year} {image_set} not found: expected {expected}/ImageSets/Main/{image_set}.txt "
                            f"(eval.root must be the folder that holds VOCdevkit)")
        self.voc = VOCDetection(str(base), year=year, image_set=image_set, download=False)
        for folder, files in ((expected / "JPEGImages", self.voc.images), (expected / "Annotations", self.voc.targets)):
            for f in files:  # ids from ImageSets/Main/*.txt become paths: they must stay in their folder
                inside(folder, Path(f).relative_to(folder).as_posix(), f"VOC {year} {image_set}")
        self.transform = transforms(train)

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int) -> Sample:
        image = open_image(Path(self.voc.images[index]))
        annotation = read_voc_xml(Path(self.voc.targets[index]))
        boxes, labels, difficult = voc_target(annotation)
        return _plain(self.transform(image, _target(boxes, labels, difficult, (image.height, image.width))))


class CocoDataset(Dataset):
    """Any COCO-format annotation JSON plus its image folder (bbox annotations; crowd regions kept as
    `iscrowd`); category ids map to labels 1..C in sorted id order."""

    def __init__(self, annotations: str, images: str, train: bool) -> None:
        from pycocotools.coco import COCO

        ann, img_dir = Path(annotations).expanduser(), Path(images).expanduser()
        if not ann.is_file():
            raise DataError(f"COCO annotation file {ann} does not exist")
        if not img_dir.is_dir():
            raise DataError(f"COCO image folder {img_dir} does not exist")
        import contextlib
        import io

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(ann))
            self.ids = sorted(self.coco.imgs)
            self.category_ids = sorted(self.coco.cats)
        except (ValueError, KeyError, TypeError, AssertionError, AttributeError, IndexError, RecursionError) as exc:
            raise DataError(f"{ann} is not a COCO-format JSON ({type(exc).__name__}: {one_line(exc)[:200]})") from None
        if not self.ids or not self.category_ids:
            raise DataError(f"{ann} has no images or no categories")
        self.num_classes = len(self.category_ids)
        self.classes = [str(self.coco.cats[c].get("name", c)) for c in self.category_ids]
        self.images = img_dir
        self.files = [inside(img_dir, self.coco.imgs[i].get("file_name"), str(ann)) for i in self.ids]
        for i in range(len(self.ids)):  # every annotation checked now: a bad one is one line, not a worker crash
            self.target(i)
        self.transform = transforms(train)

    def __len__(self) -> int:
        return len(self.ids)

    def target(self, index: int) -> tuple[list[list[float]], list[int], list[int]]:
        """Boxes (xyxy), labels and crowd flags of image `index`."""
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=self.ids[index]))
        boxes, labels, crowd = [], [], []
        try:
            for a in anns:
                x, y, w, h = (float(v) for v in a["bbox"])
                if not all(np.isfinite((x, y, w, h))):
                    raise ValueError(f"bbox {a['bbox']} is not finite")
                if w <= 0 or h <= 0:
                    continue
                boxes.append([x, y, x + w, y + h])
                labels.append(self.category_ids.index(a["category_id"]) + 1)
                crowd.append(int(a.get("iscrowd", 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"COCO image {self.ids[index]}: an annotation lacks or garbles a field "
                            f"({type(exc).__name__}: {one_line(exc)[:200]})") from None
        return boxes, labels, crowd

    def __getitem__(self, index: int) -> Sample:
        image = open_image(self.files[index])
        boxes, labels, crowd = self.target(index)
        return _plain(self.transform(image, _target(boxes, labels, crowd, (image.height, image.width))))


def _mosaic(e: Mapping[str, Any], data: Mapping[str, Any], split: str, seed: int) -> MosaicDataset:
    from sslkit.data.idx import load_idx_dataset

    m = e["mosaic"]
    items = load_idx_dataset("fashion_mnist", data.get("root") if data.get("name") == "fashion_mnist" else None,
                             "test" if split == "test" else "train")
    return MosaicDataset(items.images[:, 0], items.targets, int(m["test_size" if split == "test" else "train_size"]),
                         canvas=int(m["canvas"]), min_objects=int(m["min_objects"]),
                         max_objects=int(m["max_objects"]), scale=(float(m["min_scale"]), float(m["max_scale"])),
                         classes=int(m["classes"]), seed=seed, salt=1 if split == "test" else 0,
                         train=split == "train")


def build_detection_dataset(e: Mapping[str, Any], data: Mapping[str, Any], split: str,
                            seed: int) -> tuple[Dataset, int]:
    """The `split` ("train" or "test") of `eval.dataset` and its number of object classes."""
    name = str(e["dataset"])
    if name not in DATASETS:
        raise ConfigError(f"eval.dataset={name}; valid: {', '.join(DATASETS)}")
    train = split == "train"
    if name == "mosaic":
        ds = _mosaic(e, data, split, seed)
        return ds, ds.num_classes
    if name == "voc":
        if not e.get("root"):
            raise ConfigError("eval.dataset=voc needs eval.root=<the folder that holds VOCdevkit>")
        parts = []
        for spec in e["voc_train" if train else "voc_test"]:
            year, _, image_set = str(spec).partition("-")
            parts.append(VOCDataset(str(e["root"]), year, image_set or "trainval", train))
        return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), len(VOC_CLASSES)
    ann, images = e[f"{split}_json"], e[f"{split}_images"]
    if not ann or not images:
        raise ConfigError(f"eval.dataset=coco needs eval.{split}_json=<file> and eval.{split}_images=<folder>")
    coco = CocoDataset(str(ann), str(images), train)
    return coco, coco.num_classes
