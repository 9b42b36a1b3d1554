"""Baselines for a `sslkit study` evaluation: a randomly initialised encoder (per seed) and raw pixels,
scored exactly as the study scores its runs (kNN at every k, T, and the fast linear probe) on the same
stratified evaluation subsets. Prints one markdown row per baseline.

    python benchmarks/study_baselines.py backbone.small_images=true backbone.width=16 data.image_size=28 \
        --train-subset 10000 --test-subset 5000 --seeds 0 1
"""

from __future__ import annotations

import argparse
import statistics

import torch

from sslkit.app.train import seed_everything
from sslkit.config import as_dict, compose
from sslkit.data import build_dataset
from sslkit.evaluation.features import backbone_features, labels_and_classes, pixel_features
from sslkit.evaluation.knn import knn_accuracy
from sslkit.evaluation.linear import FastSettings, fast_probe
from sslkit.nn.backbones import build_backbone


def score(f_train: torch.Tensor, y_train: torch.Tensor, f_test: torch.Tensor, y_test: torch.Tensor, classes: int,
          ks: list[int], temperature: float, fast: FastSettings) -> dict[str, float]:
    acc = knn_accuracy(f_train, y_train, f_test, y_test, ks, temperature, classes)
    out = {f"k={k}": acc[k]["top1"] for k in ks}
    out["linear"] = fast_probe(f_train, y_train, f_test, y_test, classes, fast)["top1"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--k", type=int, nargs="+", default=[20, 200])
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--fast-epochs", type=int, default=30)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    cfg = compose(a.overrides)
    data = as_dict(cfg.data)
    train_set = build_dataset(cfg.data, "train", a.train_subset)
    test_set = build_dataset(cfg.data, "test", a.test_subset)
    (y_train, classes), (y_test, _) = labels_and_classes(train_set), labels_and_classes(test_set)
    fast = FastSettings(epochs=a.fast_epochs)
    rows: dict[str, list[dict[str, float]]] = {"random init": [], "raw pixels": []}
    size = int(data["image_size"])
    rows["raw pixels"].append(score(pixel_features(train_set, size, progress="none"), y_train,
                                    pixel_features(test_set, size, progress="none"), y_test, classes, a.k,
                                    a.temperature, fast))
    for seed in a.seeds:
        seed_everything(seed)
        model, _ = build_backbone(as_dict(cfg.backbone))
        device = torch.device("cpu")
        f_tr = backbone_features(model, train_set, data, device, 1024, progress="none")
        f_te = backbone_features(model, test_set, data, device, 1024, progress="none")
        rows["random init"].append(score(f_tr, y_train, f_te, y_test, classes, a.k, a.temperature, fast))
    keys = [f"k={k}" for k in a.k] + ["linear"]
    print("| baseline | seeds | " + " | ".join(f"kNN {k}" if k != "linear" else "linear" for k in keys) + " |")
    print("|---|---:|" + "---:|" * len(keys))
    for name, rs in rows.items():
        cells = []
        for key in keys:
            v = [r[key] for r in rs]
            cells.append(f"{v[0]:.2f}" if len(v) == 1 else f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}")
        print(f"| {name} | {len(rs) if name != 'raw pixels' else '-'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
