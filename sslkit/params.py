"""A method's parameters: the one place they are read.

A built-in method's defaults live in its YAML (configs/method/<name>.yaml) and its `__init__` takes
them without defaults. A plug-in declares its defaults in its `__init__` signature, or ships a YAML
(`defaults_file`, beside its module); either fills the `method.*` keys the command line leaves out.
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sslkit.errors import ConfigError, closest
from sslkit.methods.base import ContrastiveMethod, SSLMethod
from sslkit.registry import resolve_method

#: constructor arguments that are not `method.*` keys: the parts, and the world size the app passes
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


def plugin_defaults(name: str) -> dict[str, Any]:
    """A plug-in method's declared defaults, for the `method.*` keys the command line leaves out
    (built-ins need none: their YAML holds every default). compose merges them before it freezes."""
    return declared_defaults(resolve_method(name))


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _kinds(hint: Any) -> tuple[list[type], bool] | None:
    """The plain kinds (bool, int, float, str) a parameter annotation allows and whether None is
    allowed; None when the annotation is anything else (then it is not checked)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    nullable = type(None) in args
    kinds = [a for a in args if a in _KINDS]
    if len(kinds) + nullable != len(args) or not kinds:
        return None
    return kinds, nullable


def _fits(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def _hints(cls: type[SSLMethod]) -> dict[str, Any]:
    """The evaluated annotations of the constructors that `method_params` reads."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass) and issubclass(klass, SSLMethod):
            try:
                hints |= typing.get_type_hints(vars(klass)["__init__"])
            except Exception:  # an annotation that does not evaluate: that class's keys go unchecked
                continue
    return hints


def check_method_params(cfg: DictConfig) -> None:
    """Every `method.*` key must be a parameter of the method's constructor, of the type its
    annotation declares, within the method's own bounds (`check_params`), and every parameter
    without a default must be given (one-line errors). Called once, by compose."""
    name = str(cfg.method.name)
    cls = resolve_method(name)
    params = method_params(cls)
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
    hints = _hints(cls)
    values = {str(k): v for k, v in cfg.method.items() if k != "name"}
    for key, value in values.items():
        allowed = _kinds(hints.get(key))
        if allowed is None:
            continue
        kinds, nullable = allowed
        if not (value is None and nullable) and not any(_fits(value, k) for k in kinds):
            need = " or ".join(_KINDS[k] for k in kinds) + (" (or null)" if nullable else "")
            raise ConfigError(f"method.{key}={value!r} is invalid: expected {need}")
    cls.check_params(values)
