"""A registry of named plug-ins: built-ins, an entry-point group, and `package.module:Name`.

One class serves methods, datasets and backbones (and the views and heads to come). A name is
found among, in order: what was registered (`@registry.register("name")` or `add`), the
built-ins (imported on first use, so a lookup costs nothing until one is needed), the installed
entry points of the registry's group (scanned once per process), and, where the caller allows it,
an import path `package.module:Name`. The caller says where a name came from: a name read from a
file (a checkpoint, a config.yaml) must not choose code to import, so such callers pass
`allow_import=False` and only registered names and entry points resolve.

A bottom module: it imports nothing from sslkit but `sslkit.errors`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from sslkit.errors import ConfigError, suggestion

T = TypeVar("T")
_D = TypeVar("_D")


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class Registry(Generic[T]):
    """Named plug-ins of one `kind` (e.g. "method", "dataset").

    `builtins` are modules imported on first lookup (their decorators register them); `group` is
    the entry-point group; `check(name, obj)` returns the object as the registry's type or raises a
    one-line ConfigError (e.g. "not a subclass of ContrastiveMethod")."""

    def __init__(self, kind: str, group: str, builtins: Iterable[str] = (),
                 check: Callable[[str, object], T] | None = None) -> None:
        self.kind, self.group = kind, group
        self._builtin_modules = tuple(builtins)
        self._check = check
        self._items: dict[str, T] = {}
        self._builtins_loaded = False
        self._entry_points: dict[str, EntryPoint] | None = None

    # ---- registering ------------------------------------------------------------------------

    def add(self, name: str, obj: T) -> T:
        """Register `obj` as `name`; a different object under a taken name is a one-line error
        (the same object again, e.g. a module imported twice, is not)."""
        old = self._items.get(name)
        if old is not None and old is not obj and _qualname(old) != _qualname(obj):
            raise ConfigError(f"{self.kind} '{name}' is registered twice: by {_qualname(old)} and by "
                              f"{_qualname(obj)}; rename one of them")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[_D], _D]:
        """Decorator: `@REGISTRY.register("name")` on a class or function."""

        def wrap(obj: _D) -> _D:
            self.add(name, obj)  # type: ignore[arg-type]
            return obj

        return wrap

    # ---- looking up -------------------------------------------------------------------------

    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self._builtin_modules:
                importlib.import_module(module)

    def _scan(self) -> dict[str, EntryPoint]:
        """The entry points of `group`, read once per process."""
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._entry_points

    def names(self) -> list[str]:
        """Every registered, built-in and entry-point name, without loading any entry point."""
        self._load_builtins()
        return sorted(set(self._items) | set(self._scan()))

    def _load_entry_point(self, name: str) -> T:
        ep = self._scan()[name]
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plug-in: one line, not a traceback
            raise ConfigError(f"entry point '{name}' in group {self.group} failed to load: {exc}") from None
        if name in self._items and self._items[name] is not obj:
            raise ConfigError(f"{self.kind} '{name}' is registered twice: by {_qualname(self._items[name])} and "
                              f"by the entry point {ep.value} of group {self.group}; rename one of them")
        return self.add(name, self._checked(name, obj))

    def _checked(self, name: str, obj: object) -> T:
        return self._check(name, obj) if self._check is not None else obj  # type: ignore[return-value]

    def all(self) -> dict[str, T]:
        """Every plug-in by name, entry points loaded."""
        for name in self.names():
            if name not in self._items:
                self._load_entry_point(name)
        return dict(self._items)

    def get(self, name: str, allow_import: bool | None = None) -> T:
        """The plug-in called `name`, or `package.module:Name` when `allow_import` is True, or, by default
        (None), when the user typed that spec on this process's command line (`trust_spec`): a name
        read from a file never chooses code (docs/security.md). An unknown name is a one-line
        ConfigError with the closest valid names."""
        if ":" in name:
            key = "data.name" if self.kind == "dataset" else f"{self.kind}.name"
            obj = import_spec(self.kind, name, self.names(), allow_import, key)
            return self._checked(name, obj)
        self._load_builtins()
        if name in self._items:
            return self._items[name]
        if name in self._scan():
            return self._load_entry_point(name)
        raise ConfigError(f"unknown {self.kind} '{name}'; {suggestion(name, self.names())}")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def refresh(self) -> None:
        """Forget the entry-point scan (a test that installs a distribution in-process)."""
        self._entry_points = None


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


def import_spec(kind: str, spec: str, known: Iterable[str], allow_import: bool | None = None, key: str = "") -> object:
    """The object `package.module:Attr` names, for a registry of `kind`s whose registered names are `known`
    and whose config key is `key` (default `<kind>.name`): imported when `allow_import` is True, or, by
    default (None), when the user typed `spec` on this command line (`trust_spec`); otherwise a one-line
    ConfigError before any import: a checkpoint or config.yaml never chooses code."""
    if not (allow_import or (allow_import is None and is_trusted(spec))):
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
