"""A method's parameters: the one place they are read.

A built-in method's defaults live in its YAML (configs/method/<name>.yaml) and its `__init__` takes
them without defaults. A plug-in declares its defaults in its `__init__` signature, or ships a YAML
(`defaults_file`, beside its module); either fills the `method.*` keys the command line leaves out.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sslkit.errors import ConfigError, closest
from sslkit.methods.base import ContrastiveMethod, SSLMethod
from sslkit.registry import resolve_method

#: what `build_method` passes itself (`world_size` only to a method whose `__init__` takes it), never `method.*` keys
BUILT_IN_ARGS = ("self", "backbone", "feature_dim", "head", "world_size")


def method_params(cls: type[SSLMethod]) -> dict[str, inspect.Parameter]:
    """The `method.*` keys a method accepts: the keyword parameters of its `__init__`, and, where that
    passes `**kwargs` on (or has no `__init__` of its own), those of its parent classes."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass in (SSLMethod, ContrastiveMethod) or not issubclass(klass, SSLMethod):
            continue
        sig = inspect.signature(vars(klass)["__init__"])
        for name, p in sig.parameters.items():
            if name not in BUILT_IN_ARGS and name not in params and p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                                 p.KEYWORD_ONLY):
                params[name] = p
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return params


def declared_defaults(cls: type[SSLMethod]) -> dict[str, Any]:
    """A plug-in's defaults: its `defaults_file` YAML, else the defaults in its `__init__` signature."""
    if cls.defaults_file:
        path = Path(inspect.getfile(cls)).parent / cls.defaults_file
        if not path.is_file():
            raise ConfigError(f"method {cls.__qualname__}: its defaults_file {path} does not exist")
        loaded = OmegaConf.load(path)
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"method {cls.__qualname__}: its defaults_file {path} is not a mapping of parameters")
        values = OmegaConf.to_container(loaded, resolve=True)
        assert isinstance(values, dict)
        return {str(k): v for k, v in values.items()}
    return {n: p.default for n, p in method_params(cls).items() if p.default is not p.empty}


def fill_plugin_defaults(cfg: DictConfig) -> None:
    """Give a plug-in method's config its declared defaults for the keys the command line left out
    (built-ins need none: their YAML holds every default)."""
    name = str(cfg.method.name)
    OmegaConf.set_struct(cfg, False)
    for key, value in declared_defaults(resolve_method(name)).items():
        if key not in cfg.method:
            cfg.method[key] = value


def check_method_params(cfg: DictConfig) -> None:
    """Every `method.*` key must be a parameter of the method's constructor, and every parameter
    without a default must be given (one-line errors)."""
    name = str(cfg.method.name)
    params = method_params(resolve_method(name))
    listed = ", ".join(f"method.{v}" for v in params) or "none"
    for key in cfg.method.keys():
        if key == "name" or key in params:
            continue
        best = closest(str(key), params)
        hint = f"did you mean 'method.{best}'? " if best else ""
        raise ConfigError(f"unknown config key 'method.{key}' for method '{name}'; {hint}its parameters: {listed}")
    missing = [f"method.{n}" for n, p in params.items() if p.default is p.empty and n not in cfg.method]
    if missing:
        raise ConfigError(f"method '{name}' needs {', '.join(missing)} (no default is declared for it)")


