"""COCO-style box AP (101-point interpolation, IoU .50:.95) from pycocotools, and the same
numbers from torchmetrics' MeanAveragePrecision for the cross-check."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # pycocotools' Params.setDetParams
REC_THRESHOLDS = np.linspace(0.0, 1.0, 101)
Boxes = Sequence[dict[str, Tensor]]  # per image: boxes (N, 4) xyxy, labels (N,), scores (N,) for predictions


def _xywh(boxes: Tensor) -> list[list[float]]:
    b = boxes.double().reshape(-1, 4)
    return torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).tolist()


def coco_ap(predictions: Boxes, targets: Boxes) -> dict[str, float]:
    """AP, AP50, AP75 in percent from pycocotools' COCOeval (bbox). A target may carry `iscrowd`
    (VOC's "difficult" objects): detections matched to it neither count nor hurt."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    categories: set[int] = set()
    for i, t in enumerate(targets):
        images.append({"id": i})
        crowd = t.get("iscrowd", torch.zeros(len(t["labels"]), dtype=torch.long))
        for box, label, c in zip(_xywh(t["boxes"]), t["labels"].tolist(), crowd.tolist(), strict=True):
            categories.add(int(label))
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label), "bbox": box,
                                "area": box[2] * box[3], "iscrowd": int(c)})
    dets = []
    for i, p in enumerate(predictions):
        for box, label, score in zip(_xywh(p["boxes"]), p["labels"].tolist(), p["scores"].tolist(), strict=True):
            categories.add(int(label))
            dets.append({"image_id": i, "category_id": int(label), "bbox": box, "score": float(score)})
    if not annotations or not dets:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c} for c in sorted(categories)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap, ap50, ap75 = (max(0.0, float(v)) * 100 for v in ev.stats[:3])  # -1 means "no ground truth"
    return {"AP": ap, "AP50": ap50, "AP75": ap75}


def torchmetrics_ap(predictions: Boxes, targets: Boxes) -> dict[str, float]:
    """The same three numbers from torchmetrics' MeanAveragePrecision (box IoU, COCO thresholds)."""
    from torchmetrics.detection import MeanAveragePrecision

    # COCO's own float64 grids: torchmetrics' defaults come from a float32 torch.linspace (0.55 is
    # 0.550000011920929), which moves a recall that lands exactly on a grid point to the next one.
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=IOU_THRESHOLDS.tolist(),
                                  rec_thresholds=REC_THRESHOLDS.tolist())
    metric.update([{k: v for k, v in p.items() if k in ("boxes", "scores", "labels")} for p in predictions],
                  [{"boxes": t["boxes"], "labels": t["labels"],
                    "iscrowd": t.get("iscrowd", torch.zeros(len(t["labels"]), dtype=torch.long))} for t in targets])
    out = metric.compute()
    return {"AP": max(0.0, float(out["map"])) * 100, "AP50": max(0.0, float(out["map_50"])) * 100,
            "AP75": max(0.0, float(out["map_75"])) * 100}
