"""Contrastive building blocks: pure losses, the key queue, momentum encoders, shuffle-BN, gathers."""

from sslkit.contrastive.infonce import infonce_logits, infonce_loss
from sslkit.contrastive.momentum import ema_update, momentum_at
from sslkit.contrastive.ntxent import ntxent_loss
from sslkit.contrastive.queue import KeyQueue

__all__ = ["infonce_logits", "infonce_loss", "ntxent_loss", "KeyQueue", "ema_update", "momentum_at"]
