"""sslkit: self-supervised contrastive learning for images (MoCo v1/v2, SimCLR)."""

__version__ = "0.1.0"
