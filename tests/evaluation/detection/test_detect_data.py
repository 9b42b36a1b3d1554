"""Detection data: VOC XML and COCO JSON parsed from tiny files built here, and the mosaic set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from sslkit.errors import ConfigError, DataError
from sslkit.evaluation.detection.data import (
    VOC_CLASSES,
    CocoDataset,
    MosaicDataset,
    VOCDataset,
    build_detection_dataset,
)

VOC_XML = """<annotation><folder>VOC2007</folder><filename>000001.jpg</filename>
<size><width>40</width><height>30</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>25</ymax></bndbox></object>
<object><name>person</name><difficult>1</difficult><bndbox><xmin>11</xmin><ymin>1</ymin><xmax>40</xmax><ymax>30</ymax></bndbox></object>
</annotation>"""


def _voc(root: Path, year: str = "2007", image_set: str = "test") -> None:
    base = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "Annotations" / "000001.xml").write_text(VOC_XML)
    Image.new("RGB", (40, 30), (10, 20, 30)).save(base / "JPEGImages" / "000001.jpg")
    (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("000001\n")


def test_voc_xml_boxes_labels_and_difficult(tmp_path):
    _voc(tmp_path)
    ds = VOCDataset(str(tmp_path), "2007", "test", train=False)
    image, t = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32 and float(image.max()) <= 1
    # 1-based inclusive VOC corners: xmin/ymin shift by one, xmax/ymax stay
    assert t["boxes"].tolist() == [[1.0, 2.0, 20.0, 25.0], [10.0, 0.0, 40.0, 30.0]]
    assert t["labels"].tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("person") + 1] == [12, 15]
    assert t["iscrowd"].tolist() == [0, 1]


def test_voc_protocol_concatenates_years_and_missing_split_is_one_line(tmp_path):
    _voc(tmp_path, "2007", "trainval")
    _voc(tmp_path, "2012", "trainval")
    e = {"dataset": "voc", "root": str(tmp_path), "voc_train": ["2007-trainval", "2012-trainval"],
         "voc_test": ["2007-test"]}
    train, classes = build_detection_dataset(e, {}, "train", 0)
    assert len(train) == 2 and classes == 20
    with pytest.raises(DataError, match=r"VOC 2007 test not found: expected .*VOC2007/ImageSets/Main/test.txt") as err:
        build_detection_dataset(e, {}, "test", 0)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="eval.root"):
        build_detection_dataset({**e, "root": None}, {}, "test", 0)


def _coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "img"
    images.mkdir()
    for name, size in (("a.png", (32, 24)), ("b.png", (16, 16))):
        Image.new("RGB", size, (200, 100, 0)).save(images / name)
    ann = {"images": [{"id": 5, "file_name": "a.png", "width": 32, "height": 24},
                      {"id": 9, "file_name": "b.png", "width": 16, "height": 16}],
           "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "car"}],
           "annotations": [{"id": 1, "image_id": 5, "category_id": 7, "bbox": [1, 2, 10, 5], "area": 50, "iscrowd": 0},
                           {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 1},
                           {"id": 3, "image_id": 9, "category_id": 3, "bbox": [3, 3, 0, 2], "area": 0, "iscrowd": 0}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ann))
    return path, images


def test_coco_json_xywh_to_xyxy_and_contiguous_labels(tmp_path):
    ann, images = _coco(tmp_path)
    ds = CocoDataset(str(ann), str(images), train=False)
    assert len(ds) == 2 and ds.num_classes == 2 and ds.classes == ["car", "cat"]  # sorted by category id
    image, t = ds[0]  # image id 5
    assert image.shape == (3, 24, 32)
    assert t["boxes"].tolist() == [[1.0, 2.0, 11.0, 7.0], [0.0, 0.0, 4.0, 4.0]]
    assert t["labels"].tolist() == [2, 1] and t["iscrowd"].tolist() == [0, 1]
    _, t2 = ds[1]  # the zero-width box is dropped
    assert t2["boxes"].shape == (0, 4) and t2["labels"].tolist() == []


def test_coco_missing_or_foreign_files_are_one_line_errors(tmp_path):
    ann, images = _coco(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        CocoDataset(str(tmp_path / "nope.json"), str(images), train=False)
    with pytest.raises(DataError, match="image folder"):
        CocoDataset(str(ann), str(tmp_path / "nope"), train=False)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": [{"image_id": 1}]}))
    with pytest.raises(DataError, match="COCO-format"):
        CocoDataset(str(bad), str(images), train=False)
    with pytest.raises(ConfigError, match="eval.train_json"):
        build_detection_dataset({"dataset": "coco", "train_json": None, "train_images": None}, {}, "train", 0)


def _blocks(classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Solid 28x28 items: a pasted item is a flat square whose box is exactly its extent."""
    return torch.full((classes, 28, 28), 255, dtype=torch.uint8), torch.arange(classes)


def test_mosaic_is_deterministic_and_boxes_cover_the_pasted_squares():
    objects, labels = _blocks()
    ds = MosaicDataset(objects, labels, 8, canvas=64, min_objects=1, max_objects=4, scale=(0.2, 0.4), classes=3,
                       seed=3)
    again = MosaicDataset(objects, labels, 8, canvas=64, min_objects=1, max_objects=4, scale=(0.2, 0.4), classes=3,
                          seed=3)
    other = MosaicDataset(objects, labels, 8, canvas=64, min_objects=1, max_objects=4, scale=(0.2, 0.4), classes=3,
                          seed=4)
    counts = set()
    for i in range(8):
        img, boxes, lab = ds.render(i)
        img2, boxes2, lab2 = again.render(i)
        assert torch.equal(img, img2) and boxes == boxes2 and lab == lab2
        assert not torch.equal(img, other.render(i)[0])
        counts.add(len(boxes))
        assert 1 <= len(boxes) <= 4 and all(1 <= v <= 3 for v in lab)
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert 0.2 * 64 - 1 <= x1 - x0 <= 0.4 * 64 + 1
        # the last-pasted square is one flat colour; earlier ones may be partly covered (IoU < 0.3)
        x0, y0, x1, y1 = (int(v) for v in boxes[-1])
        patch = img[:, y0:y1, x0:x1].reshape(3, -1).float()
        assert float(patch.std(1).max()) == 0.0, "the box of the last item is exactly its solid square"
    assert len(counts) > 1
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and target["labels"].dtype == torch.int64


def test_mosaic_from_fashion_mnist_keeps_requested_classes():
    pytest.importorskip("pycocotools")
    from tests.conftest import FASHION

    if not FASHION.exists():
        pytest.skip("Fashion-MNIST not installed")
    e = {"dataset": "mosaic", "mosaic": {"canvas": 64, "min_objects": 2, "max_objects": 2, "min_scale": 0.3,
                                         "max_scale": 0.4, "classes": 2, "train_size": 5, "test_size": 3}}
    train, classes = build_detection_dataset(e, {"name": "fashion_mnist"}, "train", 0)
    test, _ = build_detection_dataset(e, {"name": "fashion_mnist"}, "test", 0)
    assert classes == 2 and len(train) == 5 and len(test) == 3
    labels = torch.cat([train[i][1]["labels"] for i in range(5)])
    assert set(labels.tolist()) <= {1, 2}
    assert not torch.equal(train[0][0], test[0][0])
