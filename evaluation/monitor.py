"""Online kNN monitor: the weighted-kNN accuracy of the encoder during pretraining (as in MoCo's
CIFAR demo and InstDisc, Wu et al. 2018, arXiv 1805.01978), logged every few epochs."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from sslkit.config import as_dict
from sslkit.data import build_dataset

from .features import backbone_features, labels_and_classes
from .knn import DEFAULT_K, DEFAULT_TEMPERATURE, as_ks, knn_accuracy, reported_k


class KnnMonitor:
    """An epoch hook `(epoch, encoder) -> {"knn_top1": %}` on `cfg.trainer.monitor_subset` images,
    stratified by class, of the labelled "train" split (memory bank) and of the "test" split.

    k and T come from `cfg.eval` when it is the kNN group (k=200 when listed, else the largest),
    otherwise k=200, T=0.1; k is capped at the bank size. Features are computed under no_grad with
    the encoder in eval mode; its mode is restored, and gradients and RNG streams are not touched.
    """

    def __init__(self, cfg: DictConfig, device: torch.device, every: int) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.data = as_dict(cfg.data)
        self.device = device
        self.every = every
        self.subset = int(cfg.trainer.monitor_subset) if cfg.trainer.get("monitor_subset") else None
        ev = cfg.get("eval")
        if ev is not None and ev.get("name") == "knn":
            self.k, self.temperature = reported_k(as_ks(ev.k)), float(ev.temperature)
            self.batch_size = int(ev.get("batch_size", 512))
        else:
            self.k, self.temperature, self.batch_size = DEFAULT_K, DEFAULT_TEMPERATURE, 512
        # loaded now, so that a dataset without labels fails before training, not after an epoch
        self.splits = {split: build_dataset(self.data, split, self.subset) for split in ("train", "test")}
        for ds in self.splits.values():
            labels_and_classes(ds)

    def __call__(self, epoch: int, encoder: nn.Module) -> dict[str, float]:
        if epoch % self.every:
            return {}
        was_training = encoder.training
        try:
            feats, labels, classes = {}, {}, 0
            for split in ("train", "test"):
                ds = self.splits[split]
                feats[split] = backbone_features(encoder, ds, self.data, self.device, self.batch_size,
                                                   progress="none")
                labels[split], n = labels_and_classes(ds)
                classes = max(classes, n)
        finally:
            encoder.train(was_training)
        k = min(self.k, feats["train"].shape[0])
        acc = knn_accuracy(feats["train"], labels["train"], feats["test"], labels["test"], [k],
                           self.temperature, classes)[k]
        return {"knn_top1": acc["top1"]}
