"""In-process references for the evaluation tests: features, kNN and the linear protocol computed here
from a run's saved checkpoint, to compare with what the CLI and the training monitor report."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from sslkit.config import as_dict, compose
from sslkit.data import build_dataset
from sslkit.evaluation import linear
from sslkit.evaluation.context import load_trained
from sslkit.evaluation.features import backbone_features, labels_and_classes
from sslkit.evaluation.knn import knn_accuracy

CPU = torch.device("cpu")


@cache
def offline(run_dir: Path, split: str, subset: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(features, labels, classes) of the `subset` images of `split`, from the saved checkpoint."""
    trained = load_trained(run_dir)
    data = as_dict(trained.config.data)
    ds = build_dataset(data, split, subset)
    labels, classes = labels_and_classes(ds)
    return backbone_features(trained.backbone, ds, data, CPU), labels, classes


def offline_knn(run_dir: Path, train: int, test: int, ks: list[int], temperature: float) -> dict:
    tr, tr_y, c1 = offline(run_dir, "train", train)
    te, te_y, c2 = offline(run_dir, "test", test)
    return knn_accuracy(tr, tr_y, te, te_y, ks, temperature, max(c1, c2))


def offline_protocol(run_dir: Path, overrides: list[str], train: int, test: int) -> tuple[float, float, float]:
    """(top1, top5, last epoch loss) of the linear protocol with the settings `overrides` compose to."""
    cfg = compose(overrides, extra=["eval=linear"])
    e = cfg.eval
    settings = linear.ProtocolSettings(int(e.epochs), float(e.lr), float(e.momentum), float(e.weight_decay),
                                       tuple(int(m) for m in e.milestones), int(e.batch_size), int(cfg.seed))
    trained = load_trained(run_dir)
    data = as_dict(trained.config.data)
    test_x, test_y, classes = offline(run_dir, "test", test)
    fc, last_loss = linear.train_protocol(trained.backbone, build_dataset(data, "train", train), data, classes,
                                          settings, CPU)
    top1, top5 = linear.classifier_accuracy(fc, test_x, test_y)
    return top1, top5, last_loss
