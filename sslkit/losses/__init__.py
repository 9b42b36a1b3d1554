"""Losses of the non-contrastive methods, one pure function (file) each: BYOL / SimSiam (negative
cosine), Barlow Twins, VICReg, DINO (with its center update and teacher temperature), SwAV (with
Sinkhorn-Knopp). The contrastive ones (InfoNCE, NT-Xent) live in sslkit.contrastive."""

from sslkit.losses.barlow_twins import barlow_twins_loss, cross_correlation
from sslkit.losses.dino import dino_loss, teacher_temperature, update_center
from sslkit.losses.negative_cosine import byol_loss, negative_cosine_similarity, symmetrized_negative_cosine
from sslkit.losses.sinkhorn import sinkhorn
from sslkit.losses.swav import swapped_prediction, swav_loss
from sslkit.losses.vicreg import vicreg_loss

__all__ = [
    "barlow_twins_loss",
    "byol_loss",
    "cross_correlation",
    "dino_loss",
    "negative_cosine_similarity",
    "sinkhorn",
    "swapped_prediction",
    "swav_loss",
    "symmetrized_negative_cosine",
    "teacher_temperature",
    "update_center",
    "vicreg_loss",
]
