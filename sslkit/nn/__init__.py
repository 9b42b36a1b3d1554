"""Network building blocks: backbones, projection heads and split BatchNorm."""

from sslkit.nn.backbones import build_backbone
from sslkit.nn.heads import build_head
from sslkit.nn.split_bn import SplitBatchNorm2d, convert_split_bn

__all__ = ["build_backbone", "build_head", "SplitBatchNorm2d", "convert_split_bn"]
