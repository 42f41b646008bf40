"""Name lookup and building of samplers, strategies and verifiers through entry points.

Built-ins register in ``pyproject.toml`` exactly as a third-party plugin registers in its own, so
``ttscale.registry.create("strategy", "majority", ...)`` finds both the same way.
:func:`build_strategy` and :func:`build_verifier` build them from settings (a request's, a run's),
every failure a :class:`~ttscale.errors.ConfigError` naming the settings field at fault.

One caching policy: a name once found keeps its object (its module stays imported anyway), so a
server pays the entry-point scan (milliseconds of CPU over every installed distribution's
metadata) once per name; an unknown name is looked up again each time, so a plugin installed
while the process runs is still found.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import types
import typing
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ttscale.errors import ConfigError, TTScaleError, UnknownNameError, UnknownOptionError

if TYPE_CHECKING:
    from ttscale.protocols import Sampler, Strategy, Verifier
    from ttscale.types import SamplingParams

__all__ = [
    "GROUPS",
    "Kind",
    "available",
    "build_config",
    "build_strategy",
    "build_verifier",
    "check_request",
    "create",
    "load",
    "resolve_config",
    "takes",
]

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


def _entry_points(kind: str, installed: Any = None) -> dict[str, EntryPoint]:
    # Read anew on every call: a plugin installed while the process runs is seen at once, and the
    # read is cheap next to anything a sampler does. ``installed``: entry points read already.
    found: dict[str, EntryPoint] = {}
    group = _group(kind)
    selected = installed.select(group=group) if installed is not None else entry_points(group=group)
    for entry in selected:
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


def available_by_kind() -> dict[str, list[str]]:
    """:func:`available` for every kind, from one read of the installed entry points (each read
    scans every installed distribution)."""
    installed = entry_points()
    return {kind: sorted(_entry_points(kind, installed)) for kind in GROUPS}


# What load found, by kind and name (see the module docstring).
_LOADED: dict[tuple[str, str], Any] = {}


def load(kind: str, name: str) -> Any:
    """The object (usually a class or factory) registered under ``name``."""
    cached = _LOADED.get((kind, name))
    if cached is not None:
        return cached
    found = _entry_points(kind)
    if name not in found:
        raise UnknownNameError(kind, name, list(found))
    try:
        loaded = found[name].load()
    except Exception as exc:  # a broken plugin must not look like a missing one
        raise ConfigError(
            f"{kind} {name!r} is registered as {found[name].value!r} but failed to load: {exc}"
        ) from exc
    _LOADED[(kind, name)] = loaded
    return loaded


def create(kind: str, name: str, **options: Any) -> Any:
    """Build the component registered under ``name`` with keyword ``options``."""
    factory = load(kind, name)
    try:
        return construct(factory, options, name)
    except TypeError as exc:
        raise ConfigError(f"cannot build {kind} {name!r} with {sorted(options)}: {exc}") from exc


def construct(factory: Any, options: Mapping[str, Any], name: str) -> Any:
    """``factory(**options)``; a factory that is itself a config dataclass (a verifier such as
    ``confidence``) is built by :func:`build_config`, so its options are checked as any
    config's are."""
    if isinstance(factory, type) and dataclasses.is_dataclass(factory):
        return build_config(factory, dict(options), name)
    return factory(**options)


def build_config(config_type: type[ConfigT], options: dict[str, Any], where: str) -> ConfigT:
    """Build a frozen config dataclass from keyword options, naming any unknown option."""
    if not dataclasses.is_dataclass(config_type):
        raise TypeError(f"{config_type!r} is not a dataclass")
    names = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise UnknownOptionError(
            f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}",
            options=unknown,
        )
    hints = _field_types(config_type)
    checked = {
        name: _typed(value, hints.get(name, Any), where, name) for name, value in options.items()
    }
    return config_type(**checked)


def _field_types(config_type: type) -> dict[str, Any]:
    """A config's field types, resolved; none (nothing checked) where they cannot be."""
    try:
        return typing.get_type_hints(config_type)
    except Exception:  # a forward reference only a type checker can resolve
        return {}


_NO_CHECK = object()


def _typed(value: Any, hint: Any, where: str, name: str) -> Any:
    """``value`` checked against a config field's type where the type is plain (bool, int,
    float, str, None, or a union of those), a mapping given for a config dataclass
    built into one; any other type is left to the config. Options come from JSON, command lines
    and requests: a 2.5 where a count goes, or a NaN, fails here naming the option, not deep in
    a run."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type) and isinstance(value, Mapping):
        return build_config(hint, dict(value), f"{where}: {name}")
    if _matches(value, hint) is False:
        message = f"{where}: {name} must be {_describe(hint)}, got {value!r}"
        raise ConfigError(message, param=name)
    return value


def _matches(value: Any, hint: Any) -> bool | object:
    """Whether ``value`` is of ``hint``; ``_NO_CHECK`` when the hint is not a plain one."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return _NO_CHECK  # configs check their own choices, aliases included ("review": "fuse")
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, member) for member in typing.get_args(hint)]
        if any(result is True for result in results):
            return True
        return _NO_CHECK if any(result is _NO_CHECK for result in results) else False
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and not (isinstance(value, float) and math.isnan(value))
    if hint is str:
        return isinstance(value, str)
    return _NO_CHECK


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(member) for member in typing.get_args(hint))
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return words.get(hint, "None" if hint is type(None) else getattr(hint, "__name__", str(hint)))


def resolve_config(
    config_type: type[ConfigT], config: ConfigT | None, options: dict[str, Any], name: str
) -> ConfigT:
    """``config`` itself, or one built from keyword options (:func:`build_config`); never both.
    What every component's ``__init__(config=None, **options)`` does with its arguments."""
    if config is not None:
        if options:
            raise ConfigError(f"pass either a config or keyword options to {name}, not both")
        if not isinstance(config, config_type):
            raise ConfigError(f"{name} takes a {config_type.__name__}, got {config!r}")
        return config
    return build_config(config_type, options, name)


def takes(factory: Any, name: str) -> bool:
    """Whether ``factory`` accepts a keyword argument ``name`` (False if it cannot be told)."""
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _prefixed(exc: ConfigError, where: str) -> str:
    """The settings field an error raised while building a component is about."""
    if exc.param is None:
        return where
    return exc.param if exc.param.startswith(where) else f"{where}.{exc.param}"


def build_strategy(
    name: str,
    samples: int,
    k: int,
    params: SamplingParams,
    options: Mapping[str, Any],
    *,
    where: str = "ttscale",
) -> Strategy:
    """The registered strategy ``name`` built from settings ``options`` (under ``where``).

    Every failure is a :class:`ConfigError` whose ``param`` is the settings field at fault.
    """
    reserved = sorted({"samples", "k", "params"} & set(options))
    if reserved:
        param = f"{where}.{reserved[0]}"
        raise ConfigError(f"{param} is set by the request itself", param=param)
    try:
        factory = load("strategy", name)
    except UnknownNameError as exc:
        raise UnknownNameError(exc.kind, exc.name, exc.known, param=f"{where}.strategy") from exc
    try:
        strategy: Strategy = factory(samples=samples, k=k, params=params, **options)
    except UnknownOptionError as exc:
        keys = ", ".join(exc.options)
        raise UnknownOptionError(
            f"unknown {where} key(s) {keys} for strategy {name!r} ({exc})",
            options=exc.options,
            param=f"{where}.{exc.options[0]}",
        ) from exc
    except ConfigError as exc:
        raise ConfigError(f"strategy {name!r}: {exc}", param=_prefixed(exc, where)) from exc
    except (TypeError, ValueError, KeyError) as exc:
        # An option of the wrong type that the strategy's config did not check itself.
        raise ConfigError(
            f"strategy {name!r} cannot be built with {sorted(options)}: {exc}", param=where
        ) from exc
    return strategy


def build_verifier(
    name: str,
    options: Mapping[str, Any],
    *,
    sampler: Sampler | None = None,
    where: str = "ttscale.verifier",
    server_options: Mapping[str, Any] | None = None,
) -> Verifier:
    """The registered verifier ``name`` built with ``options``.

    A verifier that takes a ``sampler`` (an LLM judge) and is given none asks ``sampler``, so its
    tokens land in the same usage. ``server_options`` are the caller's own settings (a server's
    ``allow_code_execution``), given to a verifier that has them and never taken from
    ``options``. Every failure is a :class:`ConfigError` naming ``where``.
    """
    try:
        factory = load("verifier", name)
    except ConfigError as exc:
        raise ConfigError(str(exc), param=where) from exc
    options = dict(options)
    server = dict(server_options or {})
    for key in sorted(set(server) & set(options)):
        raise ConfigError(
            f"{where}.{key} is the server's to set, not a request's", param=f"{where}.{key}"
        )
    if sampler is not None and "sampler" not in options and takes(factory, "sampler"):
        options["sampler"] = sampler
    try:
        return _built(factory, options, server)
    except ConfigError as exc:
        raise ConfigError(f"verifier {name!r}: {exc}", param=_prefixed(exc, where)) from exc
    except (TTScaleError, TypeError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"verifier {name!r} cannot be built with {sorted(options)}: {exc}", param=where
        ) from exc


def _may_take(factory: Any, name: str) -> bool:
    """Whether ``factory`` takes keyword ``name``, or any keyword (``**options``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _built(factory: Any, options: dict[str, Any], server: dict[str, Any]) -> Verifier:
    # Server options go to the verifiers that have them: one taking any keyword that says it has
    # not them is built again without them.
    server = {key: value for key, value in server.items() if _may_take(factory, key)}
    name = getattr(factory, "__name__", "verifier")
    try:
        verifier: Verifier = construct(factory, {**options, **server}, name)
    except UnknownOptionError as exc:
        if not server or not set(exc.options) <= set(server):
            raise
        kept = {key: value for key, value in server.items() if key not in exc.options}
        verifier = construct(factory, {**options, **kept}, name)
    return verifier


def check_request(
    name: str, options: Mapping[str, Any], *, where: str = "ttscale", kind: str = "strategy"
) -> None:
    """Let component ``name`` of ``kind`` (a strategy or a verifier) refuse options a remote
    request may not give (its ``check_request``: a file on the server, a model to load into the
    server); an unknown name is left to the builder."""
    try:
        factory = load(kind, name)
    except ConfigError:
        return
    check = getattr(factory, "check_request", None)
    if not callable(check):
        return
    try:
        check(options)
    except ConfigError as exc:
        raise ConfigError(str(exc), param=_prefixed(exc, where)) from exc
