"""The method registry: `@register_method("name")`, the `sslkit.methods` entry-point group, and
`package.module:Class` (sslkit.plugins.Registry, as datasets and backbones).

The trust rule (docs/security.md), for every registry: a name read from a file (a checkpoint's
config, config.yaml) can only pick a registered name or an installed entry point. A
`package.module:Class` spec imports code, so it is honoured only when the user typed it on the
command line (`trust_spec`, called by `sslkit.config.trust_command_line`); any other spec is a
one-line ConfigError raised before anything is imported (`sslkit.plugins.Registry.get`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from sslkit.errors import ConfigError
from sslkit.plugins import Registry, import_spec, is_spec, is_trusted, trust_spec

__all__ = ["METHODS", "register_method", "available_methods", "resolve_method", "is_resolvable", "is_spec",
           "is_trusted", "trust_spec", "import_spec"]

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


def resolve_method(name: str, trusted: bool = False) -> type[SSLMethod]:
    """The class for `name`: a registered name, an entry point, or `package.module:ClassName` (that one
    only when typed on the command line, or `trusted`: see `sslkit.plugins.Registry.get`)."""
    return METHODS.get(name, True if trusted else None)


def is_resolvable(name: str) -> bool:
    """True when `resolve_method(name)` would succeed."""
    try:
        resolve_method(name)
    except ConfigError:
        return False
    return True
