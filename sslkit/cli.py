"""The `sslkit` command: train, eval {knn,linear,batch-compare}, study {table1,table2}, methods, export.

User errors become one line on stderr and exit code 2. Training stopped by SIGINT, SIGTERM or SIGUSR1
checkpoints at a step boundary and exits with 128 + the signal number (130, 143, 138); see
docs/reliability.md.
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
EVALS = ("knn", "linear", "batch-compare", "retrieval", "embedding", "detect")


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
            "retrieval": "a PNG grid of test queries and their nearest training images, trained vs random encoder",
            "embedding": "a 2-D map of test features coloured by class (eval.tensorboard=true: projector too)",
            "detect": "fine-tune Faster R-CNN on the encoder, COCO-style AP50/AP/AP75 (see docs/detection.md)"}
    for name in EVALS:
        ep = esub.add_parser(name, help=docs[name], description=docs[name] + ". checkpoint=<run dir or .pt> "
                             "selects the model. " + OVERRIDES_HELP)
        ep.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    st = sub.add_parser("study", help="the MoCo v2 paper's Table 1 or Table 2 in miniature, several seeds",
                        description="Train every row of MoCo v2's Table 1 (table1) or Table 2 (table2, the fair "
                        "batch-compare) with the same image budget and eval.seeds, score each by kNN and the "
                        "linear probe, and write study.md/json/png. " + OVERRIDES_HELP)
    st.add_argument("table", choices=("table1", "table2"))
    st.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sub.add_parser("methods", help="list the registered methods", description="List the registered methods.")
    d = sub.add_parser("demo", help="pretrain MoCo v2 on Fashion-MNIST for a few minutes and compare kNN accuracy",
                       description="Pretrain MoCo v2 (ResNet-18) on Fashion-MNIST with the experiment=fmnist_demo "
                       "preset, then print kNN top-1 of the trained encoder, a random encoder and raw pixels. "
                       + OVERRIDES_HELP)
    d.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    r = sub.add_parser("report", help="write <run dir>/report.html: config, curves, evaluations, pictures",
                       description="One self-contained HTML page for checkpoint=<run dir> (out=<file> to move it).")
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    x = sub.add_parser("export", help="write a checkpoint's backbone as a plain state_dict",
                       description="Write the backbone of checkpoint=<run dir or .pt> to out=<file> (default "
                       "<run dir>/backbone.pt) as a state_dict for torchvision/timm models.")
    x.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    c = sub.add_parser("checkpoint", help="checkpoint tools: upgrade an old-format checkpoint",
                       description="Checkpoint tools.")
    csub = c.add_subparsers(dest="action", metavar="ACTION")
    u = csub.add_parser("upgrade", help="convert a checkpoint from an older sslkit format (unpickles it: trusted "
                        "files only)", description="Convert an sslkit checkpoint written before format "
                        "version 2 into the current format, which loads without unpickling. Reading the old "
                        "file unpickles it and can run code: upgrade only files you trust. The old file is "
                        "kept as FILE.v1.bak unless out= names another output file.")
    u.add_argument("file", metavar="FILE")
    u.add_argument("overrides", nargs="*", metavar="out=PATH")
    return p


def cmd_checkpoint_upgrade(file: str, overrides: list[str]) -> int:
    from sslkit.engine import checkpoint as ckpt
    from sslkit.errors import CheckpointError

    opts = _key_values(overrides, {"out"})
    src = ckpt.resolve(file)
    out = Path(opts["out"]) if opts.get("out") else src
    if out != src and out.exists():
        raise CheckpointError(f"out={out} exists; choose a new file")
    print(f"sslkit: warning: unpickling {src} to convert it; this can run code from the file: upgrade only "
          "checkpoints you trust", file=sys.stderr, flush=True)
    if out == src:
        backup = src.with_name(src.name + ".v1.bak")
        if backup.exists():
            raise CheckpointError(f"{backup} exists; move it away or pass out=<new file>")
        import shutil

        shutil.copy2(src, backup)
    version = ckpt.upgrade(src, out)
    if version == ckpt.VERSION:
        if out == src:
            backup.unlink()
        print(f"{src} is already format {ckpt.VERSION}; nothing to do")
    else:
        print(f"upgraded {src} from format {version} to {ckpt.VERSION}: {out}"
              + (f" (the old file is {src.name}.v1.bak)" if out == src else ""))
    return 0


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
    from sslkit.config import compose, warn_unused

    resume = next((o.partition("=")[2] for o in overrides if o.startswith("trainer.resume=")), None)
    if resume and resume != "null":
        cfg, ckpt = _resume_config(resume, overrides)
    else:
        cfg, ckpt = compose(overrides), None
    devices = int(cfg.trainer.devices)
    if "WORLD_SIZE" not in os.environ:  # checks that must not wait for torchrun's workers
        warn_unused("train", overrides)
        _check_launch(cfg, devices, resumed=ckpt is not None)
    if devices > 1 and "WORLD_SIZE" not in os.environ:
        from sslkit.engine.distributed import launch_torchrun

        return launch_torchrun(devices, ["train", *overrides])
    from sslkit.train import train

    train(cfg, ckpt)
    return 0


def _check_launch(cfg: Any, devices: int, resumed: bool) -> None:
    """Device, batch and out= checks, before torchrun starts any worker."""
    from sslkit.engine.outputs import claim_run_dir

    spec = str(cfg.device)
    if devices > 1 and spec.startswith("cuda:"):
        raise ConfigError(f"device={spec} puts all {devices} processes on one GPU; with trainer.devices={devices} "
                          "use device=auto or device=cuda (rank i uses GPU i)")
    batch = int(cfg.data.batch_size)
    if devices > 1 and batch % devices:
        raise ConfigError(f"data.batch_size={batch} must be divisible by trainer.devices={devices}")
    if cfg.out and not resumed:
        claim_run_dir(Path(str(cfg.out)), bool(cfg.trainer.get("overwrite", False)))


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
        if key not in valid and key != "trainer.overwrite":
            from sslkit.errors import closest

            best = closest(key, valid)
            raise ConfigError(f"unknown config key '{key}'" + (f"; did you mean '{best}'?" if best else ""))
        OmegaConf.update(cfg, key, OmegaConf.create({"v": value})["v"] if value else None, force_add=True)
    cfg.out = str(run_dir)
    cfg.trainer.resume = str(resume)
    from sslkit.config import check_values

    check_values(cfg)
    return cfg, ckpt


def cmd_eval(name: str, overrides: list[str]) -> int:
    from sslkit.config import warn_unused
    from sslkit.evaluation.entry import run_evaluation

    warn_unused("eval", overrides)
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
    from sslkit.engine.outputs import new_file
    from sslkit.export import export_backbone
    from sslkit.train import load_checkpoint, resume_config

    opts = _key_values(overrides, {"checkpoint", "out"})
    if not opts.get("checkpoint"):
        raise ConfigError("export needs checkpoint=<run dir or checkpoint .pt>")
    ckpt, run_dir = load_checkpoint(opts["checkpoint"])
    out = Path(opts["out"]) if opts.get("out") else run_dir / "backbone.pt"
    if opts.get("out"):  # the default <run dir>/backbone.pt is the run's own export; anything else must be new
        new_file(out)
    backbone = backbone_from_state(resume_config(ckpt), ckpt["method"])
    path = export_backbone(backbone, out)
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
        if args.command == "study":
            from sslkit.evaluation.study import run_study

            print(run_study(args.table, overrides)["summary"], flush=True)
            return 0
        if args.command == "methods":
            return cmd_methods()
        if args.command == "demo":
            from sslkit.demo import run_demo

            run_demo(overrides)
            return 0
        if args.command == "report":
            from sslkit.evaluation.report import cmd_report

            return cmd_report(_key_values(overrides, {"checkpoint", "out"}))
        if args.command == "checkpoint":
            if args.action != "upgrade":
                parser._subparsers._group_actions[0].choices["checkpoint"].print_help()  # type: ignore[union-attr]
                return 2
            return cmd_checkpoint_upgrade(args.file, overrides)
        return cmd_export(overrides)
    except UserError as exc:
        from sslkit.engine.signals import Interrupted

        kind = "stopped" if isinstance(exc, Interrupted) else "error"
        print(f"sslkit: {kind}: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # before or after training (inside it, the loop stops at a step boundary)
        print("sslkit: interrupted; nothing new was saved by this command", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
