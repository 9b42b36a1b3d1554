"""The docs cite what exists: every repository path and test name in README.md and docs/*.md is a real
file (or folder) and a real test function, and every figure in docs/benchmarks.md sits under a heading
that names the `benchmarks/` script which printed it (issue 22: cited tests had moved or never existed)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
#: top-level folders and files of this repository that a doc may cite
TOP = ("sslkit", "methods", "evaluation", "configs", "docs", "tests", "benchmarks", "tools", "mutation")
TOP_FILES = ("Makefile", "pyproject.toml", "README.md")
PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(TOP) + r")/[\w./-]*[\w/]|" + "|".join(
    re.escape(f) for f in TOP_FILES) + r")(::[\w\[\]-]+)?")
TEST_NAME = re.compile(r"`(test_[a-z0-9]+_\w+)`")  # a test's name (config keys like `test_size` have one `_`)
TEST_FILE = re.compile(r"(?<![\w/.-])([\w/]*test_\w+\.py)(::[\w\[\]-]+)?")
#: paths a doc cites that are not in the repository on purpose
NOT_FILES = {
    "methods/byol.py": "docs/adding_a_method.md: the files a new method adds",
    "configs/method/byol.yaml": "ditto",
    "tests/methods/test_byol.py": "ditto",
    "mutation/out/": "written by `make mutation`",
}


def _spans(text: str) -> list[str]:
    """Inline code spans and fenced code blocks: where a doc cites a path or a test."""
    fenced = re.findall(r"```.*?```", text, flags=re.S)
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    return fenced + re.findall(r"`[^`\n]+`", rest) + re.findall(r"\]\(([^)\s]+)\)", rest)


def cited_paths(text: str) -> set[tuple[str, str | None]]:
    """(path, test name or None) for every repository path and test file the doc cites."""
    out = set()
    for span in _spans(text):
        for m in [*PATH.finditer(span), *TEST_FILE.finditer(span)]:
            path, test = m.group(1).rstrip("."), m.group(2)
            if any(c in path for c in "*<>{}") or "..." in path:
                continue  # a pattern or a placeholder, not a file
            out.add((path, test[2:].split("[")[0] if test else None))
    return out


def resolve(path: str) -> Path | None:
    """The cited file: from the repository root, or a test file from tests/ (docs/testing.md's tables
    write `methods/test_moco_wiring.py`), or a bare test file name found once under tests/."""
    for base in (ROOT, ROOT / "tests"):
        if (base / path).exists():
            return base / path
    if "/" not in path and path.endswith(".py"):
        found = list((ROOT / "tests").rglob(path))
        if len(found) == 1:
            return found[0]
    return None


@cache
def defined_tests() -> frozenset[str]:
    names = set()
    for f in (ROOT / "tests").rglob("*.py"):
        text = f.read_text()
        names.update(re.findall(r"^\s*(?:async )?def (test_\w+)", text, flags=re.M))
        for targets in re.findall(r"^((?:test_\w+\s*,\s*)*test_\w+)\s*=", text, flags=re.M):
            names.update(t.strip() for t in targets.split(","))
    return frozenset(names)


def _defines(path: Path, name: str) -> bool:
    text = path.read_text()
    return re.search(rf"^\s*def {re.escape(name)}\b|^(?:test_\w+\s*,\s*)*{re.escape(name)}\b[\w\s,]*=", text,
                     flags=re.M) is not None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_path_and_test_exists(doc: Path):
    text = doc.read_text()
    missing = []
    for path, test in sorted(cited_paths(text), key=str):
        if path in NOT_FILES:
            continue
        target = resolve(path)
        if target is None:
            missing.append(path)
        elif test is not None and not (target.is_file() and _defines(target, test)):
            missing.append(f"{path}::{test}")
    missing += [name for name in sorted(set(TEST_NAME.findall(text))) if name not in defined_tests()]
    assert not missing, f"{doc.name} cites what does not exist: {missing}"


def benchmark_sections(text: str) -> list[tuple[str, str]]:
    """(heading path, body) of every section of docs/benchmarks.md that holds a table of figures."""
    out, heads, body = [], [], []

    def flush() -> None:
        if any(re.match(r"\|.*\d.*\|", line) and not set(line) <= set("|-: ") for line in body):
            out.append((" / ".join(heads), "\n".join(body)))

    for line in text.splitlines():
        m = re.match(r"(#+) (.*)", line)
        if m:
            flush()
            level = len(m.group(1))
            heads = [*heads[: level - 1], m.group(2)]
            body = []
        else:
            body.append(line)
    flush()
    return out


def test_every_benchmark_figure_names_the_script_that_printed_it():
    """A table of figures must name a `benchmarks/` script (or `make` / `sslkit` command, or a test)
    in its section or in a heading above it, and the script must exist."""
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    sections = benchmark_sections(text)
    assert len(sections) > 5
    orphans = []
    for heads, body in sections:
        where = heads + "\n" + body
        scripts = re.findall(r"benchmarks/[\w/.-]+\.(?:py|sh)", where)
        if not scripts and not re.search(r"`(?:make \w+|sslkit [^`]+|[^`]*pytest[^`]*)`", where):
            orphans.append(heads)
        for script in scripts:
            assert (ROOT / script).is_file(), f"{heads}: {script} does not exist"
    assert not orphans, f"figures with no script or command that printed them: {orphans}"


def test_the_checks_catch_a_bad_citation():
    """The checks above fail on a doc that cites a missing file, a missing test, or a figure without a script."""
    bad = "See `tests/nowhere/test_gone.py` and `tests/test_layers.py::test_no_such_test`, `test_not_a_test`."
    paths = cited_paths(bad)
    assert ("tests/nowhere/test_gone.py", None) in paths and resolve("tests/nowhere/test_gone.py") is None
    assert ("tests/test_layers.py", "test_no_such_test") in paths
    assert not _defines(ROOT / "tests" / "test_layers.py", "test_no_such_test")
    assert "test_not_a_test" not in defined_tests()
    sections = benchmark_sections("# B\n## Speed\n\n| a | b |\n|---|---|\n| x | 1.5 |\n")
    assert sections == [("B / Speed", "\n| a | b |\n|---|---|\n| x | 1.5 |")]
    assert "benchmarks/" not in sections[0][1]
