"""SwAV's prototypes (Caron et al., arXiv 2006.09882, Sec. 3.1): a linear layer without bias whose K
rows c_k are kept on the unit sphere. The official `main_swav.py` L2-normalises them before every
training step (`normalize_prototypes_`); the scores zᵀC are then cosine similarities, since the
input is normalised too. Usage:

    normalize_prototypes_(model.prototypes)  # at the start of each step
    scores = model.prototypes(projector(f(x)))  # (N, K)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Prototypes(nn.Linear):
    """K prototypes of dimension D (3000 for ImageNet, Sec. 4); `forward(z)` = normalize(z) Cᵀ."""

    def __init__(self, dim: int, n_prototypes: int = 3000) -> None:
        super().__init__(dim, n_prototypes, bias=False)
        normalize_prototypes_(self)

    def forward(self, z: Tensor) -> Tensor:
        return super().forward(F.normalize(z, dim=-1))


@torch.no_grad()
def normalize_prototypes_(layer: nn.Linear) -> None:
    """Put each row of `layer.weight` on the unit sphere, in place (no gradient, same Parameter)."""
    layer.weight.copy_(F.normalize(layer.weight, dim=1))
