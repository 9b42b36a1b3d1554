"""Every experiment preset composes, sets exactly the values its YAML file names (over the defaults it
overrides), and builds its method."""

from __future__ import annotations

import pytest
import yaml

from sslkit.build import build_method
from sslkit.config import CONFIG_DIR, compose, group_options


def leaves(node: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        out |= leaves(value, path + ".") if isinstance(value, dict) else {path: value}
    return out


@pytest.mark.parametrize("preset", group_options("experiment"))
def test_preset_composes_with_its_values_and_builds(preset):
    spec = yaml.safe_load((CONFIG_DIR / "experiment" / f"{preset}.yaml").read_text())
    defaults = spec.pop("defaults", [])
    cfg = compose([f"experiment={preset}"])
    for entry in defaults:  # e.g. {"override /data": "cifar10"}
        ((key, option),) = entry.items()
        group = key.removeprefix("override /")
        name = cfg[group].get("name", cfg[group].get("kind"))  # the head group names itself by kind
        assert name == option, (group, name)
    for path, value in leaves(spec).items():
        node = cfg
        for part in path.split("."):
            node = node[part]
        got = list(node) if hasattr(node, "__iter__") and not isinstance(node, str) else node
        assert got == value, (path, got, value)
    method = build_method(cfg)
    assert method.temperature == spec["method"].get("temperature", method.temperature)
    if "queue_size" in spec.get("method", {}):
        assert method.queue.size == spec["method"]["queue_size"]
