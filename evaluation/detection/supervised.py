"""The supervised baseline of the comparison: the encoder trained as a classifier (cross-entropy on
the labels of the images the self-supervised runs pretrain on), the paper's "supervised" row in miniature."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sslkit.data import build_dataset
from sslkit.data.base import num_images


def pretrain_supervised(backbone: nn.Module, dim: int, data: Mapping[str, Any], steps: int, batch_size: int,
                        lr: float, seed: int, device: torch.device) -> dict[str, float]:
    """SGD (momentum 0.9, wd 1e-4, cosine lr) on `data`'s labelled train split, images resized to
    `data.image_size` and normalised with its mean/std, random horizontal flips; trains in place."""
    ds = build_dataset(data, "train", data.get("subset"))
    n = num_images(ds)
    num_classes = int(getattr(ds, "num_classes", 0)) or 10
    fc = nn.Linear(dim, num_classes).to(device)
    backbone.to(device).train()
    params = [*backbone.parameters(), *fc.parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    mean = torch.tensor(list(data["mean"]), device=device).view(1, 3, 1, 1)
    std = torch.tensor(list(data["std"]), device=device).view(1, 3, 1, 1)
    size = int(data["image_size"])
    loss = torch.zeros(())
    correct = 0
    for _ in range(steps):
        idx = torch.randint(n, (batch_size,), generator=gen).tolist()
        items = [ds[i] for i in idx]
        x = torch.stack([img for img, _ in items]).to(device).float() / 255
        y = torch.tensor([label for _, label in items], device=device)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) if x.shape[-1] != size else x
        flip = torch.rand(len(x), generator=gen) < 0.5
        x[flip.to(device)] = x[flip.to(device)].flip(-1)
        logits = fc(backbone((x - mean) / std))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        correct = int((logits.argmax(1) == y).sum())
    return {"supervised_steps": steps, "supervised_last_loss": round(float(loss), 4),
            "supervised_last_batch_acc": round(100 * correct / batch_size, 2)}
