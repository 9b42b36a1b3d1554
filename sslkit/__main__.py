"""`python -m sslkit ...` and `torchrun -m sslkit ...` enter the same CLI as `sslkit`."""

from sslkit.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
