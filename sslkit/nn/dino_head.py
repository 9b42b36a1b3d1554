"""DINO's projection head (Caron et al., arXiv 2104.14294, Sec. 3.1 and appendix; official `DINOHead`):
an MLP (3 layers, hidden 2048, GELU, no BN by default) to a 256-d bottleneck, L2 normalisation, then a
weight-normalised linear layer without bias to K = 65536 dimensions. With `norm_last_layer=True` the
weight norm's g is fixed at 1, so each output unit's weight vector has unit length. Usage:

    head = DINOHead(384, out_dim=65536)
    logits = head(backbone(x))  # (N, K)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslkit.nn.mlp import LayerSpec, build_mlp


class WeightNormLinear(nn.Module):
    """y = x Wᵀ with each row W_k = g_k v_k / ||v_k|| (Salimans & Kingma 2016), no bias.

    The parameters are `weight_v` (K, D) and `weight_g` (K, 1), as `torch.nn.utils.weight_norm` names
    them; g starts at 1 and, with `fix_g=True` (DINO's `norm_last_layer`), takes no gradient.
    """

    def __init__(self, in_dim: int, out_dim: int, fix_g: bool = True) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))  # nn.Linear's default, as the official code
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fix_g)

    @property
    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / torch.linalg.vector_norm(self.weight_v, dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """MLP -> L2 normalise -> weight-normalised last layer (`last_layer`, what DINO freezes in epoch 1)."""

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, batch_norm: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        hidden = [LayerSpec(hidden_dim, "affine" if batch_norm else "none", "gelu", bias=True)
                  for _ in range(max(num_layers, 1) - 1)]
        self.mlp = build_mlp(in_dim, [*hidden, LayerSpec(bottleneck_dim, bias=True)])
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):  # official `_init_weights`: trunc_normal(std=.02), bias 0
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_g=norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
