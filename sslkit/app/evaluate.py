"""`sslkit eval <evaluation>`: compose, load the checkpoint, evaluate, write JSON, summarise in one line."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslkit.errors import ConfigError, suggestion

if TYPE_CHECKING:  # the CLI imports this module for EVALUATIONS: torch loads only when one runs
    from sslkit.evaluation.context import EvalContext

#: every `sslkit eval` subcommand and its help line: the one list of evaluations
EVALUATIONS = {
    "knn": "weighted kNN (k=200, T=0.1) on frozen features with FAISS; eval.k=[10,20,200]",
    "linear": "linear probe: eval.mode=fast (cached features) or eval.mode=protocol (MoCo recipe)",
    "batch-compare": "SimCLR at batch 256 and 8192 vs MoCo v2 at 256 (MoCo v2 Table 2 in miniature)",
    "retrieval": "a PNG grid of test queries and their nearest training images, trained vs random encoder",
    "embedding": "a 2-D map of test features coloured by class (eval.tensorboard=true: projector too)",
    "detect": "fine-tune Faster R-CNN on the encoder, COCO-style AP50/AP/AP75 (see docs/detection.md)",
}


def run_evaluation(name: str, overrides: list[str]) -> dict[str, Any]:
    """Run evaluation `name` (`batch-compare` or `batch_compare`) with `overrides`; the JSON record plus `summary`.

    Run in-process (a notebook, a study), it gives back torch's thread count and the global RNGs as it found them."""
    name = name.replace("_", "-")
    if name not in EVALUATIONS:
        raise ConfigError(f"unknown evaluation '{name}'; {suggestion(name, EVALUATIONS)}")
    import torch

    from sslkit.engine.checkpoint import rng_state, set_rng_state

    threads, rng = torch.get_num_threads(), rng_state()
    try:
        return _evaluate(name, overrides)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        set_rng_state(rng)


def _evaluate(name: str, overrides: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    if name == "batch-compare":
        from sslkit.app.batch_compare import run_batch_compare

        return run_batch_compare(list(overrides))
    if name == "detect":
        from sslkit.app.detect import run_detect

        return run_detect(list(overrides))
    from sslkit.app.eval_setup import load_context
    from sslkit.data import decodes_images
    from sslkit.engine.hardware import apply_cpu_split
    from sslkit.files import write_json

    ctx = load_context(name, list(overrides))
    split = apply_cpu_split(ctx.device, decodes_images(str(ctx.data["name"])),
                            ctx.cfg.trainer.get("threads"), ctx.data.get("num_workers"))
    # feature extraction and the linear probe's loader: the resolved count, in a new context
    ctx = replace(ctx, data=ctx.data | {"num_workers": split.workers})
    result = _runner(name)(ctx)
    result["seconds"] = round(time.perf_counter() - start, 3)
    path = ctx.out_dir / result_name(name, ctx.cfg)
    result["summary"] = summary(name, result, path)
    write_json(result, path)
    return result


def _runner(name: str) -> Callable[[EvalContext], dict[str, Any]]:
    if name == "retrieval":
        from sslkit.evaluation.retrieval import run_retrieval

        return run_retrieval
    if name == "embedding":
        from sslkit.evaluation.embedding import run_embedding

        return run_embedding
    from sslkit.evaluation.records import run_knn, run_linear

    return run_knn if name == "knn" else run_linear


def result_name(name: str, cfg: Any) -> str:
    """knn.json; each linear probe mode has its own file (linear_fast.json, linear_protocol.json)."""
    return f"linear_{cfg.eval.mode}.json" if name == "linear" else f"{name}.json"


def summary(name: str, r: dict[str, Any], path: Path) -> str:
    """One line: the headline accuracy, the settings that matter, sizes, time, and the JSON path."""
    if "headline" in r:  # the picture evaluations say their own headline
        return f"{r['headline']}, {r['seconds']:.1f}s) -> {path}"
    sizes = f"{r['train_size']} train / {r['test_size']} test"
    if name == "knn":
        what = "pixels " if r["features"] == "pixels" else ""
        every = ", ".join(f"k={k} {r['results'][str(k)]['top1']:.2f}%" for k in r["ks"])
        return (f"knn {what}top1={r['top1']:.2f}% top5={r['top5']:.1f}% (k={r['k']}, T={r['temperature']:g}; "
                f"top1 at every k: {every}; {sizes}, {r['seconds']:.1f}s) -> {path}")
    s = r["settings"]
    detail = f"{s['epochs']} epochs, lr={s['lr']:g}"
    return (f"linear {r['mode']} top1={r['top1']:.2f}% top5={r['top5']:.1f}% ({detail}, {sizes}, "
            f"{r['seconds']:.1f}s) -> {path}")
