"""Network building blocks: backbones, projection heads (per-layer MLPs, predictors, DINO's head, SwAV's
prototypes), split BatchNorm and gradient edits."""

from sslkit.nn.backbones import build_backbone
from sslkit.nn.dino_head import DINOHead, WeightNormLinear
from sslkit.nn.gradients import cancel_gradients_, clip_gradients_
from sslkit.nn.heads import build_head
from sslkit.nn.mlp import LayerSpec, build_mlp, mlp_layers, predictor
from sslkit.nn.prototypes import Prototypes, normalize_prototypes_
from sslkit.nn.split_bn import SplitBatchNorm2d, convert_split_bn

__all__ = ["build_backbone", "build_head", "SplitBatchNorm2d", "convert_split_bn", "LayerSpec", "build_mlp",
           "mlp_layers", "predictor", "DINOHead", "WeightNormLinear", "Prototypes", "normalize_prototypes_",
           "clip_gradients_", "cancel_gradients_"]
