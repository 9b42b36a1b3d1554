"""COCO-style AP: pycocotools through our glue against a hand-computed value, and against torchmetrics'
MeanAveragePrecision on one random prediction set."""

from __future__ import annotations

import pytest
import torch

from sslkit.evaluation.detection.metric import coco_ap, torchmetrics_ap


def _t(boxes, labels, crowd=None):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
    if crowd is not None:
        t["iscrowd"] = torch.tensor(crowd)
    return t


def _p(boxes, labels, scores):
    return {**_t(boxes, labels), "scores": torch.tensor(scores)}


def test_ap_matches_hand_computed_101_point_interpolation():
    # 2 objects; detections by score: hit, miss, hit -> (recall, precision) (0.5, 1), (0.5, 0.5), (1, 2/3).
    # Interpolated precision is 1 for the 51 recall points 0..0.50 and 2/3 for the 50 points 0.51..1.
    target = [_t([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])]
    pred = [_p([[0, 0, 10, 10], [40, 40, 50, 50], [20, 20, 30, 30]], [1, 1, 1], [0.9, 0.8, 0.7])]
    expected = 100 * (51 * 1.0 + 50 * 2 / 3) / 101
    ap = coco_ap(pred, target)
    assert ap["AP50"] == pytest.approx(expected, abs=1e-6)
    assert ap["AP"] == pytest.approx(expected, abs=1e-6) and ap["AP75"] == pytest.approx(expected, abs=1e-6)
    # shift the second hit so its IoU is 0.6: it counts for thresholds .50 and .55 only
    pred[0]["boxes"][2] = torch.tensor([20.0, 20.0, 32.5, 30.0])  # IoU = 100/125 = 0.8
    ap = coco_ap(pred, target)
    one_hit = 100 * 51 / 101  # the first hit alone: precision 1 up to recall 0.5, then nothing
    assert ap["AP75"] == pytest.approx(expected, abs=1e-6)
    assert ap["AP"] == pytest.approx((7 * expected + 3 * one_hit) / 10, abs=1e-6)  # IoU .80 passes 7 of 10


def test_crowd_targets_neither_count_nor_penalise():
    target = [_t([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], crowd=[0, 1])]
    pred = [_p([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [0.9, 0.95])]
    assert coco_ap(pred, target)["AP"] == pytest.approx(100.0)


def test_pycocotools_glue_agrees_with_torchmetrics_on_random_predictions():
    g = torch.Generator().manual_seed(0)
    preds, targets = [], []
    for _ in range(12):
        n = int(torch.randint(1, 5, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 80
        wh = 8 + torch.rand(n, 2, generator=g) * 30
        gt = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(1, 4, (n,), generator=g)
        crowd = (torch.rand(n, generator=g) < 0.15).long()
        targets.append({"boxes": gt, "labels": labels, "iscrowd": crowd})
        jitter = gt + torch.randn(n, 4, generator=g) * 3  # near-misses at every IoU
        extra = torch.rand(2, 2, generator=g) * 80
        boxes = torch.cat([jitter, torch.cat([extra, extra + 20], 1)])
        boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], 1)
        plabels = torch.cat([torch.where(torch.rand(n, generator=g) < 0.8, labels, (labels % 3) + 1),
                             torch.randint(1, 4, (2,), generator=g)])
        preds.append({"boxes": boxes, "labels": plabels, "scores": torch.rand(n + 2, generator=g)})
    ours, theirs = coco_ap(preds, targets), torchmetrics_ap(preds, targets)
    assert 5 < ours["AP"] < 95, "the set must exercise partial matches"
    for key in ("AP", "AP50", "AP75"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-4)


def test_no_detections_scores_zero():
    target = [_t([[0, 0, 10, 10]], [1])]
    assert coco_ap([_p(torch.zeros(0, 4).tolist(), [], [])], target) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
