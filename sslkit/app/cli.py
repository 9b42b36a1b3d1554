"""The `sslkit` command: train, eval {knn,linear,batch-compare,...}, study {table1,table2}, demo, report,
export, embed, index, search, dedupe, checkpoint upgrade, methods.

User errors become one line on stderr and exit code 2. Training stopped by SIGINT, SIGTERM or SIGUSR1
checkpoints at a step boundary and exits with 128 + the signal number (130, 143, 138); see
docs/reliability.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from sslkit.app.evaluate import EVALUATIONS
from sslkit.app.exits import exit_code
from sslkit.errors import ConfigError
from sslkit.overrides import check_form, key_values

OVERRIDES_HELP = ("Hydra-style overrides: group=option (method=mocov2 backbone=resnet50 data=cifar10) "
                  "and key=value (data.batch_size=128 trainer.max_steps=100 out=runs/x seed=1).")


#: the commands that apply a trained encoder (sslkit.app.embed): name, help, description
APPLY = (
    ("embed", "embed every image under a folder with a trained encoder (Parquet, .npy, paths)",
     "checkpoint=<run dir, checkpoint or exported .pt> data=imagefolder data.root=<folder> out=<folder> "
     "[data.batch_size=256] [embed.chunk_size=4096] [device=auto]: embeddings of every image under the folder "
     "(recursively) with the encoder's own evaluation view, streamed and resumable (the same out= continues)."),
    ("index", "build a FAISS index of an embed (exact up to 1M vectors, IVF above)",
     "embeddings=<embed folder> [out=<folder>] [index.kind=auto|flat|ivf|hnsw] [index.nlist=N]: a cosine "
     "nearest-neighbour index, saved as index.faiss + index.json (in the embed folder by default)."),
    ("search", "the nearest images of a query image or folder: printed, CSV, PNG grid and HTML",
     "index=<folder with index.faiss> query=<image or folder> [k=10] [out=<folder>] [grid=16]: the k nearest "
     "indexed images of each query by cosine, with the encoder that built the index."),
    ("dedupe", "near-duplicate pairs above a cosine threshold: CSV and a grid of the top pairs",
     "index=<folder with index.faiss> (or embeddings=<embed folder>) [threshold=0.95] [out=<folder>] [grid=16]: "
     "every pair of images whose embeddings have cosine similarity >= threshold."),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslkit", description="Self-supervised contrastive learning: MoCo v1/v2, SimCLR.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser("train", help="pretrain a method", description="Pretrain a method. " + OVERRIDES_HELP
                       + " Resume with trainer.resume=<run dir>; trainer.devices=N starts torchrun.")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    e = sub.add_parser("eval", help="evaluate a checkpoint", description="Evaluate a checkpoint's backbone.")
    esub = e.add_subparsers(dest="evaluation", metavar="EVALUATION")
    for name, doc in EVALUATIONS.items():
        ep = esub.add_parser(name, help=doc, description=doc + ". checkpoint=<run dir or .pt> "
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
    x = sub.add_parser("export", help="write a checkpoint's backbone for torchvision, timm, ONNX or TorchScript",
                       description="Write the backbone of checkpoint=<run dir or .pt> to out=<file> (default "
                       "<run dir>/backbone_<format>.pt, backbone.onnx) in format=torchvision|timm|onnx|torchscript "
                       "(default: torchvision for its ResNets, timm for timm backbones), with <file>.json saying how "
                       "to load it.")
    x.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    for name, short, long in APPLY:
        a = sub.add_parser(name, help=short, description=long)
        a.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
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


def cmd_eval(name: str, overrides: list[str]) -> int:
    from sslkit.app.evaluate import run_evaluation
    from sslkit.config import warn_unused

    warn_unused("eval", overrides)
    print(run_evaluation(name, overrides)["summary"], flush=True)
    return 0


def cmd_study(table: str, overrides: list[str]) -> int:
    from sslkit.app.study import run_study

    print(run_study(table, overrides)["summary"], flush=True)
    return 0


def cmd_methods() -> int:
    from sslkit.registry import available_methods

    for name, cls in sorted(available_methods().items()):  # name, family, paper, first docstring line
        doc = (cls.__doc__ or "").strip().splitlines()
        paper = getattr(cls, "paper", "") or "-"
        print(f"{name:<14} {getattr(cls, 'family', 'other'):<22} {paper:<44} {doc[0] if doc else cls.__qualname__}")
    return 0


def cmd_demo(overrides: list[str]) -> int:
    from sslkit.app.demo import run_demo

    run_demo(overrides)
    return 0


def cmd_report(overrides: list[str]) -> int:
    """`sslkit report checkpoint=<run dir> [out=<file>]`."""
    from sslkit.evaluation.report import run_directory, write_report

    opts = key_values(overrides, {"checkpoint", "out"})
    if not opts.get("checkpoint"):
        raise ConfigError("report needs checkpoint=<run dir>")
    path, counts = write_report(run_directory(opts["checkpoint"]), Path(opts["out"]) if opts.get("out") else None)
    print(f"report: {counts['evaluations']} evaluations, {counts['pictures']} pictures -> {path}", flush=True)
    return 0


def _dispatch(args: argparse.Namespace, overrides: list[str]) -> int:
    check_form(overrides)
    if args.command == "train":
        from sslkit.app.launch import train_command

        return train_command(overrides)
    if args.command == "eval":
        return cmd_eval(args.evaluation, overrides)
    if args.command == "study":
        return cmd_study(args.table, overrides)
    if args.command == "methods":
        return cmd_methods()
    if args.command == "demo":
        return cmd_demo(overrides)
    if args.command == "report":
        return cmd_report(overrides)
    if args.command in {name for name, _, _ in APPLY}:
        from sslkit.app import embed

        return int(getattr(embed, f"{args.command}_command")(overrides))
    if args.command == "checkpoint":
        from sslkit.app.export import upgrade_command

        return upgrade_command(args.file, overrides)
    from sslkit.app.export import export_command

    return export_command(overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    helps = {"eval": "evaluation", "checkpoint": "action"}  # commands that need a subcommand
    if args.command is None or getattr(args, helps.get(args.command, "command")) is None:
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        (parser if args.command is None else subparsers.choices[args.command]).print_help()
        return 2
    return exit_code(lambda: _dispatch(args, list(getattr(args, "overrides", []) or [])))


if __name__ == "__main__":
    raise SystemExit(main())
