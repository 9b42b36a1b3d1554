"""Run a cosmic-ray session's pending mutants fast: a warmed parent forks one child per mutant.

cosmic-ray's own runner starts `python -m pytest` for every mutant: about 10 s of interpreter, torch
and library start-up before the first test, longer than most mutants take to die. Here one parent
imports the third-party libraries once (never sslkit, which each child imports fresh from the
mutated file on disk), writes the mutant, forks a child that runs `pytest -x` on just the tests of
`make test` that execute the mutated line (`mutation/covermap.py`), fastest first, and restores the
file. Children run in their own process group, so a timeout kills the CLI subprocesses too.

Outcomes, written to the cosmic-ray session so that `cosmic-ray` and `mutation/run.py --report` read them:
- killed: a test failed, errored (collection included), crashed the child or ran past the timeout;
- survived: every selected test passed;
- survived, with output "no test": no test of `make test` executes the mutated line.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Imported once in the parent; everything sslkit and its tests import from outside the repository.
WARM = ["numpy", "torch", "torch._dynamo", "torch.utils.tensorboard", "torchvision", "PIL.Image", "yaml", "hydra",
        "omegaconf", "matplotlib.pyplot", "tqdm", "defusedxml.ElementTree", "faiss", "timm", "lightly.loss",
        "lightly.models.modules", "sklearn.linear_model", "onnx", "onnxruntime", "pyarrow.parquet", "hypothesis",
        "pytest", "cosmic_ray.mutating"]
NO_TEST = "no test of `make test` executes the mutated line"
# most seconds of (unmutated) test time one mutant gets; the fastest covering tests first
BUDGET_S = float(os.environ.get("SSLKIT_MUTATION_BUDGET_S", "60"))


def warm() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"  # a child never caches a mutant's bytecode
    os.environ["HYPOTHESIS_PROFILE"] = "ci"      # the same examples for every mutant
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.dont_write_bytecode = True
    for name in WARM:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    import torch  # the optimizers' first step imports torch's compiler (seconds): once, here
    param = torch.zeros(1, requires_grad=True)
    param.grad = torch.ones(1)
    torch.optim.SGD([param], lr=0.1).step()
    assert not any(m == "sslkit" or m.startswith("sslkit.") for m in sys.modules), "the parent imported sslkit"


def header_lines(tree: ast.Module, first: int, last: int) -> range:
    """Lines of the innermost statement around the mutation; for a compound statement, its header only."""
    best: ast.stmt | None = None
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and node.lineno <= first and (node.end_lineno or node.lineno) >= last:
            if best is None or node.lineno >= best.lineno and (node.end_lineno or 0) <= (best.end_lineno or 0):
                best = node
    if best is None:
        return range(first, last + 1)
    start = min([best.lineno, first] + [d.lineno for d in getattr(best, "decorator_list", [])])
    body = getattr(best, "body", None)
    end = body[0].lineno - 1 if isinstance(body, list) and body and body[0].lineno > best.lineno else best.end_lineno
    return range(start, max(end or start, last) + 1)


class TestMap:
    """The covermap of one module: which tests run a mutant's lines, fastest first, within the budget."""

    def __init__(self, covermap: dict[str, Any], module: str) -> None:
        self.tests: list[str] = covermap["tests"]
        self.durations: list[float] = covermap["durations"]
        self.lines = {int(k): set(v) for k, v in covermap["files"].get(module, {}).items()}
        self.anywhere = set().union(*self.lines.values()) - {-1} if self.lines else set()
        if not self.anywhere:  # only definitions (a dataclass, constants): the tests of the modules that import it
            name = "sslkit." + module.removesuffix(".py").removeprefix("sslkit/").replace("/", ".")
            for other, lines in covermap["files"].items():
                if other != module and name in (ROOT / other).read_text(errors="replace"):
                    self.anywhere |= set().union(*(set(v) for v in lines.values())) - {-1}

    def select(self, lines: range) -> list[str]:
        hit: set[int] = set().union(*(self.lines.get(n, set()) for n in lines))
        if -1 in hit:  # run at import time (a constant, a default, a decorator): any test of the module
            hit = self.anywhere
        chosen, spent = [], 0.0
        for i in sorted(hit, key=lambda i: self.durations[i]):
            if chosen and spent + self.durations[i] > BUDGET_S:
                break
            chosen.append(i)
            spent += self.durations[i]
        return [self.tests[i] for i in sorted(chosen, key=lambda i: self.durations[i])]

    def seconds(self, tests: list[str]) -> float:
        index = {t: i for i, t in enumerate(self.tests)}
        return sum(self.durations[index[t]] for t in tests)


@contextmanager
def mutated(path: Path, code: str) -> Iterator[None]:
    """The mutant on disk for the with-block, the original back afterwards, even on SIGTERM."""
    original = path.read_text()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        path.write_text(code)
        yield
    finally:
        path.write_text(original)
        signal.signal(signal.SIGTERM, previous)


def run_child(tests: list[str], timeout: float, log: Path) -> str:
    """pytest -x on `tests` in a forked child; 'survived', 'killed' or 'timeout'."""
    pid = os.fork()
    if pid == 0:  # the child: its own process group, output to the log
        code = 99
        try:
            os.setpgid(0, 0)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            import pytest
            code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]))
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.02)
    code = os.waitstatus_to_exitcode(status)
    if code == 5:  # nothing collected: the selection is wrong, not the mutant
        raise RuntimeError(f"pytest collected none of {tests[:3]}...")
    if code == 4:  # a usage error: a node id not found (the mutant renamed a parametrised case) or a
        return "usage"  # conftest that no longer imports; the caller decides
    return "survived" if code == 0 else "killed"


def execute(db_path: Path, module: str, covermap: dict[str, Any], sample: int = 0,
            recheck: set[str] | None = None, log: Any = print) -> None:
    """Run the pending mutants of the session `db_path` (all of `module`) and record their outcomes;
    `sample` > 0 runs mutants drawn with a seed of the module's name until that many have results (a
    later call with a larger sample adds to them). `recheck`: the survivors again instead, against just
the covering tests in these test files (those added or changed since the run: the others passed)."""
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    path = ROOT / module
    source = path.read_text()
    tree = ast.parse(source)
    tests = TestMap(covermap, module)
    for pyc in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
        pyc.unlink()
    with use_db(str(db_path), WorkDB.Mode.open) as db, tempfile.TemporaryDirectory() as tmp:
        pending = sorted(db.pending_work_items, key=lambda item: item.job_id)
        if recheck is not None:
            pending = sorted((item for item, result in db.completed_work_items
                              if result.test_outcome == TestOutcome.SURVIVED), key=lambda item: item.job_id)
        if sample and recheck is None:
            done = sum(result.worker_outcome != WorkerOutcome.SKIPPED for _, result in db.completed_work_items)
            pending = random.Random(module).sample(pending, min(max(sample - done, 0), len(pending)))
        for n, item in enumerate(pending, 1):
            spec = item.mutations[0]
            operator = get_operator(spec.operator_name)(**(spec.operator_args or {}))
            try:
                code = mutate_code(source, operator, spec.occurrence)
            except Exception:  # noqa: BLE001 - cosmic-ray cannot apply it (e.g. ExceptionReplacer on `except (a.B, C)`)
                code = None
            if code is None:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.NO_TEST))
                continue
            diff = "\n".join(difflib.unified_diff(source.splitlines(), code.splitlines(), module, module,
                                                 n=0, lineterm=""))[:2000]
            lines = header_lines(tree, spec.start_pos[0], spec.end_pos[0])
            selected = tests.select(lines)
            if recheck is not None:
                selected = [t for t in selected if t.split("::")[0] in recheck]
                if not selected:
                    continue
            start = time.monotonic()
            if not selected:
                outcome, output = "survived", NO_TEST
            else:
                out = Path(tmp) / "child.log"
                with mutated(path, code):
                    outcome = run_child(selected, 60 + 3 * tests.seconds(selected), out)
                    if outcome == "usage":  # the same tests by function, whatever their cases are called now
                        functions = list(dict.fromkeys(t.split("[")[0] for t in selected))
                        outcome = run_child(functions, 60 + 3 * tests.seconds(selected), out)
                        outcome = "killed" if outcome == "usage" else outcome
                output = out.read_text(errors="replace")[-3000:] if out.exists() else ""
            result = WorkResult(worker_outcome=WorkerOutcome.NORMAL if outcome != "timeout" else WorkerOutcome.ABNORMAL,
                                test_outcome=TestOutcome.SURVIVED if outcome == "survived" else TestOutcome.KILLED,
                                output=output, diff=diff)
            db.set_result(item.job_id, result)
            log(f"[{n}/{len(pending)}] {module}:{spec.start_pos[0]} {spec.operator_name.split('/')[-1]} "
                f"-> {outcome} ({time.monotonic() - start:.1f}s, {len(selected)} tests)")


def load_covermap(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))
