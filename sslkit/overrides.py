"""Command-line overrides (`group=option`, `key=value`, `+key=value`, `~key`): the one place they are parsed."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sslkit.errors import ConfigError

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override


def check_form(overrides: Sequence[str]) -> None:
    """Every word must be `key=value` (or `~key`); a one-line error names the first that is not."""
    for o in overrides:
        if "=" not in o and not o.startswith("~"):
            raise ConfigError(f"'{o}' is not an override; write key=value, e.g. trainer.epochs=10")


def parse(overrides: Sequence[str]) -> list[Override]:
    """Hydra's parse of `overrides`, or a one-line ConfigError. Each text goes through Hydra's parser
    once per process: the commands ask about the same overrides several times (group choices, keys)."""
    from hydra.errors import HydraException

    try:
        return [_parse_one(o) for o in overrides]
    except HydraException as exc:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {str(exc).splitlines()[0]}") from None


@functools.lru_cache(maxsize=4096)
def _parse_one(text: str) -> Override:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([text])[0]


def keys(overrides: Sequence[str]) -> list[tuple[str, bool]]:
    """(key or group, is a group choice) for every override."""
    return [(ov.key_or_group, "." not in ov.key_or_group and not ov.is_delete()) for ov in parse(overrides)]


def chooses(overrides: Sequence[str], group: str) -> bool:
    """True when the overrides choose an option of `group` (e.g. `data=cifar10`)."""
    return any(k == group and is_group for k, is_group in keys(overrides))


def last_value(overrides: Sequence[str], key: str) -> str | None:
    """The last value given to `key` (`+key=` too); None when absent, empty or null."""
    value = None
    for o in overrides:
        k, sep, v = o.partition("=")
        if sep and k.lstrip("+") == key:
            value = v.strip("'\"")
    return None if value in (None, "", "null") else value


def key_values(overrides: Sequence[str], allowed: set[str]) -> dict[str, str]:
    """Plain `key=value` options of a command that takes only `allowed` keys (export, report, ...)."""
    out = {}
    for o in overrides:
        key, _, value = o.partition("=")
        if key not in allowed:
            raise ConfigError(f"unknown option '{key}'; valid: {', '.join(sorted(allowed))}")
        out[key] = value
    return out
