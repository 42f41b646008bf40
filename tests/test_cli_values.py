"""The command line's plain option values, read without pydantic, are read as typer reads them.

Every option of every ttscale command gets the same value, or the same refusal word for word,
from :mod:`ttscale.cli_values` as from typer's own coercion (its pydantic adapters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from ttscale.cli import app
from ttscale.cli_values import NOT_PLAIN, plain_value

typer_core = pytest.importorskip("typer.core")
RAW = [
    "0", "1", "-3", "7", "20", "21", "65535", "65536", "007", "+5", " 5", "1_0", "0.5", "1.50",
    "0.0001", "1e3", "nan", "inf", "", "abc", "x.json", "/", "/no/such/dir/p", "-", "é",
]  # fmt: skip


def options() -> list[tuple[str, Any]]:
    group = typer.main.get_command(app)
    assert isinstance(group, typer_core.TyperGroup)
    found = [(f"{name} {param.name}", param) for name, command in group.commands.items()
             for param in command.params]  # fmt: skip
    return [(name, param) for name, param in found if hasattr(param, "type_descriptor")]


def reading(coerce: Any, value: Any, param: Any, ctx: Any) -> tuple[str, Any]:
    """("value", what came back, its type) or ("refused", typer's message)."""
    try:
        got = coerce(value, param=param, ctx=ctx)
    except typer.BadParameter as exc:
        return ("refused", exc.format_message())
    kinds = [type(each) for each in got] if isinstance(got, list) else None
    return ("value", (repr(got), type(got), kinds))  # repr: a NaN reads equal to a NaN


@pytest.mark.parametrize(("name", "param"), options(), ids=lambda value: str(value))
def test_each_option_reads_every_value_as_typer_does(name: str, param: Any) -> None:
    plain = param.get_runtime_param()
    typer_own = plain.typer_coercion()
    assert plain is not typer_own  # the option reads plainly
    ctx = typer.Context(typer.main.get_command(app))
    many = param.multiple or param.nargs == -1
    values: list[Any] = [(raw,) if many else raw for raw in RAW]
    values += [param.default, None, ("1", "2") if many else Path("x")]
    for value in values:
        ours = reading(plain.coerce, value, param, ctx)
        theirs = reading(typer_own.coerce, value, param, ctx)
        assert ours == theirs, (name, value)
    # And the plain reading is the one used for the option's common values (flags excepted,
    # which typer reads without an adapter).
    descriptor = param.type_descriptor
    if descriptor.annotation is not bool:
        read = [plain_value(descriptor.annotation, descriptor.parameter_info, v) for v in values]
        assert any(each is not NOT_PLAIN for each in read), name


def test_the_comparison_sees_a_different_reading() -> None:
    # Control: a value of another type, or a refusal against a value, is a difference.
    ctx = typer.Context(typer.main.get_command(app))
    as_int = reading(lambda value, **_: int(value), "7", None, ctx)
    as_float = reading(lambda value, **_: float(value), "7", None, ctx)
    assert as_int != as_float

    def refuse(value: Any, **_: Any) -> Any:
        raise typer.BadParameter("no")

    assert reading(refuse, "7", None, ctx) != as_int
