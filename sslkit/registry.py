"""The method registry: a decorator, the `sslkit.methods` entry-point group, and `module:Class`.

The trust rule (docs/security.md), for every registry: a name read from a file (a checkpoint's
config, config.yaml) can only pick a registered name or an installed entry point. A
`package.module:Class` spec imports code, so it is honoured only when the user typed it on the
command line (`trust_spec`, called by `sslkit.config.trust_command_line`); any other spec is a
one-line ConfigError raised before anything is imported (`import_spec`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from sslkit.errors import ConfigError, suggestion

if TYPE_CHECKING:
    from sslkit.methods.base import ContrastiveMethod

_T = TypeVar("_T", bound=type)
_METHODS: dict[str, type[ContrastiveMethod]] = {}
ENTRY_POINT_GROUP = "sslkit.methods"
#: the `module:Class` specs the user typed on this process's command line: the only ones imported
_USER_SPECS: set[str] = set()


def is_spec(name: str) -> bool:
    """True for a `package.module:Attr` spec, the one form of name that imports code."""
    return ":" in name


def trust_spec(spec: str) -> None:
    """Record that the user typed `spec` on the command line (never call it with a name from a file)."""
    _USER_SPECS.add(spec)


def is_trusted(spec: str) -> bool:
    """True when the user typed `spec` on this process's command line."""
    return spec in _USER_SPECS


def import_spec(kind: str, spec: str, known: Iterable[str], trusted: bool = False, key: str = "") -> Any:
    """The object `package.module:Attr` names, for a registry of `kind`s whose registered names are `known`
    and whose config key is `key` (default `<kind>.name`).

    Imported only when `trusted` or typed on the command line (`trust_spec`); otherwise a one-line
    ConfigError, before any import: a checkpoint or config.yaml never chooses code."""
    if not (trusted or is_trusted(spec)):
        raise ConfigError(
            f"{kind} '{spec}' comes from a file (a checkpoint or config.yaml), not from the command line: sslkit "
            f"imports a module:Class {kind} only when you type it (to resume a run of your own plug-in, add "
            f"{key or kind + '.name'}={spec}); a file may name a registered {kind}: {', '.join(sorted(known))}")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{kind} '{spec}': cannot import module '{module_name}' ({exc})") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise ConfigError(f"{kind} '{spec}': module '{module_name}' has no attribute '{attr}'")
    return obj


def register_method(name: str) -> Callable[[_T], _T]:
    """Class decorator: make a `ContrastiveMethod` subclass available as `method=<name>`."""

    def wrap(cls: _T) -> _T:
        _METHODS[name] = cls
        return cls

    return wrap


def _load_builtin() -> None:
    importlib.import_module("sslkit.methods")


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_methods() -> dict[str, type[ContrastiveMethod]]:
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


def resolve_method(name: str, trusted: bool = False) -> type[ContrastiveMethod]:
    """The class for `name`: a registered name, an entry point, or `package.module:ClassName` (that one
    only when typed on the command line, or `trusted`: see `import_spec`)."""
    from sslkit.methods.base import ContrastiveMethod

    if is_spec(name):
        cls = import_spec("method", name, available_methods(), trusted)
    else:
        methods = available_methods()
        if name not in methods:
            raise ConfigError(f"unknown method '{name}'; {suggestion(name, methods)}")
        cls = methods[name]
    if not (isinstance(cls, type) and issubclass(cls, ContrastiveMethod)):
        raise ConfigError(f"method '{name}' is {cls!r}, not a subclass of sslkit.methods.ContrastiveMethod")
    return cls


def is_resolvable(name: str) -> bool:
    """True when `resolve_method(name)` would succeed."""
    try:
        resolve_method(name)
    except ConfigError:
        return False
    return True
