"""Which tests of `make test` execute which line of the core: the map that picks each mutant's tests.

One in-process run of the default suite (`pytest -m 'not slow'`, exactly `make test`) under
coverage.py, with the coverage context switched to each test's node id, and `patch = subprocess` so
that lines run by the CLI tests' `python -m sslkit` children are measured too. A child's data file
appears while its test runs (tests run one at a time), so it is read and credited to that test
before the next one starts. Lines executed outside any test (imports during collection) are kept
under the node id "" ("import time").

    python mutation/covermap.py OUT.json [PATHS...]    # PATHS: the measured sources (default: the core)

COVERMAP_TESTS="tests/contrastive ..." narrows the run (a check of the map itself, not for mutants).

The JSON holds the test node ids, each test's duration in seconds, and for every measured file
(relative path) a map line -> indices of the tests that ran it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import coverage
import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ["sslkit", "methods", "evaluation"]


class Recorder:
    """A pytest plugin: one coverage context per test, children's data credited to the running test."""

    def __init__(self, cov: coverage.Coverage, data_dir: Path) -> None:
        self.cov, self.data_dir = cov, data_dir
        self.tests: list[str] = []
        self.durations: list[float] = []
        self.child_lines: dict[str, dict[int, set[int]]] = {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        index = len(self.tests)
        self.tests.append(item.nodeid)
        self.cov.switch_context(item.nodeid)
        start = time.perf_counter()
        yield
        self.durations.append(time.perf_counter() - start)
        self.cov.switch_context("")
        self.collect_children(index)

    def collect_children(self, index: int) -> None:
        mine = f".pid{os.getpid()}."
        for path in self.data_dir.glob("cov.*"):
            if mine in path.name:
                continue
            data = coverage.CoverageData(basename=str(path))
            try:
                data.read()
            except Exception:  # noqa: BLE001 - a child killed mid-write (the kill tests): skip its data
                path.unlink(missing_ok=True)
                continue
            for file in data.measured_files():
                lines = self.child_lines.setdefault(file, {})
                for line in data.lines(file) or []:
                    lines.setdefault(line, set()).add(index)
            path.unlink(missing_ok=True)


def merge(base: dict[str, Any], part: dict[str, Any], redone: list[str]) -> dict[str, Any]:
    """`base` with the tests of the files `redone` replaced by those in `part` (a run of just those files)."""
    def stale(nodeid: str) -> bool:
        return nodeid.split("::")[0] in redone

    keep = [i for i, t in enumerate(base["tests"]) if not stale(t)]
    renumber = {old: new for new, old in enumerate(keep)}
    offset = len(keep)
    tests = [base["tests"][i] for i in keep] + part["tests"]
    durations = [base["durations"][i] for i in keep] + part["durations"]
    files: dict[str, dict[str, list[int]]] = {}
    for file, lines in base["files"].items():
        files[file] = {n: [renumber.get(i, -1) if i >= 0 else -1 for i in hits if i < 0 or i in renumber]
                       for n, hits in lines.items()}
    for file, lines in part["files"].items():
        mine = files.setdefault(file, {})
        for n, hits in lines.items():
            mine[n] = sorted(set(mine.get(n, [])) | {i + offset if i >= 0 else -1 for i in hits})
    return {"tests": tests, "durations": durations, "files": files}


def build(out: Path, sources: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        rc = data_dir / "coveragerc"
        rc.write_text("[run]\npatch = subprocess\nparallel = true\n"
                      f"data_file = {data_dir / 'cov'}\nsource = {', '.join(str(ROOT / s) for s in sources)}\n")
        cov = coverage.Coverage(config_file=str(rc))
        recorder = Recorder(cov, data_dir)
        cov.start()
        try:
            code = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "not slow",
                                *os.environ.get("COVERMAP_TESTS", "tests").split()], plugins=[recorder])
        finally:
            cov.stop()
        if code != 0:
            raise SystemExit(f"the default suite failed (exit {code}): a mutant run needs a green suite")
        data = cov.get_data()
        files: dict[str, dict[int, set[int]]] = {}
        index = {nodeid: i for i, nodeid in enumerate(recorder.tests)}
        for file in data.measured_files():
            lines = files.setdefault(file, {})
            for line, contexts in (data.contexts_by_lineno(file) or {}).items():
                lines.setdefault(line, set()).update(index.get(c, -1) for c in contexts)
        for file, child in recorder.child_lines.items():
            lines = files.setdefault(file, {})
            for line, tests in child.items():
                lines.setdefault(line, set()).update(tests)
    relative = {str(Path(f).resolve().relative_to(ROOT)): {str(n): sorted(t) for n, t in lines.items()}
                for f, lines in files.items() if Path(f).resolve().is_relative_to(ROOT)}
    out.write_text(json.dumps({"tests": recorder.tests, "durations": recorder.durations, "files": relative}))


if __name__ == "__main__":
    build(Path(sys.argv[1]), sys.argv[2:] or CORE)
