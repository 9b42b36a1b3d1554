"""Method parameters have one source each: a built-in's YAML, a plug-in's signature or its own YAML."""

from __future__ import annotations

import inspect
import itertools
import textwrap

import pytest
import yaml

from sslkit.build import method_defaults
from sslkit.config import CONFIG_DIR, compose, group_options
from sslkit.errors import ConfigError
from sslkit.params import method_params
from sslkit.registry import resolve_method

BUILT_IN = tuple(o for o in group_options("method") if o != "custom")
_names = itertools.count()


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_built_in_takes_its_defaults_from_its_yaml_only(name):
    assert len(BUILT_IN) >= 3
    params = method_params(resolve_method(name))
    assert params and all(p.default is inspect.Parameter.empty for p in params.values())
    assert set(method_defaults(name)) == set(params)  # the YAML (with what it inherits) sets each one


def test_mocov2_yaml_inherits_mocov1_and_states_only_what_differs():
    text = (CONFIG_DIR / "method" / "mocov2.yaml").read_text()
    raw = yaml.safe_load(text)
    assert "mocov1" in raw["defaults"] and set(raw["method"]) == {"name", "temperature"}
    v1, v2 = method_defaults("mocov1"), method_defaults("mocov2")
    assert v2 == {**v1, "temperature": 0.2}
    assert compose(["method=mocov2"]).head.kind == "mlp" and compose(["method=mocov1"]).head.kind == "linear"


def plugin(tmp_path, monkeypatch, body: str, files: dict[str, str] | None = None) -> str:
    """A plug-in module on sys.path; its `method=` value."""
    module = f"plugin_{next(_names)}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent('''
        from typing import Any
        from torch import nn
        from sslkit.methods import ContrastiveMethod, StepOutput

        class Plug(ContrastiveMethod):
            def training_step(self, views):
                return StepOutput(self.backbone(views[0]).mean())
    ''') + textwrap.indent(textwrap.dedent(body), "    "))
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{module}:Plug"


INIT = '''
            def __init__(self, backbone: nn.Module, feature_dim: int, head: Any = None, *, width: int = 7,
                         scale: float = 0.5) -> None:
                super().__init__(backbone, feature_dim, head)
'''


def test_a_plugin_gets_its_signature_defaults_and_nothing_else(tmp_path, monkeypatch):
    name = plugin(tmp_path, monkeypatch, INIT)
    cfg = compose([f"method={name}", "method.scale=2.0"])
    assert dict(cfg.method) == {"name": name, "width": 7, "scale": 2.0}  # no temperature from custom.yaml


def test_a_plugin_can_ship_its_own_yaml(tmp_path, monkeypatch):
    name = plugin(tmp_path, monkeypatch, '''
            defaults_file = "plug.yaml"

            def __init__(self, backbone: nn.Module, feature_dim: int, head: Any = None, *, width: int,
                         scale: float) -> None:
                super().__init__(backbone, feature_dim, head)
    ''', {"plug.yaml": "width: 3\nscale: 0.25\n"})
    assert dict(compose([f"method={name}", "method.width=5"]).method) == {"name": name, "width": 5, "scale": 0.25}


def test_a_parameter_without_a_default_must_be_given(tmp_path, monkeypatch):
    name = plugin(tmp_path, monkeypatch, '''
            def __init__(self, backbone: nn.Module, feature_dim: int, head: Any = None, *, width: int) -> None:
                super().__init__(backbone, feature_dim, head)
    ''')
    with pytest.raises(ConfigError, match=r"needs method\.width \(no default"):
        compose([f"method={name}"])
    assert compose([f"method={name}", "method.width=4"]).method.width == 4


def test_an_unknown_plugin_key_names_the_closest_parameter(tmp_path, monkeypatch):
    name = plugin(tmp_path, monkeypatch, INIT)
    with pytest.raises(ConfigError, match=r"did you mean 'method\.width'"):
        compose([f"method={name}", "method.widht=3"])
