"""Projection heads: MoCo v1's linear fc, the n-layer MLP of SimCLR / MoCo v2, and any per-layer MLP.

A plain nn.Sequential (rather than lightly's heads) so that checkpoint keys stay `0.weight`,
`2.weight`... and any depth or BN choice is one config value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from sslkit.errors import ConfigError
from sslkit.nn.mlp import build_mlp, mlp_layers


def build_head(cfg: Mapping[str, Any], in_dim: int) -> nn.Sequential:
    """`kind=linear`: fc(in, out). `kind=mlp`: (num_layers-1) x [fc(hidden) (+BN) ReLU], then fc(out) (+BN).
    `kind=layers`: `layers` is a list of layer specs (sslkit.nn.mlp.LayerSpec: out_dim, bn, activation,
    bias), one per layer, for the projectors of BYOL, SimSiam, Barlow Twins, VICReg, SwAV.

    `hidden_dim: null` is the backbone's feature dimension, as the official MoCo v2 code (`dim_mlp =
    fc.weight.shape[1]`: 2048 for ResNet-50, 512 for ResNet-18) and SimCLR. `batch_norm: true` is
    SimCLR's projection head (google-research/simclr `projection_head`): every fc without bias and
    followed by BN, the last BN without a learned shift (centre=False there: its bias stays 0 here).
    """
    kind = cfg.get("kind", "mlp")
    if kind == "layers":
        return build_mlp(in_dim, list(cfg.get("layers") or []))
    out_dim = int(cfg.get("out_dim", 128))
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    if kind != "mlp":
        raise ConfigError(f"unknown head.kind '{kind}'; valid: linear, mlp, layers")
    layers = int(cfg.get("num_layers", 2))
    if layers < 1:
        raise ConfigError(f"head.num_layers must be >= 1, got {layers}")
    hidden = cfg.get("hidden_dim")
    hidden = in_dim if hidden is None else int(hidden)
    if hidden < 1:
        raise ConfigError(f"head.hidden_dim must be >= 1 (or null: the feature dimension), got {hidden}")
    bn = bool(cfg.get("batch_norm", False))
    # SimCLR's last BN scales without a learned shift
    return build_mlp(in_dim, mlp_layers(hidden, out_dim, layers, "affine" if bn else "none", "scale" if bn else "none"))
