"""Which config an evaluation uses: the checkpoint's data and backbone unless the command line says
otherwise, and where the results go."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sslkit.app.eval_setup import eval_config, load_context, output_dir
from sslkit.config import compose, to_yaml
from sslkit.errors import CheckpointError, ConfigError
from sslkit.evaluation.context import TrainedBackbone


def trained(**data) -> TrainedBackbone:
    cfg = compose(["data=cifar10", "backbone.small_images=true", *[f"data.{k}={v}" for k, v in data.items()]])
    return TrainedBackbone(Path("/x/run/checkpoints/last.pt"), OmegaConf.create(to_yaml(cfg)), None)  # type: ignore[arg-type]


def test_the_checkpoint_data_is_used_with_command_line_keys_on_top():
    t = trained(root="/data/c10", image_size=40)
    cfg = eval_config("knn", ["data.image_size=36", "eval.k=[5]"], t)
    assert cfg.data.name == "cifar10" and cfg.data.root == "/data/c10"  # from the checkpoint
    assert cfg.data.image_size == 36  # the command line wins
    assert cfg.backbone.small_images is True and list(cfg.eval.k) == [5]


def test_a_data_group_on_the_command_line_replaces_the_checkpoint_data():
    cfg = eval_config("knn", ["data=mnist"], trained(root="/data/c10"))
    assert cfg.data.name == "mnist" and cfg.data.root is None


def test_eval_group_cannot_be_overridden_and_keys_are_validated():
    with pytest.raises(ConfigError, match="subcommand"):
        eval_config("knn", ["eval=linear"], None)
    with pytest.raises(ConfigError, match="eval.temperature"):
        eval_config("knn", ["eval.temprature=0.1"], None)


def test_checkpoint_is_required_except_for_the_pixel_baseline(tmp_path):
    with pytest.raises(CheckpointError, match="needs checkpoint="):
        load_context("linear", [])
    with pytest.raises(CheckpointError, match="does not exist"):
        load_context("knn", [f"checkpoint={tmp_path / 'nothing.pt'}"])
    ctx = load_context("knn", ["eval.features=pixels", f"out={tmp_path}"])
    assert ctx.trained is None and ctx.out_dir == tmp_path and ctx.data["name"] == "fashion_mnist"


def test_output_directory():
    cfg = compose([])
    assert output_dir(cfg, "knn", Path("/r/run/checkpoints/last.pt")) == Path("/r/run/eval")
    assert output_dir(cfg, "knn", Path("/models/mine.pt")) == Path("/models/eval")
    assert output_dir(compose(["out=/tmp/o"]), "knn", Path("/r/x.pt")) == Path("/tmp/o")
    assert output_dir(cfg, "knn", None).name.endswith("_knn")
