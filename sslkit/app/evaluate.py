"""`sslkit eval <evaluation>`: compose, load the checkpoint, evaluate, write JSON, summarise in one line."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sslkit import overrides as ov
from sslkit.config import as_dict, compose, group_options
from sslkit.devices import pick_device
from sslkit.engine import checkpoint as ckpt_io
from sslkit.engine.outputs import timestamped, writable_dir
from sslkit.errors import CheckpointError, ConfigError, suggestion
from sslkit.evaluation.context import EvalContext, TrainedBackbone, load_trained
from sslkit.files import write_json

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
    """Run evaluation `name` (`batch-compare` or `batch_compare`) with `overrides`; the JSON record plus `summary`."""
    name = name.replace("_", "-")
    if name not in EVALUATIONS:
        raise ConfigError(f"unknown evaluation '{name}'; {suggestion(name, EVALUATIONS)}")
    start = time.perf_counter()
    if name == "batch-compare":
        from sslkit.app.batch_compare import run_batch_compare

        return run_batch_compare(list(overrides))
    if name == "detect":
        from sslkit.app.detect import run_detect

        return run_detect(list(overrides))
    ctx = load_context(name, list(overrides))
    from sslkit.data import decodes_images
    from sslkit.engine.hardware import apply_cpu_split

    split = apply_cpu_split(ctx.device, decodes_images(str(ctx.data["name"])), ctx.cfg.trainer.get("threads"),
                            ctx.data.get("num_workers"))
    ctx.data["num_workers"] = split.workers  # feature extraction and the linear probe's loader
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


def eval_config(name: str, overrides: list[str], trained: TrainedBackbone | None) -> DictConfig:
    """Compose with `eval=<name>`; without a `data=` override the checkpoint's data config is used,
    with the command line's `data.*` keys re-applied on top."""
    if ov.chooses(overrides, "eval"):
        raise ConfigError("choose the evaluation with the subcommand (sslkit eval knn|linear|batch-compare), "
                          "not with eval=...")
    keys = ov.keys(overrides)
    extra = [f"eval={name.replace('-', '_')}"]
    chose_data = ov.chooses(overrides, "data")
    if trained is not None and not chose_data and trained.config.get("data") is not None:
        trained_data = str(trained.config.data.name)
        if trained_data in group_options("data"):  # validate data.* keys against the right group
            extra.append(f"data={trained_data}")
    cfg = compose(overrides, extra=extra)
    if trained is not None and not chose_data and trained.config.get("data") is not None:
        data = OmegaConf.create(as_dict(trained.config.data))
        for key, _ in keys:
            if key.startswith("data."):
                OmegaConf.update(data, key[len("data."):], OmegaConf.select(cfg, key), force_add=True)
        OmegaConf.set_struct(cfg, False)
        cfg.data = data
    if trained is not None:
        _check_backbone(keys, cfg, trained)
        OmegaConf.set_struct(cfg, False)
        cfg.backbone = trained.config.backbone
    return cfg


def _check_backbone(keys: list[tuple[str, bool]], cfg: DictConfig, trained: TrainedBackbone) -> None:
    """A backbone given on the command line must be the checkpoint's own: an evaluation cannot change it."""
    if not any(k == "backbone" or k.startswith("backbone.") for k, _ in keys):
        return
    given, saved = as_dict(cfg.backbone), as_dict(trained.config.backbone)
    differ = sorted(k for k in set(given) | set(saved) if given.get(k) != saved.get(k))
    if differ:
        k = differ[0]
        raise ConfigError(f"the checkpoint's backbone is {trained.name}, but the command line sets backbone.{k}="
                          f"{given.get(k)} (it has {saved.get(k)}); an evaluation uses the checkpoint's backbone: "
                          "drop the backbone override")


def output_dir(cfg: DictConfig, name: str, checkpoint: Path | None) -> Path:
    """`out=`, else `<run dir>/eval` (beside a checkpoint outside a run dir), else runs/<time>_<name>."""
    if cfg.get("out"):
        return writable_dir(Path(str(cfg.out)))
    if checkpoint is not None:
        return ckpt_io.run_dir_of(checkpoint) / "eval"
    return timestamped(name)


def load_context(name: str, overrides: list[str]) -> EvalContext:
    """Compose, load the checkpoint (`checkpoint=`) and decide the output directory.

    Only the raw-pixel kNN baseline (`eval.features=pixels`) runs without a checkpoint."""
    checkpoint = ov.last_value(overrides, "checkpoint")
    trained = load_trained(checkpoint) if checkpoint else None
    cfg = eval_config(name, overrides, trained)
    pixels = name == "knn" and str(cfg.eval.get("features", "backbone")) == "pixels"
    if trained is None and not pixels:
        hint = " (or eval.features=pixels for the raw-pixel baseline)" if name == "knn" else ""
        raise CheckpointError(f"sslkit eval {name} needs checkpoint=<run dir or .pt>{hint}")
    file = trained.file if trained is not None else None
    return EvalContext(name, cfg, as_dict(cfg.data), trained, output_dir(cfg, name, file),
                       pick_device(str(cfg.device), 0))


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
