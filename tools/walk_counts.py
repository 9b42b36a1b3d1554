"""Count the walk: sslkit's Python calls from `sslkit train` to the loop's first step, and from
`sslkit eval knn` to the FAISS search, and how often the registry and Hydra are consulted on the way.

    .venv/bin/python tools/walk_counts.py [--json]

It runs both commands in this process on a tiny Fashion-MNIST run (a ResNet-18 at batch 16, one
step, 64 images; kNN on 64/64 images) under `sys.setprofile`, counts every call of a function
defined in sslkit's sources (sslkit/, methods/, evaluation/) until the target is reached, and counts
the consults by the names below. docs/architecture.md records its output before and after issue 23.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCES = tuple(str(ROOT / d) + "/" for d in ("sslkit", "methods", "evaluation"))
#: (label, file suffix, function name): the consults counted by name, inside or outside sslkit
CONSULTS = (
    ("registry scan (built-ins + entry points)", "sslkit/registry.py", "_entry_points"),
    ("registry scan (built-ins + entry points)", "sslkit/plugins.py", "_scan"),
    ("method lookups (resolve_method)", "sslkit/registry.py", "resolve_method"),
    ("registry lookups, all registries (Registry.get)", "sslkit/plugins.py", "get"),
    ("Hydra override parser: lists parsed", "override_parser/overrides_parser.py", "parse_overrides"),
    ("Hydra override parser: override texts parsed", "override_parser/overrides_parser.py", "parse_rule"),
    ("Hydra compose", "hydra/compose.py", "compose"),
    ("check_form", "sslkit/overrides.py", "check_form"),
    ("claim_run_dir", "sslkit/engine/outputs.py", "claim_run_dir"),
    ("check_method_params", "sslkit/params.py", "check_method_params"),
    ("checkpoint path resolved", "sslkit/engine/checkpoint.py", "resolve"),
)
SMALL = ["data.subset=64", "data.batch_size=16", "trainer.max_steps=1", "trainer.progress=none",
         "trainer.channels_last=false", "trainer.precision=32", "head.hidden_dim=64", "method.queue_size=64"]


def count(run: Any, target: tuple[str, str]) -> dict[str, Any]:
    """Run `run()` under a profiler until a call of `target` (file suffix, function); the counts."""
    calls: Counter[str] = Counter()
    consults: Counter[str] = Counter()
    reached = False

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal reached
        if event != "call" or reached:
            return
        code = frame.f_code
        path = code.co_filename
        if path.endswith(target[0]) and code.co_name == target[1]:
            reached = True
            return
        if path.startswith(SOURCES):
            calls[f"{Path(path).relative_to(ROOT)}:{code.co_name}"] += 1
        for label, suffix, name in CONSULTS:
            if code.co_name == name and path.endswith(suffix):
                consults[label] += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return {"reached": reached, "calls": sum(calls.values()), "functions": len(calls),
            "consults": dict(sorted(consults.items())), "top": calls.most_common(8)}


def main() -> None:
    from sslkit.app.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train = count(lambda: cli(["train", *SMALL, f"out={run}"]), ("sslkit/engine/loop.py", "step"))
        cli(["train", *SMALL, f"out={run}", "trainer.overwrite=true"])  # a finished run for the eval
        knn = count(lambda: cli(["eval", "knn", f"checkpoint={run}", "eval.train_subset=64",
                                 "eval.test_subset=64", "eval.k=10", "eval.cache=false", f"out={Path(tmp) / 'eval'}"]),
                    ("evaluation/knn.py", "faiss_search"))
    result = {"train -> loop step": train, "eval knn -> FAISS": knn}
    if "--json" in sys.argv:
        print(json.dumps(result, indent=1))
        return
    for what, r in result.items():
        print(f"{what}: reached={r['reached']} sslkit calls={r['calls']} distinct functions={r['functions']}")
        for label, n in r["consults"].items():
            print(f"  {label}: {n}")


if __name__ == "__main__":
    main()
