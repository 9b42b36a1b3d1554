"""The method registry: a decorator, the `sslkit.methods` entry-point group, and `module:Class`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, TypeVar

from sslkit.errors import ConfigError, suggestion

if TYPE_CHECKING:
    from sslkit.methods.base import SSLMethod

_T = TypeVar("_T", bound=type)
_METHODS: dict[str, type[SSLMethod]] = {}
ENTRY_POINT_GROUP = "sslkit.methods"


def register_method(name: str) -> Callable[[_T], _T]:
    """Class decorator: make a `SSLMethod` subclass (a `ContrastiveMethod` is one) available as `method=<name>`."""

    def wrap(cls: _T) -> _T:
        _METHODS[name] = cls
        return cls

    return wrap


def _load_builtin() -> None:
    importlib.import_module("sslkit.methods")


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_methods() -> dict[str, type[SSLMethod]]:
    """Every method: built-ins, decorated classes imported so far, and installed entry points."""
    _load_builtin()
    for name, ep in _entry_points().items():
        if name not in _METHODS:
            try:
                cls = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break `sslkit methods`
                raise ConfigError(f"entry point '{name}' in group {ENTRY_POINT_GROUP} failed to load: {exc}") from None
            _METHODS.setdefault(name, cls)
    return dict(_METHODS)


def _from_path(spec: str) -> type[SSLMethod]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"method '{spec}': cannot import module '{module_name}' ({exc})") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"method '{spec}': module '{module_name}' has no attribute '{attr}'")
    return cls


def resolve_method(name: str) -> type[SSLMethod]:
    """The class for `name`: a registered name, an entry point, or `package.module:ClassName`."""
    from sslkit.methods.base import SSLMethod

    if ":" in name:
        cls = _from_path(name)
    else:
        methods = available_methods()
        if name not in methods:
            raise ConfigError(f"unknown method '{name}'; {suggestion(name, methods)}")
        cls = methods[name]
    if not (isinstance(cls, type) and issubclass(cls, SSLMethod)):
        raise ConfigError(f"method '{name}' is {cls!r}, not a subclass of sslkit.methods.SSLMethod "
                          "(or of ContrastiveMethod)")
    return cls


def is_resolvable(name: str) -> bool:
    """True when `resolve_method(name)` would succeed."""
    try:
        resolve_method(name)
    except ConfigError:
        return False
    return True
