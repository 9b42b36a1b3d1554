"""The training engine: a plain PyTorch loop that drives any ContrastiveMethod."""
