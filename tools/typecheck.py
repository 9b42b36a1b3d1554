"""mypy over the installed layout: `methods/` and `evaluation/` install as `sslkit.methods` and
`sslkit.evaluation` (pyproject's package-dir), which mypy cannot map. So this mirrors the layout
with symlinks in `.typecheck/`, runs mypy there and prints paths as they are in the repository.

    python tools/typecheck.py        # `make lint` runs it; settings: [tool.mypy] in pyproject.toml
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / ".typecheck"
#: repository folder -> its place in the installed package
LAYOUT = {"sslkit": "sslkit", "methods": "sslkit/methods", "evaluation": "sslkit/evaluation"}


def mirror() -> None:
    """`.typecheck/sslkit/...`: one symlink per source file, in the installed layout."""
    shutil.rmtree(TREE, ignore_errors=True)
    for folder, target in LAYOUT.items():
        for path in (ROOT / folder).rglob("*.py"):
            link = TREE / target / path.relative_to(ROOT / folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)


def main() -> int:
    mirror()
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           str(TREE / "sslkit")], cwd=ROOT, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    for folder, target in sorted(LAYOUT.items(), key=lambda item: -len(item[1])):
        out = out.replace(f".typecheck/{target}/", f"{folder}/")
    print(out, end="")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
