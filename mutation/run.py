"""`make mutation`: mutation testing of the core with cosmic-ray (https://cosmic-ray.readthedocs.io).

cosmic-ray generates the mutants (its operators, its session database); `mutation/forkrun.py` runs
them: one warmed parent forks a child per mutant, which runs only the tests of `make test` that
execute the mutated line (the map from `mutation/covermap.py`, built once per state of the code).
So every kill is a kill by `make test`. Sessions, the map and a summary go to mutation/out/ (ignored
by git), or to the folder in SSLKIT_MUTATION_OUT (several clones can share one).

    python mutation/run.py [SHARD | MODULE ...]   # default: every shard; `--report` only summarises
    python mutation/run.py --sample=40 SHARD      # 40 mutants per module, drawn at random (seeded)
    python mutation/run.py --resume --sample=80 SHARD   # ... then 40 more each
    python mutation/run.py --recheck=COMMIT SHARD # the survivors again, against the tests changed since COMMIT
    make mutation SHARD=engine                    # the same, niced, for one shard

The files are mutated in place: run it in a clone of its own, not in a tree you are editing.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import equivalent  # noqa: E402 - this folder is not a package
import forkrun  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("SSLKIT_MUTATION_OUT", ROOT / "mutation" / "out"))


def _files(folder: str, *names: str) -> list[str]:
    return [f"{folder}/{n}.py" for n in names]


# Shards of about an hour or less each on 2 quiet cores: `make mutation SHARD=engine`. Every module of
# sslkit/contrastive, engine, augment, data, losses and methods/ (package `__init__`s that only
# re-export are left out), plus the evaluation modules the results depend on.
SHARDS: dict[str, list[str]] = {
    "contrastive": _files("sslkit/contrastive", "infonce", "momentum", "queue", "shuffle_bn", "ntxent",
                          "ntxent_blockwise", "grad_cache"),
    "engine": _files("sslkit/engine", "lars", "optim", "schedule", "signals", "loop", "state", "parallel",
                     "distributed"),
    "engine_io": _files("sslkit/engine", "checkpoint", "budget", "outputs", "progress", "logger", "hardware"),
    "augment": _files("sslkit/augment", "__init__", "color", "per_image", "recipe", "batched", "views"),
    "data": _files("sslkit/data", "__init__", "subset", "base", "loader", "idx", "cifar", "stl10", "imagefolder"),
    "methods": _files("methods", "__init__", "base", "mocov1", "mocov2", "simclr", "byol", "simsiam",
                      "barlow_twins", "vicreg", "dino", "swav"),
    "losses": [*_files("sslkit/losses", "__init__", "negative_cosine", "barlow_twins", "vicreg", "dino", "sinkhorn",
                       "swav"),
               *_files("sslkit/nn", "param_groups", "multicrop", "dino_head", "prototypes", "split_bn")],
    "evaluation": _files("evaluation", "knn", "linear", "features", "detection/metric"),
}
MODULES = [m for modules in SHARDS.values() for m in modules]
# Operators whose mutants say little about the tests: the integer-only and bitwise replacements of
# arithmetic operators, `|` in type unions (annotations are never evaluated: `from __future__ import
# annotations`), `==` -> `is` style identity swaps, and `-x` -> `~x` / `not x`.
EXCLUDE = [r"core/ReplaceBinaryOperator_.*_(FloorDiv|Mod|Pow|RShift|LShift|BitOr|BitAnd|BitXor)$",
           r"core/ReplaceBinaryOperator_BitOr_.*",
           r"core/ReplaceComparisonOperator_(Eq|NotEq|Lt|LtE|Gt|GtE)_(Is|IsNot)$",
           r"core/ReplaceUnaryOperator_USub_(Invert|Not)$"]


def session(module: str) -> Path:
    return OUT / (module.removesuffix(".py").replace("/", ".") + ".sqlite")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def covermap() -> dict[str, object]:
    """The map of which tests run which line, for the committed code. Rebuilt from scratch when the
    sources changed since it was built; when only test files changed, just those files are rerun."""
    path, head = OUT / "covermap.json", git("rev-parse", "HEAD")
    if git("status", "--porcelain", "--", "sslkit", "methods", "evaluation", "tests", "configs"):
        raise SystemExit("commit or stash the changes to the code and tests first: the map is of the committed code")
    data = json.loads(path.read_text()) if path.exists() else {}
    built = data.get("commit")
    if built and built != head and subprocess.run(["git", "cat-file", "-e", built], cwd=ROOT).returncode == 0:
        if not git("diff", "--name-only", built, head, "--", "sslkit", "methods", "evaluation", "configs",
                   "pyproject.toml", "tests/conftest.py"):
            changed = git("diff", "--name-only", built, head, "--", "tests").split()
            present = [t for t in changed if (ROOT / t).exists() and Path(t).name.startswith("test_")]
            print(f"updating the coverage map for {len(changed)} changed test files", flush=True)
            part_path = OUT / "covermap.part.json"
            if present:
                subprocess.run([sys.executable, str(ROOT / "mutation" / "covermap.py"), str(part_path)], cwd=ROOT,
                               check=True, env=dict(os.environ, COVERMAP_TESTS=" ".join(present)))
            part = json.loads(part_path.read_text()) if present else {"tests": [], "durations": [], "files": {}}
            import covermap as cm
            data = cm.merge(data, part, changed)
            data["commit"] = built = head
            path.write_text(json.dumps(data))
    if built != head:
        print(f"building the coverage map of `make test` ({path}; about twice the suite's time)", flush=True)
        subprocess.run([sys.executable, str(ROOT / "mutation" / "covermap.py"), str(path)], cwd=ROOT, check=True)
        data = json.loads(path.read_text())
        data["commit"] = head
        path.write_text(json.dumps(data))
    return dict(data)


def init(module: str) -> Path:
    """A cosmic-ray session of every mutant of `module`, the excluded operators marked skipped."""
    from cosmic_ray.commands.init import init as add_mutants
    from cosmic_ray.tools.filters.operators_filter import OperatorsFilter
    from cosmic_ray.work_db import WorkDB, use_db

    db = session(module)
    db.unlink(missing_ok=True)
    with use_db(str(db), WorkDB.Mode.create) as work_db:
        add_mutants([ROOT / module], work_db, {})
        OperatorsFilter()._skip_filtered(work_db, EXCLUDE)  # noqa: SLF001 - its filter without a config file
    return db


def run(module: str, cmap: dict[str, object], resume: bool, sample: int, recheck: set[str] | None = None) -> None:
    """The mutants of `module` (`sample` > 0: that many, drawn at random); `resume` continues a session;
    `recheck` runs the session's survivors again (after tests were added)."""
    dirty = subprocess.run(["git", "status", "--porcelain", "--", module], cwd=ROOT, capture_output=True,
                           text=True).stdout
    if dirty:
        raise SystemExit(f"{module} differs from git ({dirty.strip()}): restore it or commit before mutating")
    db = session(module) if resume and session(module).exists() else init(module)
    forkrun.execute(db, module, cmap, sample, recheck=recheck)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", module], cwd=ROOT, capture_output=True,
                           text=True).stdout
    assert not dirty, f"a mutant was left behind in {module}: {dirty}"


def results(module: str) -> list[dict[str, object]]:
    db = sqlite3.connect(session(module))
    rows = db.execute("""select s.module_path, s.operator_name, s.occurrence, s.start_pos_row, s.start_pos_col,
                                r.worker_outcome, r.test_outcome, r.diff, r.output
                         from mutation_specs s join work_results r on s.job_id = r.job_id""").fetchall()
    keys = ("module", "operator", "occurrence", "line", "col", "worker", "test", "diff", "output")
    return [dict(zip(keys, (v.lower() if isinstance(v, str) and i in (5, 6) else v for i, v in enumerate(row)),
                     strict=True)) for row in rows]


@functools.cache
def committed_lines(module: str) -> list[str]:
    """From git, not the file: a live mutant may be on disk."""
    text = subprocess.run(["git", "show", f"HEAD:{module}"], cwd=ROOT, capture_output=True, text=True).stdout
    return [t.strip() for t in text.splitlines()] + [""]


def source_line(module: str, line: int) -> tuple[str, str]:
    """The line and the line after it."""
    lines = committed_lines(module)
    return lines[line - 1], lines[line]


def untestable(r: dict[str, object]) -> bool:
    return str(r["equivalent"] or "").startswith(("CUDA only", "multi-process only"))


def report(modules: list[str]) -> None:
    """Per module: killed / run (a crash or a timeout counts as killed), the survivors that are equivalent
    mutants (`mutation/equivalent.py`) and the others, of which how many are on lines no test runs;
    then every survivor with its line and change."""
    total = killed = equivalents = total_elsewhere = 0
    survivors, lines = [], []
    for module in modules:
        if not session(module).exists():
            continue
        everything = results(module)
        rows = [r for r in everything if r["worker"] not in ("skipped", "no-test")]
        items = sqlite3.connect(session(module)).execute("select count(*) from work_items").fetchone()[0]
        dead = [r for r in rows if r["test"] == "killed" or r["worker"] in ("abnormal", "exception")]
        alive = [dict(r, module=module) for r in rows if r not in dead]
        for r in alive:
            r["src"], after = source_line(module, int(r["line"]))
            r["equivalent"] = equivalent.why(module, f"{r['src']}\n{after}", str(r["operator"]))
        same = sum(r["equivalent"] is not None and not untestable(r) for r in alive)
        elsewhere = sum(untestable(r) for r in alive)
        unrun = sum(r["output"] == forkrun.NO_TEST and r["equivalent"] is None for r in alive)
        total, killed, equivalents = total + len(rows), killed + len(dead), equivalents + same
        survivors += alive
        pending = f"; {items - len(everything)} not run yet" if items > len(everything) else ""
        rate = 100 * len(dead) / max(len(rows), 1)
        lines.append(f"| `{module}` | {len(rows)} | {len(dead)} ({rate:.1f}%) | {same} | {elsewhere} | "
                     f"{len(alive) - same - elsewhere} ({unrun} on lines no test runs) | "
                     f"{100 * len(dead) / max(len(rows) - same, 1):.1f}%{pending} |")
        total_elsewhere += elsewhere
    print("| module | run | killed | equivalent | CUDA / multi-process only | other survivors "
          "| killed of non-equivalent |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"| total | {total} | {killed} ({100 * killed / max(total, 1):.1f}%) | {equivalents} | {total_elsewhere} | "
          f"{total - killed - equivalents - total_elsewhere} | {100 * killed / max(total - equivalents, 1):.1f}% |")
    for r in sorted(survivors, key=lambda r: (str(r["module"]), int(r["line"]))):
        change = [d[1:].strip() for d in str(r["diff"]).splitlines() if d.startswith("+") and not d.startswith("+++")]
        tag = (" (not here)" if untestable(r) else " (equivalent)" if r["equivalent"]
               else " (no test runs it)" if r["output"] == forkrun.NO_TEST else "")
        print(f"SURVIVED{tag} {r['module']}:{r['line']} {str(r['operator']).split('/')[-1]}: {r['src']}  ->  "
              f"{' / '.join(change)}")


def main(argv: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    names = [a for a in argv if not a.startswith("--")]
    sample = int(next((a.split("=", 1)[1] for a in argv if a.startswith("--sample=")), 0))
    since = next((a.split("=", 1)[1] for a in argv if a.startswith("--recheck=")), None)
    recheck = None if since is None else set(git("diff", "--name-only", since, "HEAD", "--", "tests").split())
    modules = [m for n in names for m in SHARDS.get(n, [n])] or MODULES
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        raise SystemExit(f"unknown shard or module {unknown}; shards: {', '.join(SHARDS)}; modules: see SHARDS in "
                         "mutation/run.py")
    if "--report" not in argv:
        cmap = covermap()
        forkrun.warm()
        for module in modules:
            start = time.time()
            run(module, cmap, resume="--resume" in argv or recheck is not None, sample=sample, recheck=recheck)
            print(f"{module}: {time.time() - start:.0f}s", flush=True)
    report(modules)


if __name__ == "__main__":
    main(sys.argv[1:])
