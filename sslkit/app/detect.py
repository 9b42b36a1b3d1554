"""`sslkit eval detect`: fine-tune Faster R-CNN on a checkpoint's encoder (or a random / supervised
baseline) and write `<out>/detect.json`; under `trainer.devices=N` it restarts under torchrun first."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch

from sslkit import overrides as ov
from sslkit.app.eval_setup import eval_config, output_dir
from sslkit.engine.distributed import init_world, launch_torchrun, shutdown
from sslkit.errors import CheckpointError, ConfigError
from sslkit.evaluation.context import load_trained
from sslkit.evaluation.detection.run import INITS, run, summary
from sslkit.files import write_json


def run_detect(overrides: list[str]) -> dict[str, Any]:
    """Run the whole transfer; under `trainer.devices=N` restart under torchrun first."""
    start = time.perf_counter()
    checkpoint = ov.last_value(overrides, "checkpoint")
    trained = load_trained(checkpoint) if checkpoint else None
    cfg = eval_config("detect", overrides, trained)
    e = cfg.eval
    init = str(e.init)
    if init not in INITS:
        raise ConfigError(f"eval.init={init}; valid: {', '.join(INITS)}")
    if trained is not None and init != "checkpoint":
        raise ConfigError(f"checkpoint= and eval.init={init} exclude each other; drop one")
    if trained is None and init == "checkpoint":
        raise CheckpointError("sslkit eval detect needs checkpoint=<run dir or .pt> (or eval.init=random|supervised "
                              "for the baselines)")
    out_dir = output_dir(cfg, "detect", trained.file if trained else None)
    path = out_dir / "detect.json"
    devices = int(cfg.trainer.devices)
    if devices > 1 and "WORLD_SIZE" not in os.environ:
        extra = [] if cfg.get("out") else [f"out={out_dir}"]  # every rank and this process agree on the folder
        code = launch_torchrun(devices, ["eval", "detect", *overrides, *extra])
        if code != 0 or not path.is_file():
            raise ConfigError(f"torchrun exited with {code}; see the messages above")
        result: dict[str, Any] = json.loads(path.read_text())
        return result
    if cfg.trainer.get("threads"):
        torch.set_num_threads(int(cfg.trainer.threads))
    world = init_world(str(cfg.device))
    try:
        result = run(cfg, init, trained, world, out_dir)
    finally:
        shutdown()
    result["seconds"] = round(time.perf_counter() - start, 3)
    if world.is_main:
        result["summary"] = summary(result, path)
        write_json(result, path)
    else:
        result["summary"] = f"detect rank {world.rank} done"
    return result
