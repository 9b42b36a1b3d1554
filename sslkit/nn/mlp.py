"""MLPs from a list of layer specs: each layer's width, BatchNorm, activation and bias chosen per layer.

The projectors and predictors of the non-contrastive methods differ only in these choices, e.g.
BYOL (arXiv 2006.07733, Sec. 3.3): fc 4096 + BN + ReLU, fc 256; SimSiam (arXiv 2011.10566, Sec. 4.2):
3 x fc 2048 with BN, the last BN without affine parameters; Barlow Twins (arXiv 2103.03230, Sec. 4):
fc 8192 + BN + ReLU twice, fc 8192. A layer is Linear, then optionally BatchNorm1d, then optionally
the activation, so a head's checkpoint keys are `0.weight`, `1.weight`... as nn.Sequential numbers them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from sslkit.errors import ConfigError, suggestion

#: none: no BN; affine: learned scale and shift; scale: learned scale, shift fixed at 0 (SimCLR's last
#: BN, `center=False`); plain: no affine parameters (SimSiam's output BN, Barlow Twins' loss BN)
BN_KINDS = ("none", "affine", "scale", "plain")
ACTIVATIONS = ("none", "relu", "gelu")


@dataclass(frozen=True)
class LayerSpec:
    """One MLP layer: Linear(·, out_dim) [-> BatchNorm1d] [-> activation].

    `bias=None` gives the Linear a bias unless a BN follows it (the BN's shift, or its centring,
    makes a bias redundant), as SimCLR, SimSiam and Barlow Twins do.
    """

    out_dim: int
    bn: str = "none"
    activation: str = "none"
    bias: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.out_dim, bool) or not isinstance(self.out_dim, int) or self.out_dim < 1:
            raise ConfigError(f"a head layer's out_dim must be an integer >= 1, got {self.out_dim!r}")
        if self.bn not in BN_KINDS:
            raise ConfigError(f"head layer bn='{self.bn}' is invalid; {suggestion(str(self.bn), BN_KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"head layer activation='{self.activation}' is invalid; "
                              f"{suggestion(str(self.activation), ACTIVATIONS)}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | LayerSpec) -> LayerSpec:
        """From a mapping with `out_dim` and optionally `bn` (a kind, or true = affine / false = none),
        `activation` (null = none) and `bias`; unknown keys are a ConfigError."""
        if isinstance(cfg, LayerSpec):
            return cfg
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"a head layer must be a mapping with out_dim, bn, activation, bias; got {cfg!r}")
        names = [f.name for f in fields(cls)]
        for key in cfg:
            if key not in names:
                raise ConfigError(f"unknown head layer key '{key}'; {suggestion(str(key), names)}")
        if "out_dim" not in cfg:
            raise ConfigError(f"a head layer needs out_dim; got {dict(cfg)}")
        bn = cfg.get("bn", "none")
        bn = {True: "affine", False: "none", None: "none"}.get(bn, bn) if isinstance(bn, (bool, type(None))) else bn
        activation = cfg.get("activation", "none")
        bias = cfg.get("bias")
        if bias is not None and not isinstance(bias, bool):
            raise ConfigError(f"head layer bias must be true, false or null, got {bias!r}")
        return cls(out_dim=cfg["out_dim"], bn=str(bn), activation="none" if activation is None else str(activation),
                   bias=bias)


def build_mlp(in_dim: int, layers: Sequence[LayerSpec | Mapping[str, Any]]) -> nn.Sequential:
    """An nn.Sequential of the layers in order, on top of `in_dim` features."""
    if not layers:
        raise ConfigError("a head needs at least one layer")
    blocks: list[nn.Module] = []
    dim = in_dim
    for raw in layers:
        spec = LayerSpec.from_config(raw)
        bias = spec.bn == "none" if spec.bias is None else spec.bias
        blocks.append(nn.Linear(dim, spec.out_dim, bias=bias))
        if spec.bn != "none":
            bn = nn.BatchNorm1d(spec.out_dim, affine=spec.bn != "plain")
            if spec.bn == "scale":
                bn.bias.requires_grad_(False)  # the shift stays 0
            blocks.append(bn)
        if spec.activation == "relu":
            blocks.append(nn.ReLU(inplace=True))
        elif spec.activation == "gelu":
            blocks.append(nn.GELU())
        dim = spec.out_dim
    return nn.Sequential(*blocks)


def mlp_layers(hidden_dim: int, out_dim: int, num_layers: int, hidden_bn: str = "affine", last_bn: str = "none",
               activation: str = "relu") -> list[LayerSpec]:
    """(num_layers - 1) hidden layers [fc + BN + activation], then fc(out_dim) + `last_bn`."""
    if num_layers < 1:
        raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
    hidden = [LayerSpec(hidden_dim, hidden_bn, activation) for _ in range(num_layers - 1)]
    return [*hidden, LayerSpec(out_dim, last_bn)]


def predictor(dim: int, hidden_dim: int) -> nn.Sequential:
    """BYOL's q_θ (Sec. 3.3: 256 -> 4096 + BN + ReLU -> 256) and SimSiam's h (Sec. 4.2, 2048 -> 512 ->
    2048, no BN on the output): an MLP back to the embedding's own dimension."""
    return build_mlp(dim, mlp_layers(hidden_dim, dim, 2))
