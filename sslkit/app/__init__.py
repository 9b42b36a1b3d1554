"""The app layer: the `sslkit` commands (cli, train, demo, export, evaluate, batch-compare, study).

It sits on top of everything and nothing imports it (docs/architecture.md; tests/test_layers.py).
"""
