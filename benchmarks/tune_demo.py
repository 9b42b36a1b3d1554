"""Sweep demo settings at a fixed step budget and report kNN top-1 on Fashion-MNIST.

Quality at a fixed number of optimizer steps does not depend on the device, so this sweep can run
on a GPU and its winner then runs on the 2-core CPU for `make demo`.

    python benchmarks/tune_demo.py --steps 700 --device cuda [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from sslkit.app.train import train
from sslkit.augment import batch_eval_preprocess
from sslkit.config import compose
from sslkit.data import build_dataset
from sslkit.nn.backbones import build_backbone

BASE = ["method=mocov2", "method.queue_size=4096", "method.momentum=0.99", "trainer.progress=none",
        "trainer.checkpoint_every_steps=0", "trainer.log_every_steps=50"]
CONFIGS: dict[str, list[str]] = {  # in order of priority: a time limit cuts the tail
    "base": [],
    "lr0.12": ["optim.lr=0.12"],
    "scale0.4_noblur_lr0.12": ["aug.crop_scale=[0.4,1.0]", "aug.blur_p=0.0", "optim.lr=0.12"],
    "noblur": ["aug.blur_p=0.0"],
    "scale0.4": ["aug.crop_scale=[0.4,1.0]"],
    "tau0.1": ["method.temperature=0.1"],
    "tau0.3": ["method.temperature=0.3"],
    "lr0.06": ["optim.lr=0.06"],
    "lr0.24": ["optim.lr=0.24"],
    "sym_halfsteps": ["method.symmetric=true", "HALF"],
    "b128": ["data.batch_size=128", "DOUBLE"],
    "K1024": ["method.queue_size=1024"],
    "K16384": ["method.queue_size=16384"],
    "m0.9": ["method.momentum=0.9"],
    "m0.996": ["method.momentum=0.996"],
    "nosplit": ["method.shuffle_bn=none"],
    "mocov1aug": ["aug=mocov1"],
    "wd5e-4_lr0.12": ["optim.weight_decay=5e-4", "optim.lr=0.12"],
    "simclr": ["method=simclr", "optim=sgd", "method.temperature=0.2"],
    # second round, around the first round's best (scale 0.4, tau 0.3)
    "r2_lr0.06_warm": ["aug.crop_scale=[0.4,1.0]", "method.temperature=0.3", "optim.lr=0.06",
                       "optim.warmup_epochs=0.5"],
    "r2_b128": ["aug.crop_scale=[0.4,1.0]", "method.temperature=0.3", "data.batch_size=128", "DOUBLE"],
    "r2_sym": ["aug.crop_scale=[0.4,1.0]", "method.temperature=0.3", "method.symmetric=true", "HALF"],
    "r2_headbn_lr0.12_warm": ["aug.crop_scale=[0.4,1.0]", "method.temperature=0.3", "head.batch_norm=true",
                              "optim.lr=0.12", "optim.warmup_epochs=0.5"],
    # third round (CPU): a narrow ResNet-18 with the CIFAR stem at the native 28 px (pass its settings
    # with --extra backbone.small_images=true backbone.width=16 data.image_size=28)
    "r3_demo": ["aug.crop_scale=[0.4,1.0]", "method.temperature=0.3", "optim.lr=0.06", "optim.warmup_epochs=0.5"],
    "r3_K1024": ["aug.crop_scale=[0.4,1.0]", "method.temperature=0.3", "optim.lr=0.06", "optim.warmup_epochs=0.5",
                 "method.queue_size=1024"],
    "r3_b128": ["aug.crop_scale=[0.4,1.0]", "method.temperature=0.3", "optim.lr=0.06", "optim.warmup_epochs=0.5",
                "data.batch_size=128", "DOUBLE"],
    "r3_lr0.12": ["aug.crop_scale=[0.4,1.0]", "method.temperature=0.3", "optim.lr=0.12", "optim.warmup_epochs=0.5"],
}


@torch.no_grad()
def features(backbone, images, cfg, device, batch=2048):
    backbone.eval().to(device)
    out = []
    for i in range(0, len(images), batch):
        x = batch_eval_preprocess(images[i:i + batch].to(device), int(cfg.data.image_size), cfg.data.mean, cfg.data.std)
        out.append(F.normalize(backbone(x).float(), dim=1))
    return torch.cat(out)


@torch.no_grad()
def knn(train_f, train_y, test_f, test_y, k, t=0.1, classes=10, chunk=1024):
    correct = 0
    for i in range(0, len(test_f), chunk):
        sim, idx = (test_f[i:i + chunk] @ train_f.t()).topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], classes, device=sim.device)
        votes.scatter_add_(1, train_y[idx], (sim / t).exp())
        correct += (votes.argmax(1) == test_y[i:i + chunk]).sum().item()
    return 100.0 * correct / len(test_f)


def evaluate(backbone, cfg, device, data):
    (tr_x, tr_y), (te_x, te_y) = data
    ftr, fte = features(backbone, tr_x, cfg, device), features(backbone, te_x, cfg, device)
    return {k: knn(ftr, tr_y.to(device), fte, te_y.to(device), k) for k in (20, 200)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", nargs="*")
    p.add_argument("--extra", nargs="*", default=[])
    p.add_argument("--skip-baselines", action="store_true")
    args = p.parse_args()
    cfg0 = compose(BASE + args.extra)
    tr, te = build_dataset(cfg0.data, "train"), build_dataset(cfg0.data, "test")
    data = ((tr.images.expand(-1, 3, -1, -1), tr.targets), (te.images.expand(-1, 3, -1, -1), te.targets))
    torch.manual_seed(0)
    rand, _ = build_backbone(dict(cfg0.backbone))
    if not args.skip_baselines:
        print(json.dumps({"config": "random_init", "knn": evaluate(rand, cfg0, args.device, data)}), flush=True)
    def flat(x):
        size = int(cfg0.data.image_size)
        return F.normalize(F.interpolate(x.float(), size=size, mode="bilinear", antialias=True).flatten(1), dim=1)

    pix = {} if args.skip_baselines else {k: knn(flat(data[0][0][:, :1]).to(args.device), data[0][1].to(args.device),
                  flat(data[1][0][:, :1]).to(args.device), data[1][1].to(args.device), k) for k in (20, 200)}
    if not args.skip_baselines:
        print(json.dumps({"config": "raw_pixels", "knn": pix}), flush=True)
    for name, ov in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        steps = args.steps // 2 if "HALF" in ov else args.steps * 2 if "DOUBLE" in ov else args.steps
        ov = [o for o in ov if o not in ("HALF", "DOUBLE")]
        out = f"out=/tmp/tune/{name}_{steps}_{len(args.extra)}"
        cfg = compose(BASE + ov + args.extra + [f"trainer.max_steps={steps}", f"device={args.device}", out,
                                                "trainer.epochs=1000"])
        start = time.time()
        run = train(cfg)
        seconds = time.time() - start
        backbone, _ = build_backbone(dict(cfg.backbone))
        backbone.load_state_dict(torch.load(run / "backbone.pt", weights_only=True))
        lines = (run / "metrics.jsonl").read_text().splitlines()
        last = json.loads(lines[-1])
        print(json.dumps({"config": name, "steps": steps, "train_s": round(seconds, 1), "loss": last.get("loss"),
                          "knn": evaluate(backbone, cfg, args.device, data)}), flush=True)


if __name__ == "__main__":
    main()
