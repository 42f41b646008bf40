"""Name lookup for samplers, strategies and verifiers through entry points.

Built-ins register in ``pyproject.toml`` exactly as a third-party plugin registers in its own, so
``ttscale.registry.create("strategy", "majority", ...)`` finds both the same way.
"""

from __future__ import annotations

import dataclasses
import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal, TypeVar

from ttscale.errors import ConfigError, UnknownNameError

__all__ = ["GROUPS", "Kind", "available", "build_config", "create", "load"]

log = logging.getLogger(__name__)

Kind = Literal["sampler", "strategy", "verifier"]

GROUPS: dict[str, str] = {
    "sampler": "ttscale.samplers",
    "strategy": "ttscale.strategies",
    "verifier": "ttscale.verifiers",
}

ConfigT = TypeVar("ConfigT")


def _group(kind: str) -> str:
    try:
        return GROUPS[kind]
    except KeyError:
        raise ConfigError(f"unknown kind {kind!r}; kinds are {', '.join(GROUPS)}") from None


def _entry_points(kind: str) -> dict[str, EntryPoint]:
    # Read anew on every call: a plugin installed while the process runs is seen at once, and the
    # read is cheap next to anything a sampler does.
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=_group(kind)):
        if entry.name in found and found[entry.name].value != entry.value:
            log.warning(
                "%s %r is registered twice (%s and %s); using the first",
                kind,
                entry.name,
                found[entry.name].value,
                entry.value,
            )
            continue
        found.setdefault(entry.name, entry)
    return found


def available(kind: str) -> list[str]:
    """The names registered for ``kind`` ("sampler", "strategy" or "verifier"), sorted."""
    return sorted(_entry_points(kind))


def load(kind: str, name: str) -> Any:
    """The object (usually a class or factory) registered under ``name``."""
    found = _entry_points(kind)
    if name not in found:
        raise UnknownNameError(kind, name, list(found))
    try:
        return found[name].load()
    except Exception as exc:  # a broken plugin must not look like a missing one
        raise ConfigError(
            f"{kind} {name!r} is registered as {found[name].value!r} but failed to load: {exc}"
        ) from exc


def create(kind: str, name: str, **options: Any) -> Any:
    """Build the component registered under ``name`` with keyword ``options``."""
    factory = load(kind, name)
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(f"cannot build {kind} {name!r} with {sorted(options)}: {exc}") from exc


def build_config(config_type: type[ConfigT], options: dict[str, Any], where: str) -> ConfigT:
    """Build a frozen config dataclass from keyword options, naming any unknown option."""
    if not dataclasses.is_dataclass(config_type):
        raise TypeError(f"{config_type!r} is not a dataclass")
    names = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(options) - names)
    if unknown:
        error = ConfigError(
            f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
        error.unknown_options = unknown  # type: ignore[attr-defined]  # for callers naming a field
        raise error
    return config_type(**options)
