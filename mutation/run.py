"""`make mutation`: mutation testing with cosmic-ray (https://cosmic-ray.readthedocs.io).

cosmic-ray rewrites one module on disk per mutant and runs a test command, so it works with this
repository's layout, where `methods/` is imported as `sslkit.methods` through the editable install.
Each group below pairs modules with the fast tests that exercise them; every mutant runs only its
group's tests (`pytest -x`). Sessions and a summary go to mutation/out/ (ignored by git).

    python mutation/run.py [SHARD | GROUP ...]   # default: every group; `--report` only summarises
    make mutation SHARD=engine                   # the same, niced, for one shard
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
T = "tests/"
MOCO_TESTS = "tests/methods/test_moco.py tests/methods/test_moco_wiring.py"
SIMCLR_TESTS = "tests/methods/test_simclr.py tests/methods/test_simclr_wiring.py"
AUGMENT_TESTS = "tests/augment"
OPTIM_TESTS = ("tests/engine/test_optimiser_steps.py tests/engine/test_lr_every_step.py "
               "tests/engine/test_optim_schedule.py")
# One group per module: the module and the fast tests that exercise it (its own tests first, so that
# `pytest -x` stops early). Every mutant runs only its group's tests. Tests that train through
# `sslkit train` subprocesses (tests/engine/test_signals.py: minutes each on a loaded machine) are left
# out; the in-process tests cover the same code.
GROUPS: dict[str, tuple[list[str], str]] = {
    # shard contrastive
    "infonce": (["sslkit/contrastive/infonce.py"], f"tests/contrastive/test_infonce.py {MOCO_TESTS}"),
    "momentum": (["sslkit/contrastive/momentum.py"], f"tests/contrastive/test_momentum.py {MOCO_TESTS}"),
    "queue": (["sslkit/contrastive/queue.py"], "tests/contrastive/test_queue.py tests/contrastive/test_properties.py"),
    "shuffle_bn": (["sslkit/contrastive/shuffle_bn.py"], f"tests/contrastive/test_shuffle_local.py {MOCO_TESTS}"),
    "ntxent": (["sslkit/contrastive/ntxent.py"],
               "tests/contrastive/test_ntxent.py tests/contrastive/test_properties.py"),
    "ntxent_blockwise": (["sslkit/contrastive/ntxent_blockwise.py"],
                         "tests/contrastive/test_ntxent_blockwise.py tests/contrastive/test_properties.py"),
    "grad_cache": (["sslkit/contrastive/grad_cache.py"],
                   "tests/evaluation/test_grad_cache.py tests/contrastive/test_ntxent_blockwise.py"),
    # shard engine (training side)
    "lars": (["sslkit/engine/lars.py"], OPTIM_TESTS),
    "optim": (["sslkit/engine/optim.py"], OPTIM_TESTS),
    "schedule": (["sslkit/engine/schedule.py"], f"{OPTIM_TESTS} tests/test_config_warmup.py"),
    "signals": (["sslkit/engine/signals.py"], "tests/engine/test_process_state.py tests/engine/test_loop_wiring.py"),
    "loop": (["sslkit/engine/loop.py"],
             "tests/engine/test_loop_wiring.py tests/engine/test_process_state.py tests/engine/test_lr_every_step.py"),
    "state": (["sslkit/engine/state.py"], "tests/engine/test_resume.py tests/engine/test_loop_wiring.py"),
    # shard engine_io (checkpoints, budget, outputs, progress, logging, hardware)
    "checkpoint": (["sslkit/engine/checkpoint.py"],
                   "tests/engine/test_checkpoint_safety.py tests/engine/test_never_lose_a_run.py "
                   "tests/engine/test_resume.py"),
    "budget": (["sslkit/engine/budget.py"], "tests/engine/test_budget.py"),
    "outputs": (["sslkit/engine/outputs.py"], "tests/engine/test_outputs.py"),
    "progress": (["sslkit/engine/progress.py"], "tests/engine/test_progress.py"),
    "logger": (["sslkit/engine/logger.py"], "tests/engine/test_loop_wiring.py tests/engine/test_progress.py"),
    "hardware": (["sslkit/engine/hardware.py"], "tests/engine/test_hardware.py"),
    # shard augment
    "aug_color": (["sslkit/augment/color.py"], AUGMENT_TESTS),
    "aug_per_image": (["sslkit/augment/per_image.py"], AUGMENT_TESTS),
    "aug_recipe": (["sslkit/augment/recipe.py"], AUGMENT_TESTS),
    "aug_batched": (["sslkit/augment/batched.py"], AUGMENT_TESTS),
    "aug_init": (["sslkit/augment/__init__.py"], AUGMENT_TESTS),
    # shard data
    "subset": (["sslkit/data/subset.py"], "tests/data/test_subset.py tests/data/test_properties.py"),
    "data_base": (["sslkit/data/base.py"], "tests/data"),
    "loader": (["sslkit/data/loader.py"], "tests/data/test_loader.py tests/engine/test_loop_wiring.py"),
    "idx": (["sslkit/data/idx.py"], "tests/data/test_idx.py"),
    "cifar": (["sslkit/data/cifar.py"], "tests/data/test_cifar.py"),
    "stl10": (["sslkit/data/stl10.py"], "tests/data/test_stl10.py"),
    "imagefolder": (["sslkit/data/imagefolder.py"],
                    "tests/data/test_imagefolder.py tests/data/test_unreadable_images.py"),
    "data_init": (["sslkit/data/__init__.py"], "tests/data"),
    # shard methods
    "mocov1": (["methods/mocov1.py", "methods/mocov2.py"],
               f"{MOCO_TESTS} tests/methods/test_learning.py tests/engine/test_loop_wiring.py"),
    "simclr": (["methods/simclr.py"], f"{SIMCLR_TESTS} tests/methods/test_learning.py"),
    "base": (["methods/base.py"], f"tests/methods/test_base.py tests/methods/test_custom_method.py {MOCO_TESTS} "
                                  f"{SIMCLR_TESTS} tests/engine/test_loop_wiring.py"),
    # shard evaluation
    "knn": (["evaluation/knn.py"], "tests/evaluation/test_knn.py tests/evaluation/test_knn_properties.py"),
    "linear": (["evaluation/linear.py"], "tests/evaluation/test_probe_lr.py tests/evaluation/test_linear_eval.py "
                                         "tests/evaluation/test_linear_protocol_wiring.py"),
    "features": (["evaluation/features.py"], "tests/evaluation/test_eval_features.py"),
    "detect_metric": (["evaluation/detection/metric.py"], "tests/evaluation/detection/test_detect_metric.py"),
}
# Shards of about an hour or less each on the shared 2-core machine: `make mutation SHARD=engine`.
# `sslkit/devices.py`, `sslkit/engine/parallel.py` and `sslkit/engine/distributed.py` are exercised
# by the slow multi-process tests only (tests/distributed) and are in no shard.
SHARDS: dict[str, list[str]] = {
    "contrastive": ["infonce", "momentum", "queue", "shuffle_bn", "ntxent", "ntxent_blockwise", "grad_cache"],
    "engine": ["lars", "optim", "schedule", "signals", "loop", "state"],
    "engine_io": ["checkpoint", "budget", "outputs", "progress", "logger", "hardware"],
    "augment": ["aug_color", "aug_per_image", "aug_recipe", "aug_batched", "aug_init"],
    "data": ["subset", "data_base", "loader", "idx", "cifar", "stl10", "imagefolder", "data_init"],
    "methods": ["mocov1", "simclr", "base"],
    "evaluation": ["knn", "linear", "features", "detect_metric"],
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


def run(group: str, resume: bool = False) -> None:
    """Mutate the group's modules one mutant at a time; `resume` continues an interrupted session."""
    cfg, db = config(group), OUT / f"{group}.sqlite"
    env = dict(os.environ, OMP_NUM_THREADS="1", HYPOTHESIS_PROFILE="ci",  # the same examples for every mutant
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    tests = GROUPS[group][1].split()
    missing = [t for t in tests if not (ROOT / t).exists()]
    if missing:
        raise SystemExit(f"{group}: test paths do not exist: {missing}")
    # the unmutated code must pass, or every mutant would count as killed
    base = subprocess.run([sys.executable, *PYTEST.split()[1:], *tests], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if base.returncode:
        raise SystemExit(f"{group}: the unmutated code fails its tests:\n{base.stdout[-3000:]}")
    steps = [["cosmic_ray.cli", "exec", str(cfg), str(db)]]
    if not (resume and db.exists()):
        db.unlink(missing_ok=True)
        steps = [["cosmic_ray.cli", "init", str(cfg), str(db)],
                 ["cosmic_ray.tools.filters.operators_filter", str(db), str(cfg)], *steps]
    for args in steps:
        subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, check=True)
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
    """Killed / run per module (a mutant that crashes or times out the tests counts as killed), then survivors."""
    total = killed = 0
    survivors, lines = [], []
    for group in groups:
        if not (OUT / f"{group}.sqlite").exists():
            continue
        everything = results(group)
        items = sqlite3.connect(OUT / f"{group}.sqlite").execute("select count(*) from work_items").fetchone()[0]
        for module in GROUPS[group][0]:
            rows = [r for r in everything if r["module"] == module]
            done = [r for r in rows if r["worker"] != "skipped"]
            dead = [r for r in done if r["test"] == "killed" or r["worker"] in ("abnormal", "exception")]
            total, killed = total + len(done), killed + len(dead)
            survivors += [r for r in done if r not in dead]
            lines.append(f"{module:40s} {len(dead):4d}/{len(done):4d} killed "
                         f"({100 * len(dead) / max(len(done), 1):5.1f}%); {len(rows) - len(done)} filtered")
        if items > len(everything):
            lines.append(f"{'':40s} group {group}: {items - len(everything)} mutants not run yet")
    lines.append(f"{'total':40s} {killed:4d}/{total:4d} killed ({100 * killed / max(total, 1):.1f}%)")
    print("\n".join(lines))
    for r in sorted(survivors, key=lambda r: (str(r["module"]), int(r["line"]))):
        src = subprocess.run(["git", "show", f"HEAD:{r['module']}"], cwd=ROOT, capture_output=True,  # not a live mutant
                             text=True).stdout.splitlines()[int(r["line"]) - 1].strip()
        change = [d[1:].strip() for d in str(r["diff"]).splitlines() if d.startswith("+") and not d.startswith("+++")]
        print(f"SURVIVED {r['module']}:{r['line']} {r['operator']}: {src}  ->  {' / '.join(change)}")


def main(argv: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    names = [a for a in argv if not a.startswith("--")]
    groups = [g for n in names for g in SHARDS.get(n, [n])] or list(GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise SystemExit(f"unknown group or shard {unknown}; shards: {', '.join(SHARDS)}; groups: {', '.join(GROUPS)}")
    if "--report" not in argv:
        for group in groups:
            start = time.time()
            run(group, resume="--resume" in argv)
            print(f"{group}: {time.time() - start:.0f}s", flush=True)
    report(groups)


if __name__ == "__main__":
    main(sys.argv[1:])
