"""The training engine: a plain PyTorch loop that drives any SSLMethod (ContrastiveMethod is one)."""
