"""The method registry: `@register_method("name")`, the `sslkit.methods` entry-point group, and
`package.module:Class` (sslkit.plugins.Registry, as datasets and backbones)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from sslkit.errors import ConfigError
from sslkit.plugins import Registry

if TYPE_CHECKING:
    from sslkit.methods.base import SSLMethod

_T = TypeVar("_T", bound=type)
ENTRY_POINT_GROUP = "sslkit.methods"


def _is_method(name: str, cls: object) -> type[SSLMethod]:
    from sslkit.methods.base import SSLMethod

    if not (isinstance(cls, type) and issubclass(cls, SSLMethod)):
        raise ConfigError(f"method '{name}' is {cls!r}, not a subclass of sslkit.methods.SSLMethod "
                          "(or ContrastiveMethod)")
    return cls


METHODS: Registry[type[SSLMethod]] = Registry("method", ENTRY_POINT_GROUP, ("sslkit.methods",), _is_method)


def register_method(name: str) -> Callable[[_T], _T]:
    """Class decorator: make an `SSLMethod` subclass (a `ContrastiveMethod` is one) available as
    `method=<name>`; a second
    class under the same name is a one-line ConfigError."""
    return METHODS.register(name)


def available_methods() -> dict[str, type[SSLMethod]]:
    """Every method: built-ins, decorated classes imported so far, and installed entry points."""
    return METHODS.all()


def resolve_method(name: str, allow_import: bool = True) -> type[SSLMethod]:
    """The class for `name`: a registered name, an entry point, or `package.module:ClassName`
    (only where `allow_import`: a name from the command line, not from a file)."""
    return METHODS.get(name, allow_import)


def is_resolvable(name: str) -> bool:
    """True when `resolve_method(name)` would succeed."""
    try:
        resolve_method(name)
    except ConfigError:
        return False
    return True
