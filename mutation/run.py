"""`make mutation`: mutation testing with cosmic-ray (https://cosmic-ray.readthedocs.io).

cosmic-ray rewrites one module on disk per mutant and runs a test command, so it works with this
repository's layout, where `methods/` is imported as `sslkit.methods` through the editable install.
Each group below pairs modules with the fast tests that exercise them; every mutant runs only its
group's tests (`pytest -x`). Sessions and a summary go to mutation/out/ (ignored by git).

    python mutation/run.py [GROUP ...]    # default: every group; `--report` only summarises
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "mutation" / "out"
BIN = Path(sys.executable).parent
PYTEST = "python -m pytest -x -q -p no:cacheprovider --no-header"
MOCO_TESTS = "tests/methods/test_moco.py tests/methods/test_moco_wiring.py"
SIMCLR_TESTS = "tests/methods/test_simclr.py tests/methods/test_simclr_wiring.py"
GROUPS: dict[str, tuple[list[str], str]] = {
    "infonce": (["sslkit/contrastive/infonce.py"], f"tests/contrastive/test_infonce.py {MOCO_TESTS}"),
    "momentum": (["sslkit/contrastive/momentum.py"], f"tests/contrastive/test_momentum.py {MOCO_TESTS}"),
    "queue": (["sslkit/contrastive/queue.py"], f"tests/contrastive/test_queue.py {MOCO_TESTS}"),
    "shuffle_bn": (["sslkit/contrastive/shuffle_bn.py"], f"tests/contrastive/test_shuffle_local.py {MOCO_TESTS}"),
    "ntxent": (["sslkit/contrastive/ntxent.py"], f"tests/contrastive/test_ntxent.py {SIMCLR_TESTS}"),
    "grad_cache": (["sslkit/contrastive/grad_cache.py"], f"tests/evaluation/test_grad_cache.py {SIMCLR_TESTS}"),
    "distributed": (["sslkit/devices.py"], MOCO_TESTS),
    "mocov1": (["methods/mocov1.py", "methods/mocov2.py"],
               f"{MOCO_TESTS} tests/methods/test_learning.py tests/engine/test_loop_wiring.py"),
    "simclr": (["methods/simclr.py"], f"{SIMCLR_TESTS} tests/methods/test_learning.py"),
    "base": (["methods/base.py"], f"{MOCO_TESTS} {SIMCLR_TESTS} tests/engine/test_loop_wiring.py"),
}
# Operators whose mutants say little about the tests: the integer-only and bitwise replacements of
# arithmetic operators, `|` in type unions (annotations are never evaluated: `from __future__ import
# annotations`), `==` -> `is` style identity swaps, and `-x` -> `~x` / `not x`.
EXCLUDE = [r"core/ReplaceBinaryOperator_.*_(FloorDiv|Mod|Pow|RShift|LShift|BitOr|BitAnd|BitXor)$",
           r"core/ReplaceBinaryOperator_BitOr_.*",
           r"core/ReplaceComparisonOperator_(Eq|NotEq|Lt|LtE|Gt|GtE)_(Is|IsNot)$",
           r"core/ReplaceUnaryOperator_USub_(Invert|Not)$"]


def config(group: str) -> Path:
    modules, tests = GROUPS[group]
    path = OUT / f"{group}.toml"
    path.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(modules)}\n"
        "timeout = 300.0\nexcluded-modules = []\n"
        f'test-command = "{PYTEST} {tests}"\n'
        '[cosmic-ray.distributor]\nname = "local"\n'
        f"[cosmic-ray.filters.operators-filter]\nexclude-operators = {json.dumps(EXCLUDE)}\n")
    return path


def run(group: str) -> None:
    cfg, db = config(group), OUT / f"{group}.sqlite"
    db.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    for cmd in (["cosmic-ray", "init", str(cfg), str(db)], ["cr-filter-operators", str(db), str(cfg)],
                ["cosmic-ray", "exec", str(cfg), str(db)]):
        subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=ROOT, env=env, check=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *GROUPS[group][0]], cwd=ROOT,
                           capture_output=True, text=True).stdout
    assert not dirty, f"cosmic-ray left a mutated file behind: {dirty}"


def results(group: str) -> list[dict[str, object]]:
    db = sqlite3.connect(OUT / f"{group}.sqlite")
    rows = db.execute("""select s.module_path, s.operator_name, s.occurrence, s.start_pos_row, s.start_pos_col,
                                r.worker_outcome, r.test_outcome, r.diff
                         from mutation_specs s join work_results r on s.job_id = r.job_id""").fetchall()
    keys = ("module", "operator", "occurrence", "line", "col", "worker", "test", "diff")
    return [dict(zip(keys, (v.lower() if isinstance(v, str) and i in (5, 6) else v for i, v in enumerate(row)),
                     strict=True)) for row in rows]


def report(groups: list[str]) -> None:
    """Killed / run per group (a mutant that crashes or times out the tests counts as killed), then survivors."""
    total = killed = 0
    survivors, lines = [], []
    for group in groups:
        if not (OUT / f"{group}.sqlite").exists():
            continue
        everything = results(group)
        done = [r for r in everything if r["worker"] != "skipped"]
        dead = [r for r in done if r["test"] == "killed" or r["worker"] in ("abnormal", "exception")]
        total, killed = total + len(done), killed + len(dead)
        survivors += [r for r in done if r not in dead]
        items = sqlite3.connect(OUT / f"{group}.sqlite").execute("select count(*) from work_items").fetchone()[0]
        lines.append(f"{group:12s} {len(dead):4d}/{len(done):4d} killed; {len(everything) - len(done)} filtered, "
                     f"{items - len(everything)} not run")
    lines.append(f"{'total':12s} {killed:4d}/{total:4d} killed ({100 * killed / max(total, 1):.1f}%)")
    print("\n".join(lines))
    for r in sorted(survivors, key=lambda r: (str(r["module"]), int(r["line"]))):
        src = subprocess.run(["git", "show", f"HEAD:{r['module']}"], cwd=ROOT, capture_output=True,  # not a live mutant
                             text=True).stdout.splitlines()[int(r["line"]) - 1].strip()
        change = [d[1:].strip() for d in str(r["diff"]).splitlines() if d.startswith("+") and not d.startswith("+++")]
        print(f"SURVIVED {r['module']}:{r['line']} {r['operator']}: {src}  ->  {' / '.join(change)}")


def main(argv: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    groups = [a for a in argv if not a.startswith("--")] or list(GROUPS)
    if "--report" not in argv:
        for group in groups:
            start = time.time()
            run(group)
            print(f"{group}: {time.time() - start:.0f}s", flush=True)
    report(groups)


if __name__ == "__main__":
    main(sys.argv[1:])
