"""Presets and documented commands against the reference settings they claim to reproduce."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sslkit.config import as_dict, compose

ROOT = Path(__file__).resolve().parents[2]

# facebookresearch/moco, colab/moco_cifar10_demo.ipynb: args and ModelBase / train_transform
COLAB = {
    "backbone.name": "resnet18", "backbone.small_images": True,
    "head.kind": "linear", "head.out_dim": 128,  # resnet18(num_classes=128): a linear fc, no MLP
    "aug.crop_scale": [0.08, 1.0], "aug.jitter": [0.4, 0.4, 0.4, 0.1], "aug.jitter_p": 0.8, "aug.gray_p": 0.2,
    "aug.blur_p": 0.0, "aug.flip_p": 0.5, "aug.order": "jitter_first",
    "data.batch_size": 512, "method.queue_size": 4096, "method.momentum": 0.99, "method.temperature": 0.1,
    "method.split_bn_groups": 8, "method.symmetric": True, "method.symmetric_reduction": "sum",
    "optim.name": "sgd", "optim.momentum": 0.9, "optim.weight_decay": 5e-4, "optim.schedule": "cosine",
    "optim.warmup_epochs": 0.0, "trainer.epochs": 200,
}


def get(cfg: dict, dotted: str) -> object:
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def test_cifar10_mocov2_preset_is_the_colab_demo():
    from sslkit.build import build_method
    from sslkit.engine.optim import scaled_lr

    cfg = compose(["experiment=cifar10_mocov2"])
    plain = as_dict(cfg)
    for key, value in COLAB.items():
        assert get(plain, key) == pytest.approx(value), key
    assert scaled_lr(float(cfg.optim.lr), 512, str(cfg.optim.lr_scaling)) == pytest.approx(0.06)
    head = build_method(cfg).head
    assert [type(m).__name__ for m in head] == ["Linear"] and head[0].in_features == 512


def documented_train_commands() -> list[list[str]]:
    text = (ROOT / "docs" / "paper.md").read_text()
    common = re.search(r'COMMON="([^"]+)"', text)
    assert common, "docs/paper.md defines COMMON"
    commands = []
    for line in text.splitlines():
        m = re.match(r"\| [^|]+ \|.*`sslkit train ([^`]+)`", line)
        if m:
            args = m.group(1).replace("$COMMON", common.group(1)).replace("$IMAGENET", "/data/imagenet")
            commands.append(shlex.split(args))
    return commands


def test_table_1_and_2_commands_are_complete():
    commands = documented_train_commands()
    assert len(commands) == 9  # 6 rows of Table 1, 3 of Table 2
    for args in commands:
        cfg = compose(args)
        assert cfg.backbone.name == "resnet50" and cfg.data.name == "imagefolder", args
        assert cfg.data.root == "/data/imagenet" and cfg.trainer.epochs in (200, 800), args
        assert cfg.data.batch_size in (256, 8192), args
