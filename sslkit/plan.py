"""The run plan: what a training run resolved to, frozen, and the one thing the app and engine read.

Compose (sslkit.config.compose) validates the command line once and resolves the config's own
`auto`s (warm-up epochs, a plug-in's defaults) into a read-only config. The app then fits the run to
the machine and the time budget (precision, memory format, threads, workers, steps) and freezes all
of it here. Nothing writes into a config after that: `OmegaConf.set_readonly` makes a write an
error. `config.yaml` is the plan written out (`to_yaml`): the config with the resolved precision and
memory format (and, under a time budget, `trainer.max_steps`), plus a `plan:` section with what
only the machine decides; `from_yaml` reads it back. A resume starts from the plan's config and fits
threads and workers again to the machine it resumes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sslkit.errors import ConfigError

PLAN_KEY = "plan"


def frozen(container: Mapping[Any, Any] | DictConfig) -> DictConfig:
    """A new read-only, struct config of `container` (a config's copy, never the config itself)."""
    data: Any = OmegaConf.to_container(container, resolve=True) if isinstance(container, DictConfig) else container
    cfg = OmegaConf.create(data)
    if not isinstance(cfg, DictConfig):
        raise ConfigError("a config must be a mapping of keys")
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def with_values(cfg: DictConfig, values: Mapping[str, Any]) -> DictConfig:
    """A frozen copy of `cfg` with dotted `values` set (`cfg` itself is left as it is)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    for key, value in values.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return frozen(data)


def replaced(cfg: DictConfig, groups: Mapping[str, Any]) -> DictConfig:
    """A frozen copy of `cfg` whose top-level `groups` are replaced whole (an evaluation's config with
    the checkpoint's data and backbone)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    return frozen(data | dict(groups))


def without_plan(cfg: DictConfig) -> DictConfig:
    """A config (e.g. a checkpoint's) without its `plan:` section, as a mutable copy for the app."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop(PLAN_KEY, None)
    out = OmegaConf.create(data)
    assert isinstance(out, DictConfig)
    return out


@dataclass(frozen=True)
class RunPlan:
    """A training run as resolved: the read-only config and what the machine and budget decided."""

    config: DictConfig
    precision: str           # "32" | "bf16" | "fp16": trainer.precision as run ("auto" resolved)
    channels_last: bool      # the memory format as run (trainer.channels_last "auto" resolved)
    threads: int             # torch threads of this process
    workers: int             # DataLoader workers
    steps_per_epoch: int     # optimizer steps per epoch (sslkit.data.loader.steps_per_epoch)
    total_steps: int         # the run's last step: epochs, max_steps and the time budget applied
    time_budget: float | None = None  # minutes (trainer.time_budget), None without a budget

    @property
    def method(self) -> str:
        return str(self.config.method.name)

    @property
    def method_params(self) -> Mapping[str, Any]:
        """The method's constructor keywords (`method.*` without `name`), read-only."""
        params = OmegaConf.to_container(self.config.method, resolve=True)
        assert isinstance(params, dict)
        return MappingProxyType({str(k): v for k, v in params.items() if k != "name"})

    def machine(self) -> dict[str, Any]:
        """The fields that are not the config: the `plan:` section of config.yaml."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "config"}

    def to_yaml(self) -> str:
        """config.yaml: the config, then `plan:` with what the machine and the budget decided."""
        return OmegaConf.to_yaml(self.config, resolve=True) + OmegaConf.to_yaml({PLAN_KEY: self.machine()})

    @classmethod
    def from_yaml(cls, text: str) -> RunPlan:
        """The plan a config.yaml (or a checkpoint's config) holds."""
        loaded = OmegaConf.create(text)
        if not isinstance(loaded, DictConfig) or PLAN_KEY not in loaded:
            raise ConfigError(f"this config has no '{PLAN_KEY}:' section; it was not written by `sslkit train`")
        machine = OmegaConf.to_container(loaded[PLAN_KEY], resolve=True)
        assert isinstance(machine, dict)
        known = {f.name for f in fields(cls)} - {"config"}
        unknown = set(map(str, machine)) - known
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(sorted(unknown))} in '{PLAN_KEY}:'; valid: "
                              f"{', '.join(sorted(known))}")
        return cls(config=frozen(without_plan(loaded)), **{str(k): v for k, v in machine.items()})


def make_plan(cfg: DictConfig, *, precision: str, channels_last: bool, threads: int, workers: int,
              steps_per_epoch: int, total_steps: int, time_budget: float | None = None) -> RunPlan:
    """Freeze a run: `cfg` (left as it is) with the resolved precision and memory format written into a
    copy; under a time budget `trainer.max_steps` is the planned total, so a resume keeps it."""
    values: dict[str, Any] = {"trainer.precision": precision, "trainer.channels_last": channels_last}
    if time_budget is not None:
        values["trainer.max_steps"] = total_steps
    return RunPlan(with_values(without_plan(cfg), values), precision, channels_last, int(threads), int(workers),
                   int(steps_per_epoch), int(total_steps), time_budget)
