"""The strict value codec and message framing between the trusted harness and the solution.

Only plain data crosses: ``None``, ``bool``, ``int``, ``float`` (``nan`` and the infinities
included), ``str``, ``bytes``, ``list``, ``tuple``, ``dict``, ``OrderedDict``, ``set`` and
``frozenset``, nested.
Decoding builds exactly those built-in types, so no method the solution defines (``__eq__``,
``__hash__``, ``__repr__``, ...) can ever run on the harness's side. Anything else is a
:class:`CodecError` naming the type.

The wire form is JSON: scalars as themselves, every container and the special values as a
one-key object (``{"L": [...]}`` a list, ``{"T": ...}`` a tuple, ``{"S": ...}`` a set,
``{"F": ...}`` a frozenset, ``{"D": [[key, value], ...]}`` a dict, ``{"B": "base64"}`` bytes,
``{"f": "nan"}`` a special float, ``{"O": [[key, value], ...]}`` an ``OrderedDict``, whose ``==``
minds the order, ``{"V": [name, parts]}`` a complex, ``Decimal``, ``Fraction``, ``deque`` or a
value of ``datetime``). A message is that JSON, UTF-8, after a 4-byte big-endian length, and is
refused beyond ``max_bytes``.

Objects of the solution that are not plain data cross as handles, ``{"H": n}``, but only where a
side asks for them: the encoder is given ``handle_of`` (what may become a handle, and its number)
and the decoder ``handle`` (what a number stands for). The harness's handles are its own proxy
class, so decoding still runs no method of the solution's.

Stdlib only: this module runs in the sandbox's processes, which import nothing else.
"""

from __future__ import annotations

import base64
import collections
import datetime
import decimal
import fractions
import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = [
    "ARITHMETIC",
    "MAX_DEPTH",
    "MAX_MESSAGE_BYTES",
    "UNARY",
    "CodecError",
    "decode_value",
    "encode_value",
    "read_message",
    "write_message",
]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The binary operators a handle forwards (both sides agree on these names: ``operator``'s own).
ARITHMETIC = (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
    "and", "or", "xor", "lshift", "rshift",
)  # fmt: skip
# The uses of a handle that show the solution nothing of the tests', by name, with the plain type
# each must give ("" for any value).
UNARY = {
    "neg": "", "pos": "", "abs": "", "invert": "", "int": "int", "index": "int",
    "float": "float", "complex": "", "round": "", "trunc": "", "floor": "", "ceil": "",
}  # fmt: skip
MAX_DEPTH = 400

_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_SEQUENCES = {"L": list, "T": tuple, "S": set, "F": frozenset}
_PLAIN_BASES = (int, float, str, bytes, list, tuple, set, frozenset, dict)


class CodecError(ValueError):
    """A value or message that may not cross between the harness and the solution."""


def _type_name(value: object) -> str:
    kind = type(value)
    module = getattr(kind, "__module__", "")
    name = getattr(kind, "__qualname__", "?")
    return name if module in ("builtins", "") else f"{module}.{name}"


def _plain_scalar(value: Any, lenient: bool) -> Any:
    """A scalar of an exact plain type, or (lenient) what a subclass or numpy scalar stands for."""
    if not lenient:
        raise CodecError(f"a value of type {_type_name(value)} cannot cross (plain data only)")
    # Lenient is for the solution's side only: its own values of subclasses (an IntEnum, a str
    # subclass) and numpy scalars travel as the plain value they hold. What the harness gets is
    # still a built-in.
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return bytes(value)
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        return item()
    raise CodecError(f"a value of type {_type_name(value)} cannot cross (plain data only)")


def encode_value(
    value: Any,
    *,
    lenient: bool = False,
    depth: int = 0,
    handle_of: Callable[[Any], int] | None = None,
) -> Any:
    """``value`` as its JSON-ready wire form; :class:`CodecError` for anything not plain.

    With ``handle_of``, what is not plain (after the lenient conversions) crosses as the handle
    ``handle_of`` gives it, which raises :class:`CodecError` for what may not."""
    if depth > MAX_DEPTH:
        raise CodecError(f"values nested deeper than {MAX_DEPTH} cannot cross")
    kind = type(value)
    if value is None or kind in (bool, str):
        return value
    if kind is int:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        return {"f": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if kind is bytes:
        return {"B": base64.b64encode(value).decode("ascii")}
    if kind in _STANDARD:
        return {"V": [kind.__name__, _standard_parts(value, lenient, depth + 1, handle_of)]}

    # One frame per level (no helper): the depth limit must be met before Python's own.
    deeper = depth + 1
    for tag, sequence in _SEQUENCES.items():
        if kind is sequence:
            return {
                tag: [
                    encode_value(item, lenient=lenient, depth=deeper, handle_of=handle_of)
                    for item in value
                ]
            }
    if kind is dict or kind is OrderedDict:
        # An OrderedDict keeps its order and its type: its == with another one is order-aware.
        return {
            "O" if kind is OrderedDict else "D": [
                [
                    encode_value(key, lenient=lenient, depth=deeper, handle_of=handle_of),
                    encode_value(item, lenient=lenient, depth=deeper, handle_of=handle_of),
                ]
                for key, item in value.items()
            ]
        }
    subclass = lenient and handle_of is not None and isinstance(value, _PLAIN_BASES)
    if subclass and type(value).__module__ != "numpy":
        # A subclass of a plain type (a namedtuple, an IntEnum, a Counter) has more than its
        # plain value (``.x``, ``.name``, missing keys counting 0): it stays a handle, which the
        # harness compares as the plain value it holds.
        assert handle_of is not None
        return {"H": handle_of(value)}
    if lenient:
        if isinstance(value, OrderedDict):
            return encode_value(OrderedDict(value), lenient=True, depth=depth, handle_of=handle_of)
        for base in (list, tuple, set, frozenset, dict):
            if isinstance(value, base):
                return encode_value(base(value), lenient=True, depth=depth, handle_of=handle_of)
    try:
        return encode_value(_plain_scalar(value, lenient), depth=depth)
    except (CodecError, ValueError):
        if handle_of is None:
            raise
    handle = handle_of(value)
    if type(handle) is not int:
        raise CodecError("a handle must be an int")
    return {"H": handle}


def decode_value(tree: Any, *, depth: int = 0, handle: Callable[[int], Any] | None = None) -> Any:
    """The plain value a wire form stands for, built from built-in types only, and from what
    ``handle`` makes of a handle's number (without it, a handle is a :class:`CodecError`)."""
    if depth > MAX_DEPTH:
        raise CodecError(f"values nested deeper than {MAX_DEPTH} cannot cross")
    if tree is None or type(tree) in (bool, str, int, float):
        return tree
    if type(tree) is not dict or len(tree) != 1:
        raise CodecError(f"malformed value on the wire ({type(tree).__name__})")
    ((tag, body),) = tree.items()
    if tag in _SEQUENCES and type(body) is list:
        items = [decode_value(item, depth=depth + 1, handle=handle) for item in body]
        try:
            return _SEQUENCES[tag](items)
        except TypeError as exc:  # an unhashable member of a set
            raise CodecError(f"a set member cannot be hashed: {exc}") from exc
    if tag in ("D", "O") and type(body) is list:
        found = _decode_dict(body, depth, handle)
        return OrderedDict(found) if tag == "O" else found
    if tag == "H" and type(body) is int and handle is not None:
        return handle(body)
    if tag == "B" and type(body) is str:
        try:
            return base64.b64decode(body.encode("ascii"), validate=True)
        except ValueError as exc:
            raise CodecError("malformed bytes on the wire") from exc
    if tag == "f" and body in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[body]
    if tag == "V" and type(body) is list and len(body) == 2 and body[0] in _STANDARD_BY_NAME:
        return _standard_value(body[0], body[1], depth, handle)
    raise CodecError(f"malformed value on the wire (tag {tag!r})")


# Values of the standard library whose == is Python's own, so they may cross as themselves:
# ``{"V": [type name, parts]}``. Exact types only (a subclass is the solution's: a handle).
_STANDARD: tuple[type, ...] = (
    complex, decimal.Decimal, fractions.Fraction, datetime.datetime, datetime.date,
    datetime.time, datetime.timedelta, collections.deque,
)  # fmt: skip
_STANDARD_BY_NAME = {kind.__name__: kind for kind in _STANDARD}


def _standard_parts(value: Any, lenient: bool, depth: int, handle_of: Any) -> Any:
    if isinstance(value, complex):
        return [encode_value(value.real, depth=depth), encode_value(value.imag, depth=depth)]
    if isinstance(value, fractions.Fraction):
        return [value.numerator, value.denominator]
    if isinstance(value, datetime.timedelta):
        return [value.days, value.seconds, value.microseconds]
    if isinstance(value, collections.deque):
        return [
            encode_value(item, lenient=lenient, depth=depth, handle_of=handle_of) for item in value
        ]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)  # a Decimal, exactly


def _standard_value(name: str, parts: Any, depth: int, handle: Any) -> Any:
    kind = _STANDARD_BY_NAME[name]
    try:
        if kind is complex:
            return complex(decode_value(parts[0], depth=depth), decode_value(parts[1], depth=depth))
        if kind is collections.deque:
            return collections.deque(
                decode_value(item, depth=depth + 1, handle=handle) for item in parts
            )
        if kind is datetime.timedelta:
            return datetime.timedelta(*(int(part) for part in parts[:3]))
        if kind is fractions.Fraction:
            return fractions.Fraction(int(parts[0]), int(parts[1]))
        if kind in (datetime.datetime, datetime.date, datetime.time):
            return kind.fromisoformat(str(parts))
        return decimal.Decimal(str(parts))
    except (TypeError, ValueError, IndexError, ArithmeticError, OverflowError) as exc:
        raise CodecError(f"a malformed {name} on the wire") from exc


def _decode_dict(
    pairs: list[Any], depth: int, handle: Callable[[int], Any] | None
) -> dict[Any, Any]:
    result: dict[Any, Any] = {}
    for pair in pairs:
        if type(pair) is not list or len(pair) != 2:
            raise CodecError("malformed dict entry on the wire")
        key = decode_value(pair[0], depth=depth + 1, handle=handle)
        try:
            result[key] = decode_value(pair[1], depth=depth + 1, handle=handle)
        except TypeError as exc:
            raise CodecError(f"a dict key cannot be hashed: {exc}") from exc
    return result


def _reject_constant(name: str) -> Any:
    raise CodecError(f"bare {name} on the wire (special floats travel tagged)")


def parse_message(data: bytes) -> dict[str, Any]:
    """A message's JSON object, strictly: no bare NaN, no other top level than an object."""
    try:
        message = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CodecError(f"a message that is not JSON ({type(exc).__name__})") from exc
    except ValueError as exc:  # int conversion limits and the like
        raise CodecError(f"a message that cannot be read: {exc}") from exc
    if type(message) is not dict:
        raise CodecError("a message must be a JSON object")
    return message


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the channel")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """The next framed message on ``fd`` (blocking); ``EOFError`` when the peer has gone."""
    size = int.from_bytes(_read_exactly(fd, 4), "big")
    if size > max_bytes:
        raise CodecError(f"a message of {size} bytes is over the limit of {max_bytes}")
    return parse_message(_read_exactly(fd, size))


def write_message(fd: int, message: dict[str, Any]) -> None:
    """Frame and send ``message`` (its values already in wire form) on ``fd``."""
    data = json.dumps(message, allow_nan=False, separators=(",", ":")).encode("utf-8")
    view = memoryview(len(data).to_bytes(4, "big") + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
