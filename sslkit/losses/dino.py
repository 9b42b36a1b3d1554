"""DINO self-distillation (Caron et al., arXiv 2104.14294, eq. 1-2 and Algorithm 1):

    P_t(x) = softmax((g_t(x) - c) / τ_t),   P_s(x) = softmax(g_s(x) / τ_s),   τ_s = 0.1
    L = mean over pairs (x in global teacher crops, x' in student crops, x' != x) of H(P_t(x), P_s(x'))

with H(a, b) = -sum a log b averaged over the batch. Student crop v and teacher crop v are the same view
for v < number of teacher crops (the global crops come first), and those pairs are skipped, as the
official `DINOLoss`. The center c moves by `update_center` (eq. 4, momentum m = 0.9) after the loss;
τ_t warms up linearly from 0.04 to 0.07 over the first epochs (`teacher_temperature`). Usage:

    t = [teacher(v) for v in views[:2]]; s = [student(v) for v in views]
    loss = dino_loss(t, s, center, teacher_temperature(epoch, 30))
    center = update_center(center, t)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sslkit.devices import all_reduce_mean_

STUDENT_TEMP = 0.1  # τ_s, Sec. 3.1
TEACHER_TEMP = 0.04  # τ_t at the start of the warm-up (official `warmup_teacher_temp`)
FINAL_TEACHER_TEMP = 0.07  # τ_t after it (official `teacher_temp` for ViT-S/16 at 300 epochs)
CENTER_MOMENTUM = 0.9  # m, eq. 4


def dino_loss(teacher: Sequence[Tensor], student: Sequence[Tensor], center: Tensor,
              teacher_temp: float = TEACHER_TEMP, student_temp: float = STUDENT_TEMP) -> Tensor:
    """Cross-entropy H(P_t, P_s) averaged over every (teacher crop, other student crop) pair.

    `teacher`: the teacher head's raw outputs for the global crops, each (N, K) (no gradient is taken
    through them); `student`: the student's outputs for all crops, global first, each (N, K);
    `center`: (K,) or (1, K).
    """
    if len(teacher) > len(student):
        raise ValueError(f"{len(teacher)} teacher crops but only {len(student)} student crops; "
                         "the teacher's (global) crops must also be the student's first crops")
    if len(student) < 2:
        raise ValueError("DINO needs at least 2 crops: same-view pairs are excluded")
    t = torch.stack([x.detach() for x in teacher])  # (T, N, K)
    t = F.softmax((t - center.reshape(1, 1, -1)) / teacher_temp, dim=-1)
    total = t.new_zeros(())
    terms = 0
    for v, s in enumerate(student):
        log_p = F.log_softmax(s / student_temp, dim=-1)  # (N, K)
        others = [i for i in range(len(teacher)) if i != v]
        if others:
            total = total - (t[others] * log_p.unsqueeze(0)).sum(dim=-1).mean(dim=-1).sum()
            terms += len(others)
    return total / terms


@torch.no_grad()
def update_center(center: Tensor, teacher: Sequence[Tensor], momentum: float = CENTER_MOMENTUM) -> Tensor:
    """Eq. 4: m c + (1 - m) x mean of the teacher outputs over all crops and all ranks' rows; a new tensor."""
    rows = torch.cat([x.detach() for x in teacher])
    batch_center = rows.to(torch.promote_types(rows.dtype, torch.float32)).mean(dim=0)
    all_reduce_mean_([batch_center])  # every rank holds the same number of rows
    return center * momentum + batch_center.reshape(center.shape).to(center.dtype) * (1.0 - momentum)


def teacher_temperature(epoch: int, warmup_epochs: int, start: float = TEACHER_TEMP,
                        end: float = FINAL_TEACHER_TEMP) -> float:
    """τ_t at `epoch`: linear from `start` (epoch 0) to `end` (epoch warmup_epochs - 1), then `end`
    (official `np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)`)."""
    if epoch >= warmup_epochs:
        return end
    if warmup_epochs == 1:
        return start
    return start + (end - start) * max(epoch, 0) / (warmup_epochs - 1)
