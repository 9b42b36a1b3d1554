"""The layering of docs/architecture.md holds: an import only points down (or within its layer), the
engine and evaluation never reach a concrete method, and no modules import each other in a cycle.

A static AST walk over every import statement, the ones inside functions included: fast, and blind
only to `importlib` strings (the registry's loading of the built-in methods).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: source folders and the package each installs as (pyproject.toml's package-dir)
SOURCES = {"sslkit": "sslkit", "methods": "sslkit.methods", "evaluation": "sslkit.evaluation"}
#: top to bottom; a module belongs to the layer of its longest matching prefix
LAYERS = (
    ("app", ("sslkit.app", "sslkit.__main__")),
    ("evaluation", ("sslkit.evaluation",)),
    ("engine", ("sslkit.engine",)),
    ("config", ("sslkit.config", "sslkit.build", "sslkit.params", "sslkit.overrides", "sslkit.plan")),
    ("methods", ("sslkit.methods", "sslkit.registry")),
    ("parts", ("sslkit.nn", "sslkit.contrastive", "sslkit.losses", "sslkit.augment", "sslkit.data")),
    ("bottom", ("sslkit", "sslkit.errors", "sslkit.devices", "sslkit.files")),
)
#: extra walls inside the rule: (importer prefix, imported prefix, the one module allowed through)
WALLS = (
    ("sslkit.engine", "sslkit.methods", "sslkit.methods.base"),  # the engine drives the base class only
    ("sslkit.engine", "sslkit.registry", None),
    ("sslkit.evaluation", "sslkit.methods", None),  # evaluation works from a checkpoint's backbone
    ("sslkit.evaluation", "sslkit.registry", None),
)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every .py file of the source folders."""
    out = {}
    for folder, package in SOURCES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((package, *parts))] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The sslkit modules `name` imports (`from pkg import mod` counts as pkg.mod when that is a module)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known}


def layer_of(module: str) -> int:
    best, index = -1, len(LAYERS)
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, index = len(p), i
    return index


def violations(root: Path = ROOT) -> list[str]:
    """Every import that points up a layer or through a wall, as `importer -> imported (why)`."""
    mods = modules(root)
    out = []
    for name, path in mods.items():
        for target in sorted(imports(name, path, set(mods))):
            if layer_of(target) < layer_of(name):
                out.append(f"{name} -> {target} ({LAYERS[layer_of(name)][0]} may not import "
                           f"{LAYERS[layer_of(target)][0]})")
            for src, dst, allowed in WALLS:
                if name.startswith(src) and target.startswith(dst) and target != allowed:
                    out.append(f"{name} -> {target} (wall: {src} may not import {dst})")
    return out


def cycles(root: Path = ROOT) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's SCCs)."""
    mods = modules(root)
    graph = {n: imports(n, p, set(mods)) - {n} for n, p in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_import_points_down():
    assert violations() == []


def test_no_import_cycles():
    assert cycles() == []


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) == len(LAYERS)] == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for folder in SOURCES:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    return tmp_path


def test_the_checks_catch_an_upward_import_a_wall_and_a_cycle(tmp_path):
    root = _tree(tmp_path, {
        "sslkit/app/__init__.py": "",
        "sslkit/app/cli.py": "def main(): ...\n",
        "sslkit/engine/__init__.py": "",
        "sslkit/engine/loop.py": "def fit():\n    from sslkit.app.cli import main\n",  # lazy, still caught
        "sslkit/engine/hack.py": "from sslkit.methods import mocov1\n",
        "methods/mocov1.py": "",
        "evaluation/a.py": "from . import b\n",
        "evaluation/b.py": "from .a import x\n",
        "sslkit/devices.py": "from sslkit.engine import loop\n",
    })
    found = violations(root)
    assert "sslkit.engine.loop -> sslkit.app.cli (engine may not import app)" in found
    assert "sslkit.engine.hack -> sslkit.methods.mocov1 (wall: sslkit.engine may not import sslkit.methods)" in found
    assert "sslkit.devices -> sslkit.engine.loop (bottom may not import engine)" in found
    assert len(found) == 3
    assert cycles(root) == [["sslkit.evaluation.a", "sslkit.evaluation.b"]]
