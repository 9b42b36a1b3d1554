"""Resolve once, read once (issue 23): a frozen run plan, a read-only config, registries that refuse
a second owner of a name, and data.drop_last that does what it says."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError
from torch import nn

from sslkit.config import compose
from sslkit.data import DATASETS, build_dataset
from sslkit.data.base import TensorImageDataset
from sslkit.data.loader import steps_per_epoch, train_loader
from sslkit.engine import hardware as hw
from sslkit.errors import ConfigError
from sslkit.methods.base import ContrastiveMethod, StepOutput
from sslkit.nn.backbones import BACKBONES
from sslkit.plan import RunPlan, make_plan
from sslkit.plugins import Registry
from sslkit.registry import METHODS, register_method, resolve_method
from tests.conftest import TinyEncoder

OVERRIDES = ["method=mocov2", "method.queue_size=128", "data.batch_size=32", "trainer.max_steps=7", "backbone.width=8"]


def _plan(overrides: list[str]) -> RunPlan:
    cfg = compose(overrides)
    return make_plan(cfg, precision="bf16", channels_last=True, threads=2, workers=0, steps_per_epoch=5,
                     total_steps=7, time_budget=1.5)


def test_composing_and_resolving_twice_gives_equal_plans():
    a, b = _plan(OVERRIDES), _plan(OVERRIDES)
    assert a == b and a is not b
    assert a != _plan([*OVERRIDES, "method.temperature=0.3"])
    assert a.method == "mocov2" and a.method_params["queue_size"] == 128
    assert a.config.trainer.precision == "bf16" and a.config.trainer.channels_last is True
    assert a.config.trainer.max_steps == 7  # the budget's total, recorded so a resume keeps it


def test_a_plan_round_trips_through_config_yaml(tmp_path):
    plan = _plan(OVERRIDES)
    path = tmp_path / "config.yaml"
    path.write_text(plan.to_yaml())
    back = RunPlan.from_yaml(path.read_text())
    assert back == plan
    assert back.machine() == {"precision": "bf16", "channels_last": True, "threads": 2, "workers": 0,
                              "steps_per_epoch": 5, "total_steps": 7, "time_budget": 1.5}
    assert back.to_yaml() == plan.to_yaml()


def test_config_yaml_without_a_plan_or_with_unknown_plan_keys_is_a_one_line_error():
    with pytest.raises(ConfigError, match="no 'plan:' section"):
        RunPlan.from_yaml("seed: 0\n")
    with pytest.raises(ConfigError, match="unknown key.*threadz"):
        RunPlan.from_yaml(_plan(OVERRIDES).to_yaml().replace("threads:", "threadz:"))


def test_the_plan_and_the_composed_config_are_read_only():
    cfg = compose(OVERRIDES)
    with pytest.raises(ReadonlyConfigError):
        cfg.trainer.precision = "32"
    with pytest.raises(ReadonlyConfigError):
        OmegaConf.update(cfg, "trainer.max_steps", 1)
    plan = _plan(OVERRIDES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.total_steps = 1  # type: ignore[misc]
    with pytest.raises(ReadonlyConfigError):
        plan.config.method.queue_size = 1
    with pytest.raises(TypeError):
        plan.method_params["queue_size"] = 1  # type: ignore[index]
    assert cfg.trainer.precision == "auto"  # make_plan wrote into a copy


def test_nothing_below_the_app_writes_into_a_resolved_config(monkeypatch):
    """The engine's machine fit and the method build only read the (read-only) config: they run on it
    without a ReadonlyConfigError, and leave it equal to what compose returned."""
    from sslkit.build import build_method

    monkeypatch.setattr(hw, "cpu_has_native_bf16", lambda: True)
    cfg = compose(OVERRIDES + ["method.shuffle_bn=none"])
    before = OmegaConf.to_yaml(cfg)
    threads = torch.get_num_threads()
    try:
        method = build_method(cfg)
        machine = hw.fit_to_machine(cfg, torch.device("cpu"), TinyEncoder(), wants_workers=False,
                                    probe=lambda: True)
    finally:
        torch.set_num_threads(threads)
    assert machine.precision == "bf16" and machine.channels_last is True
    assert OmegaConf.to_yaml(cfg) == before
    assert method.queue.size == 128


def test_a_method_gets_the_world_size_at_construction():
    from sslkit.build import build_method

    cfg = compose(["method=mocov2", "method.queue_size=64", "method.split_bn_groups=1", "backbone.width=8"])
    assert build_method(cfg, world_size=1).shuffle_bn == "none"
    assert build_method(cfg, world_size=2).shuffle_bn == "ddp"  # shuffle-BN across ranks, not split
    assert build_method(compose(["method=simclr", "backbone.width=8"]), world_size=4).world_size == 4


def test_method_parameter_types_and_bounds_come_from_the_method():
    with pytest.raises(ConfigError, match=r"^method.queue_size=1.5 is invalid: expected an integer$"):
        compose(["method.queue_size=1.5"])
    with pytest.raises(ConfigError, match=r"^method.queue_size=0 is invalid: must be > 0"):
        compose(["method.queue_size=0"])
    with pytest.raises(ConfigError, match=r"method.chunk_size='x' is invalid: expected an integer \(or null\)"):
        compose(["method=simclr", "method.chunk_size=x"])
    with pytest.raises(ConfigError, match=r"^method.chunk_size=0 is invalid: must be >= 1"):
        compose(["method=simclr", "method.chunk_size=0"])
    assert compose(["method=simclr", "method.chunk_size=64"]).method.chunk_size == 64


class _Twin(ContrastiveMethod):
    def training_step(self, views):  # pragma: no cover - never trained
        return StepOutput(views[0].sum())


def test_registering_two_methods_under_one_name_is_a_one_line_error():
    resolve_method("mocov2")  # the built-ins are registered
    with pytest.raises(ConfigError) as err:
        register_method("mocov2")(_Twin)
    message = str(err.value)
    assert "\n" not in message
    assert message == ("method 'mocov2' is registered twice: by sslkit.methods.mocov2.MoCoV2 and by "
                       "tests.test_plan._Twin; rename one of them")
    assert resolve_method("mocov2").__name__ == "MoCoV2"  # the first owner keeps the name
    register_method("mocov2")(METHODS.get("mocov2"))  # the same class again (a re-import) is fine


def test_registering_two_datasets_or_backbones_under_one_name_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"^dataset 'cifar10' is registered twice: .*; rename one of them$"):
        DATASETS.register("cifar10")(lambda cfg, split: None)
    with pytest.raises(ConfigError, match=r"^backbone 'resnet18' is registered twice"):
        BACKBONES.register("resnet18")(lambda cfg: (nn.Identity(), 1))


def test_a_registry_resolves_registered_names_and_import_paths_and_refuses_paths_from_files():
    reg: Registry[object] = Registry("widget", "sslkit.test_widgets")
    reg.register("plain")(dict)
    assert reg.get("plain") is dict and reg.names() == ["plain"]
    assert reg.get("collections:OrderedDict", allow_import=True).__name__ == "OrderedDict"
    with pytest.raises(ConfigError, match="comes from a file"):
        reg.get("collections:OrderedDict", allow_import=False)
    with pytest.raises(ConfigError, match="comes from a file"):  # by default: only a spec the user typed
        reg.get("collections:Counter")
    with pytest.raises(ConfigError, match=r"^unknown widget 'plane'; did you mean 'plain'\?"):
        reg.get("plane")


def test_a_dataset_plugin_trains_from_the_registry(tmp_path):
    images = torch.randint(0, 255, (10, 3, 8, 8), dtype=torch.uint8)

    @DATASETS.register("test_plan_tiny")
    def tiny(cfg, split):
        return TensorImageDataset(images, torch.zeros(10, dtype=torch.long), 1)

    try:
        ds = build_dataset({"name": "test_plan_tiny", "subset": None}, "pretrain")
        assert len(ds) == 10
    finally:
        DATASETS._items.pop("test_plan_tiny")


def test_data_drop_last_is_read_by_the_loader():
    ds = TensorImageDataset(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10), 10)
    kept = [len(b[1]) for b in train_loader(ds, 4, drop_last=False)]
    dropped = [len(b[1]) for b in train_loader(ds, 4, drop_last=True)]
    assert sorted(kept) == [2, 4, 4] and dropped == [4, 4]
    assert steps_per_epoch(10, 4, 1, drop_last=False) == len(kept) == 3
    assert steps_per_epoch(10, 4, 1, drop_last=True) == len(dropped) == 2
    assert compose(["data.drop_last=false"]).data.drop_last is False
