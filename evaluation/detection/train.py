"""Fine-tuning and evaluation loops for a torchvision detector, resumable from one checkpoint file
and shardable over torchrun ranks (each rank takes every world-th image of a global batch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset

from sslkit.data.base import num_images
from sslkit.devices import World
from sslkit.engine.checkpoint import open_checkpoint, previous_of
from sslkit.errors import CheckpointError, ConfigError
from sslkit.files import remove_stale_temps, save_atomic

Predictions = list[dict[str, Tensor]]


@dataclass(frozen=True)
class FineTuneSettings:
    """SGD with linear warm-up and x0.1 steps at `milestones` (fractions of `steps`): the Detectron
    recipe the MoCo paper fine-tunes with (lr 0.02 at batch 16, momentum 0.9, wd 1e-4)."""

    steps: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    milestones: tuple[float, ...] = (0.75, 0.92)
    seed: int = 0

    def lr_at(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        decays = sum(step >= m * self.steps for m in self.milestones)
        return self.lr * warm * 0.1 ** decays


def batch_indices(step: int, batch_size: int, n: int, seed: int, world: World | None = None) -> list[int]:
    """Dataset indices of global batch `step`: epochs are seeded permutations laid end to end, so a
    resumed run sees exactly the batches an uninterrupted one would; a rank takes every world-th."""
    out = []
    for p in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(p, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        out.append(int(perm[pos]))
    return out if world is None or world.size == 1 else out[world.rank::world.size]


def _to(batch: Sequence[tuple[Tensor, dict[str, Tensor]]], device: torch.device) -> tuple[list[Tensor], list[dict]]:
    images = [img.to(device) for img, _ in batch]
    targets = [{k: v.to(device) for k, v in t.items()} for _, t in batch]
    return images, targets


def fine_tune(model: nn.Module, dataset: Dataset, s: FineTuneSettings, world: World, checkpoint: Path | None,
              checkpoint_every: int = 200, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train `model` (a torchvision detector in train mode, possibly DDP-wrapped) for `s.steps` global
    steps; resume from `checkpoint` when it exists and save to it every `checkpoint_every` steps."""
    if s.batch_size % world.size:
        raise ConfigError(f"eval.batch_size={s.batch_size} must be a multiple of the {world.size} processes")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    step, losses = 0, []
    if checkpoint is not None and world.is_main:
        remove_stale_temps(checkpoint, previous_of(checkpoint))  # what a kill inside a save left
    if checkpoint is not None and (checkpoint.is_file() or previous_of(checkpoint).is_file()):
        opened = open_checkpoint(checkpoint, check=False)  # falls back to its .prev.pt, as a run's does
        state = opened.checkpoint
        if state.get("settings") != _plain_settings(s):
            raise CheckpointError(f"{opened.file} was written with other fine-tuning settings; delete it or pass "
                                  "eval.resume=false")
        _unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step, losses = int(state["step"]), list(state["losses"])
        log(f"detect: resumed from {opened.file} at step {step}")
    n = num_images(dataset)
    if n == 0:
        raise ConfigError("the detection training set is empty")
    model.train()
    while step < s.steps:
        for group in opt.param_groups:
            group["lr"] = s.lr_at(step)
        images, targets = _to([dataset[i] for i in batch_indices(step, s.batch_size, n, s.seed, world)], world.device)
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        value = float(loss.detach())
        losses.append(round(value, 5))
        if value != value or abs(value) == float("inf"):
            raise ConfigError(f"detection loss is {value} at step {step}; lower eval.lr")
        if checkpoint is not None and world.is_main and (step % checkpoint_every == 0 or step == s.steps):
            save_atomic({"model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(), "step": step,
                         "rng": torch.get_rng_state(), "losses": losses, "settings": _plain_settings(s)}, checkpoint,
                        keep_previous=previous_of(checkpoint))
            remove_stale_temps(checkpoint, previous_of(checkpoint))
        if step % max(1, s.steps // 10) == 0 or step == s.steps:
            log(f"detect: step {step}/{s.steps} loss {value:.4f} lr {s.lr_at(step - 1):.4g}")
    return {"steps": step, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def _plain_settings(s: FineTuneSettings) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(s).items()}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int, world: World) -> tuple[Predictions, Predictions]:
    """Predictions and targets for every image (on the CPU), gathered from all ranks onto each one."""
    net = _unwrap(model)
    net.eval()
    preds: dict[int, dict[str, Tensor]] = {}
    targets: dict[int, dict[str, Tensor]] = {}
    mine = list(range(num_images(dataset)))[world.rank::world.size]
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        images, tgts = _to([dataset[i] for i in idx], world.device)
        for i, out, t in zip(idx, net(images), tgts, strict=True):
            preds[i] = {k: v.cpu() for k, v in out.items()}
            targets[i] = {k: v.cpu() for k, v in t.items()}
    if world.size > 1:
        gathered: list[Any] = [None] * world.size
        dist.all_gather_object(gathered, (preds, targets))
        for p, t in gathered:
            preds.update(p)
            targets.update(t)
    order = sorted(preds)
    return [preds[i] for i in order], [targets[i] for i in order]
