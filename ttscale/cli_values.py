"""The command line's option values, read without pydantic where they are plain.

typer (from 0.2x, on a click of its own) checks every option's value through a pydantic adapter
it builds on first use: importing pydantic and building the adapters was a fifth of ``ttscale
serve``'s start-up (``benchmarks/vs_peers.py --only startup``). :class:`PlainValuesGroup` reads
the values ttscale's options take (text, whole numbers and decimals within the option's ``min``
and ``max``, paths, lists of these) as typer's adapters read them, and hands every other value,
each one these would refuse included, to typer's own check: its errors are typer's, word for
word. With a typer that checks values without pydantic (older ones, on click) it changes nothing.
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.core import TyperGroup

__all__ = ["NOT_PLAIN", "PlainValuesGroup", "plain_value", "read_plainly"]

NOT_PLAIN: Any = object()  # plain_value's answer for a value it leaves to typer
_WHOLE = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?\Z")


def plain_value(annotation: Any, info: Any, value: Any) -> Any:
    """``value`` read as an option of type ``annotation`` with typer's ``info`` (its
    ``ParameterInfo``: min, max, path checks) would be, or :data:`NOT_PLAIN` when it is not
    one of the plain cases (or would be refused)."""
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            return NOT_PLAIN
        items = [plain_value(item, info, each) for each in value]
        return NOT_PLAIN if any(each is NOT_PLAIN for each in items) else items
    if getattr(info, "parser", None) is not None:
        return NOT_PLAIN
    if annotation is str:
        return value if isinstance(value, str) else NOT_PLAIN
    if annotation is int or annotation is float:
        return _number(annotation, info, value)
    if annotation is Path:
        return _path(info, value)
    return NOT_PLAIN


def _number(kind: type[Any], info: Any, value: Any) -> Any:
    """A whole number (``int``) or a decimal (``float``) within ``info``'s min and max."""
    if type(value) is kind:  # a default, already of the option's type
        number = value
    elif isinstance(value, str) and (_WHOLE if kind is int else _DECIMAL).match(value):
        number = kind(value)
    else:
        return NOT_PLAIN
    if getattr(info, "clamp", False) or number != number:  # clamped, or NaN: typer's to read
        return NOT_PLAIN
    low, high = getattr(info, "min", None), getattr(info, "max", None)
    if (low is not None and number < low) or (high is not None and number > high):
        return NOT_PLAIN  # typer words the refusal
    return number


def _path(info: Any, value: Any) -> Any:
    """A ``Path`` option with none of typer's path checks but the readable one (its default)."""
    checks = (
        getattr(info, "path_type", None) is None
        and not getattr(info, "exists", True)
        and not getattr(info, "resolve_path", True)
        and getattr(info, "file_okay", False)
        and getattr(info, "dir_okay", False)
        and not getattr(info, "writable", True)
    )
    if not checks or not isinstance(value, str | Path) or value == "":
        return NOT_PLAIN
    path = Path(value)
    if getattr(info, "readable", True) and os.path.exists(path) and not os.access(path, os.R_OK):
        return NOT_PLAIN  # typer refuses it, naming the path
    return path


@dataclass(frozen=True)
class _PlainValues:
    """Stands in for a typer parameter's ``get_runtime_param``: the coercion it returns reads
    plain values itself and hands the rest to typer's (``typer_coercion``)."""

    annotation: Any
    info: Any
    typer_coercion: Callable[[], Any]

    def __call__(self) -> _PlainValues:
        return self

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None:  # as typer's coercion answers a missing value, before any adapter
            return () if param.multiple or param.nargs == -1 else None
        plain = plain_value(self.annotation, self.info, value)
        if plain is not NOT_PLAIN:
            return plain
        return self.typer_coercion().coerce(value, param=param, ctx=ctx)


def read_plainly(param: Any) -> None:
    """Let ``param`` (a typer parameter) read its plain values without pydantic."""
    descriptor = getattr(param, "type_descriptor", None)
    typer_coercion = getattr(param, "get_runtime_param", None)
    if descriptor is None or typer_coercion is None or isinstance(typer_coercion, _PlainValues):
        return  # a typer without adapters, or already done
    param.get_runtime_param = _PlainValues(
        descriptor.annotation, descriptor.parameter_info, typer_coercion
    )


class PlainValuesGroup(TyperGroup):
    """A typer group whose commands' options read plain values without pydantic
    (``typer.Typer(cls=PlainValuesGroup)``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in (self, *self.commands.values()):
            for param in command.params:
                read_plainly(param)
            _read_help_plainly(command)


def _read_help_plainly(command: Any) -> None:
    """The ``--help`` flag, which a command makes on first use, reads its value plainly too
    (left out, its value is None, which typer's coercion would build an adapter to check)."""
    typer_help = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = typer_help(ctx)
        if option is not None:
            read_plainly(option)
        return option

    command.get_help_option = help_option
