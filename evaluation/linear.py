"""Linear probes on a frozen backbone.

* fast: a softmax classifier on cached features, standardised with the training mean/std, trained
  with mini-batch SGD (Nesterov momentum 0.9, cosine schedule). Standardising is what lets an
  ordinary lr (0.1) work; seconds on a CPU for 60k x 512.
* protocol: MoCo's `main_lincls.py` (He et al. 2019, arXiv 1911.05722, Sec. 4.1): the backbone in
  eval mode, RandomResizedCrop + horizontal flip at train time, an fc layer initialised N(0, 0.01)
  with zero bias on the raw pooled features, SGD lr 30, momentum 0.9, weight decay 0, 100 epochs with
  x0.1 at epochs 60 and 80, batch 256. See docs/evaluation.md for why the lr is 30.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from sslkit.data.base import num_images
from sslkit.engine.progress import Progress
from sslkit.errors import ConfigError

from .knn import topk_accuracy


class BackboneChangedError(RuntimeError):
    """The frozen backbone's state_dict changed during linear evaluation (a bug, not a user error)."""


@dataclass(frozen=True)
class FastSettings:
    epochs: int = 100
    lr: float = 0.1
    batch_size: int = 1024
    weight_decay: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class ProtocolSettings:
    epochs: int = 100
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = (60, 80)
    batch_size: int = 256
    seed: int = 0


def standardise(train: Tensor, test: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Both sets standardised per dimension with the training mean and standard deviation."""
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(eps)
    return (train - mean) / std, (test - mean) / std


def train_fast(x: Tensor, y: Tensor, num_classes: int, settings: FastSettings,
               device: torch.device | None = None) -> nn.Linear:
    """A softmax linear classifier on fixed (standardised) features."""
    if settings.epochs < 1 or settings.lr <= 0 or settings.batch_size < 1:
        raise ConfigError(f"fast linear probe needs epochs >= 1, lr > 0 and batch size >= 1, got {settings}")
    device = device or torch.device("cpu")
    gen = torch.Generator().manual_seed(settings.seed)
    fc = nn.Linear(x.shape[1], num_classes).to(device)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(fc.weight.shape, generator=gen) * 0.01)
        fc.bias.zero_()
    n = x.shape[0]
    perm = torch.randperm(n, generator=gen)
    # Shuffle once, then visit the contiguous batches in a new random order every epoch: no gather
    # per step, which dominates the cost of such a small model.
    x, y = x[perm].to(device), y[perm].to(device)
    batch = min(settings.batch_size, n)
    starts = torch.arange(0, n, batch)
    opt = torch.optim.SGD(fc.parameters(), lr=settings.lr, momentum=0.9, nesterov=True,
                          weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.epochs * len(starts))
    with Progress(settings.epochs, "linear probe", "epoch") as bar:
        for _ in range(settings.epochs):
            for s in starts[torch.randperm(len(starts), generator=gen)].tolist():
                loss = F.cross_entropy(fc(x[s:s + batch]), y[s:s + batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            bar.update(1, f"loss={float(loss.detach()):.4g}")
    return fc


@torch.no_grad()
def classifier_accuracy(fc: nn.Module, x: Tensor, y: Tensor, batch_size: int = 8192) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) of `fc` on features `x`."""
    device = next(fc.parameters()).device
    logits = torch.cat([fc(x[s:s + batch_size].to(device)).cpu() for s in range(0, x.shape[0], batch_size)])
    return topk_accuracy(logits, y)


def fast_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
               settings: FastSettings, device: torch.device | None = None) -> dict[str, float]:
    """Standardise, train the classifier, and report train/test accuracy in percent."""
    start = time.perf_counter()
    tr, te = standardise(train_x.float(), test_x.float())
    fc = train_fast(tr, train_y, num_classes, settings, device)
    top1, top5 = classifier_accuracy(fc, te, test_y)
    train_top1, _ = classifier_accuracy(fc, tr, train_y)
    return {"top1": top1, "top5": top5, "train_top1": train_top1,
            "probe_seconds": time.perf_counter() - start}


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the state_dict (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(before: Mapping[str, Tensor], module: nn.Module) -> None:
    """Raise BackboneChangedError unless every tensor of the state_dict is bit-identical to `before`."""
    after = module.state_dict()
    changed = [k for k in before
               if k not in after or not torch.equal(before[k], after[k].detach().to(before[k].device))]
    changed += [k for k in after if k not in before]
    if changed:
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise BackboneChangedError(f"the frozen backbone changed during linear evaluation: "
                                   f"{', '.join(changed[:5])}{more}")


def crop_flip_recipe(data: Mapping[str, Any]) -> Any:
    """MoCo lincls train transform: RandomResizedCrop(size) (scale 0.08-1, ratio 3/4-4/3) + flip."""
    from sslkit.augment import AugRecipe

    return AugRecipe(image_size=int(data["image_size"]), crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3),
                     jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0, blur_sigma=(0.1, 2.0),
                     blur_kernel_frac=0.1, flip_p=0.5, mean=tuple(data["mean"]), std=tuple(data["std"]))


def _augmented_batches(dataset: Dataset, data: Mapping[str, Any], batch_size: int, device: torch.device,
                       gen: torch.Generator) -> Any:
    """One epoch of (augmented float images, labels) batches in random order."""
    recipe = crop_flip_recipe(data)
    if getattr(dataset, "in_memory", False):
        from sslkit.augment import BatchedAugment

        aug = BatchedAugment(recipe).to(device)
        images, targets = dataset.images, dataset.targets  # type: ignore[attr-defined]
        perm = torch.randperm(images.shape[0], generator=gen)
        for s in range(0, images.shape[0], batch_size):
            idx = perm[s:s + batch_size]
            yield aug(images[idx].to(device), generator=gen), targets[idx]
        return
    from torch.utils.data import DataLoader

    from sslkit.augment import per_image_transform
    from sslkit.data.base import collate

    loader = DataLoader(dataset.with_transform(per_image_transform(recipe)),  # type: ignore[attr-defined]
                        batch_size=batch_size, shuffle=True, generator=gen, collate_fn=collate,
                        num_workers=int(data.get("num_workers") or 0))
    for x, y in loader:
        yield x.to(device), y


def train_protocol(backbone: nn.Module, dataset: Dataset, data: Mapping[str, Any], num_classes: int,
                   settings: ProtocolSettings, device: torch.device) -> tuple[nn.Linear, float]:
    """Train the fc layer on the frozen backbone; return it and the last epoch's mean loss.

    Raises BackboneChangedError if any backbone parameter or buffer (e.g. BN statistics) changed."""
    if settings.epochs < 1:
        raise ConfigError(f"eval.epochs must be >= 1, got {settings.epochs}")
    gen = torch.Generator().manual_seed(settings.seed)
    backbone.to(device)
    before = snapshot(backbone)
    was_training = backbone.training
    flags = [p.requires_grad for p in backbone.parameters()]
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    fc: nn.Linear | None = None
    opt: torch.optim.Optimizer | None = None
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    last_loss = float("nan")
    bar = Progress(settings.epochs * num_images(dataset), "linear protocol", "img")
    try:
        for epoch in range(settings.epochs):
            total, count = 0.0, 0
            for x, y in _augmented_batches(dataset, data, settings.batch_size, device, gen):
                with torch.no_grad():
                    feats = backbone(x).float()
                if fc is None:  # created once the feature dimension is known
                    fc = nn.Linear(feats.shape[1], num_classes).to(device)
                    with torch.no_grad():
                        fc.weight.copy_(torch.randn(fc.weight.shape, generator=gen).mul_(0.01))
                        fc.bias.zero_()
                    opt = torch.optim.SGD(fc.parameters(), lr=settings.lr, momentum=settings.momentum,
                                          weight_decay=settings.weight_decay)
                    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(settings.milestones), gamma=0.1)
                assert opt is not None
                loss = F.cross_entropy(fc(feats), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * x.shape[0]
                count += x.shape[0]
                bar.update(x.shape[0], f"epoch {epoch + 1}/{settings.epochs} loss={total / count:.4g}")
            if sched is not None:
                sched.step()
            last_loss = total / max(count, 1)
    finally:
        bar.close()
        for p, flag in zip(backbone.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        backbone.train(was_training)
    assert_unchanged(before, backbone)
    if fc is None:
        raise ConfigError("linear protocol: the training split is empty")
    return fc, last_loss
