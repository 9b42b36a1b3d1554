"""The `sslkit` command: train, eval {knn,linear,batch-compare}, methods, export.

User errors become one line on stderr and exit code 2; an interrupt exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sslkit.errors import ConfigError, UserError, one_line

OVERRIDES_HELP = ("Hydra-style overrides: group=option (method=mocov2 backbone=resnet50 data=cifar10) "
                  "and key=value (data.batch_size=128 trainer.max_steps=100 out=runs/x seed=1).")
EVALS = ("knn", "linear", "batch-compare", "detect")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslkit", description="Self-supervised contrastive learning: MoCo v1/v2, SimCLR.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser("train", help="pretrain a method", description="Pretrain a method. " + OVERRIDES_HELP
                       + " Resume with trainer.resume=<run dir>; trainer.devices=N starts torchrun.")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    e = sub.add_parser("eval", help="evaluate a checkpoint", description="Evaluate a checkpoint's backbone.")
    esub = e.add_subparsers(dest="evaluation", metavar="EVALUATION")
    docs = {"knn": "weighted kNN (k=200, T=0.1) on frozen features with FAISS; eval.k=[10,20,200]",
            "linear": "linear probe: eval.mode=fast (cached features) or eval.mode=protocol (MoCo recipe)",
            "batch-compare": "SimCLR at batch 256 and 8192 vs MoCo v2 at 256 (MoCo v2 Table 2 in miniature)",
            "detect": "fine-tune Faster R-CNN on the encoder, COCO-style AP50/AP/AP75 (see docs/detection.md)"}
    for name in EVALS:
        ep = esub.add_parser(name, help=docs[name], description=docs[name] + ". checkpoint=<run dir or .pt> "
                             "selects the model. " + OVERRIDES_HELP)
        ep.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sub.add_parser("methods", help="list the registered methods", description="List the registered methods.")
    d = sub.add_parser("demo", help="pretrain MoCo v2 on Fashion-MNIST for a few minutes and compare kNN accuracy",
                       description="Pretrain MoCo v2 (ResNet-18) on Fashion-MNIST with the experiment=fmnist_demo "
                       "preset, then print kNN top-1 of the trained encoder, a random encoder and raw pixels. "
                       + OVERRIDES_HELP)
    d.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    x = sub.add_parser("export", help="write a checkpoint's backbone as a plain state_dict",
                       description="Write the backbone of checkpoint=<run dir or .pt> to out=<file> (default "
                       "<run dir>/backbone.pt) as a state_dict for torchvision/timm models.")
    x.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p


def _check_overrides(overrides: Sequence[str]) -> None:
    for o in overrides:
        if "=" not in o and not o.startswith("~"):
            raise ConfigError(f"'{o}' is not an override; write key=value, e.g. trainer.epochs=10")


def _key_values(overrides: Sequence[str], allowed: set[str]) -> dict[str, str]:
    out = {}
    for o in overrides:
        key, _, value = o.partition("=")
        if key not in allowed:
            raise ConfigError(f"unknown option '{key}'; valid: {', '.join(sorted(allowed))}")
        out[key] = value
    return out


def cmd_train(overrides: list[str]) -> int:
    from sslkit.config import compose

    resume = next((o.partition("=")[2] for o in overrides if o.startswith("trainer.resume=")), None)
    if resume and resume != "null":
        cfg, ckpt = _resume_config(resume, overrides)
    else:
        cfg, ckpt = compose(overrides), None
    devices = int(cfg.trainer.devices)
    if devices > 1 and "WORLD_SIZE" not in os.environ:
        from sslkit.engine.distributed import launch_torchrun

        return launch_torchrun(devices, ["train", *overrides])
    from sslkit.train import train

    train(cfg, ckpt)
    return 0


def _resume_config(resume: str, overrides: list[str]) -> tuple[Any, dict[str, Any]]:
    """The checkpoint's own config with this command's key=value overrides applied on top."""
    from omegaconf import OmegaConf

    from sslkit.config import GROUPS, leaf_keys
    from sslkit.train import load_checkpoint, resume_config

    ckpt, run_dir = load_checkpoint(resume)
    cfg = resume_config(ckpt)
    valid = set(leaf_keys(cfg))
    for o in overrides:
        key, _, value = o.partition("=")
        if key in GROUPS:
            raise ConfigError(f"'{o}': config groups cannot change when resuming; start a new run instead")
        if key not in valid:
            raise ConfigError(f"unknown config key '{key}'")
        OmegaConf.update(cfg, key, OmegaConf.create({"v": value})["v"] if value else None)
    cfg.out = str(run_dir)
    cfg.trainer.resume = str(resume)
    return cfg, ckpt


def cmd_eval(name: str, overrides: list[str]) -> int:
    from sslkit.evaluation.entry import run_evaluation

    result = run_evaluation(name.replace("-", "_"), overrides)
    print(result["summary"], flush=True)
    return 0


def cmd_methods() -> int:
    from sslkit.registry import available_methods

    for name, cls in sorted(available_methods().items()):
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:<12} {doc[0] if doc else cls.__qualname__}")
    return 0


def cmd_export(overrides: list[str]) -> int:
    from sslkit.build import backbone_from_state
    from sslkit.export import export_backbone
    from sslkit.train import load_checkpoint, resume_config

    opts = _key_values(overrides, {"checkpoint", "out"})
    if not opts.get("checkpoint"):
        raise ConfigError("export needs checkpoint=<run dir or checkpoint .pt>")
    ckpt, run_dir = load_checkpoint(opts["checkpoint"])
    backbone = backbone_from_state(resume_config(ckpt), ckpt["method"])
    path = export_backbone(backbone, Path(opts.get("out") or run_dir / "backbone.pt"))
    print(f"exported backbone ({sum(p.numel() for p in backbone.parameters())} parameters) to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None or (args.command == "eval" and args.evaluation is None):
        (parser if args.command is None else parser._subparsers._group_actions[0].choices["eval"]).print_help()  # type: ignore[union-attr]
        return 2
    try:
        overrides = list(getattr(args, "overrides", []) or [])
        _check_overrides(overrides)
        if args.command == "train":
            return cmd_train(overrides)
        if args.command == "eval":
            return cmd_eval(args.evaluation, overrides)
        if args.command == "methods":
            return cmd_methods()
        if args.command == "demo":
            from sslkit.demo import run_demo

            run_demo(overrides)
            return 0
        return cmd_export(overrides)
    except UserError as exc:
        print(f"sslkit: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sslkit: interrupted; the last checkpoint is in the run directory (resume with "
              "trainer.resume=<run dir>)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
