"""Projection heads: MoCo v1's linear fc, and the n-layer MLP of SimCLR / MoCo v2.

A plain nn.Sequential (rather than lightly's heads) so that checkpoint keys stay `0.weight`,
`2.weight`... and any depth or BN choice is one config value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from sslkit.errors import ConfigError


def build_head(cfg: Mapping[str, Any], in_dim: int) -> nn.Sequential:
    """`kind=linear`: fc(in, out). `kind=mlp`: (num_layers-1) x [fc(hidden) (+BN) ReLU], then fc(out).

    Defaults follow MoCo v2 (arXiv 2003.04297 Sec. 2): hidden 2048, ReLU, out 128.
    """
    kind = cfg.get("kind", "mlp")
    out_dim = int(cfg.get("out_dim", 128))
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    if kind != "mlp":
        raise ConfigError(f"unknown head.kind '{kind}'; valid: linear, mlp")
    layers = int(cfg.get("num_layers", 2))
    if layers < 1:
        raise ConfigError(f"head.num_layers must be >= 1, got {layers}")
    hidden, bn = int(cfg.get("hidden_dim", 2048)), bool(cfg.get("batch_norm", False))
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        blocks.append(nn.Linear(dim, hidden, bias=not bn))
        if bn:
            blocks.append(nn.BatchNorm1d(hidden))
        blocks.append(nn.ReLU(inplace=True))
        dim = hidden
    blocks.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*blocks)
