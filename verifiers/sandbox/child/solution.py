"""The solution's side of a run: load the model-written code, then answer the harness's calls.

The process running this is untrusted from the moment the solution's code runs: it may rewrite
anything here. Nothing it sends is believed beyond what the harness's strict decoding lets
through, so this module is written for honest solutions, not against dishonest ones.

Requests (one framed JSON message each, answered by one):

- ``call``: ``target`` (``{"name": ...}`` an exported function, ``{"handle": n}`` a class or an
  object handed out before), ``args`` and ``kwargs`` in wire form;
- on a handle: ``getattr``, ``setattr``, ``len``, ``getitem``, ``contains``, ``iter``, ``bool``,
  ``hash``, ``eq`` (with another handle), ``isinstance`` (the handle a class), ``plain`` (what a
  container subclass holds), ``str``, ``repr``;
- ``stdio``: run the whole program with ``input`` as its standard input; answer its output.

Replies: ``{"value": wire}``, in which objects that are not plain data are handles (classes are
handed out as handles when the code loads; an object a class call makes stays a handle unless it
is plain data); ``{"raise": {"type", "message", "mro"}}``, ``mro`` the exception's ancestry by
exported and built-in names; ``{"exit": code}`` (the code called ``exit``);
``{"unsupported": type name}`` (what cannot cross even as a handle). Every reply carries
``blocked``: what the guard refused since the last one.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import itertools
import math
import operator
import os
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

from . import codec, guard

__all__ = ["serve"]

# What is asked of a handle: the simple uses (below), and those that take more than one value.
_ON_HANDLES = frozenset(["setattr", "setitem", "exit", "plain", "operator", "str", "repr"])
# What may answer with objects that stay here; the rest answer plain data or fail.
_MAY_GIVE_HANDLES = frozenset(
    ["getattr", "getitem", "iter", "plain", "operator", "next", "enter", "iterator", "batch"]
)


class _Exit(Exception):
    def __init__(self, code: object) -> None:
        super().__init__(code)
        self.code = code


# The exact plain types: a class whose call makes anything else made an object the tests will use
# by its methods (a dict subclass with ``put`` and ``get``), which is kept here as a handle.
_PLAIN = (type(None), bool, int, float, str, bytes, list, tuple, dict, set, frozenset)


class Solution:
    """The loaded code, what it exports, and the objects handed out as handles."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.handles: list[Any] = []
        self._handle_ids: dict[int, int] = {}
        self.exports: dict[str, Any] = {}
        self.code = compile(spec["code"], spec.get("filename", "solution.py"), "exec")

    def load(self) -> dict[str, Any]:
        """Run the module once; what it exports, described for the harness."""
        # A real module, registered: what looks its class up by ``__module__`` (dataclasses,
        # typing, pickle) finds it.
        module = types.ModuleType(str(self.spec.get("module", "solution")))
        module.__dict__["__builtins__"] = builtins
        sys.modules[module.__name__] = module
        exec(self.code, module.__dict__)
        names: dict[str, Any] = {}
        for name, value in list(module.__dict__.items()):
            if name.startswith("__") or type(value).__name__ == "module":
                continue
            if isinstance(value, type):
                names[name] = {"kind": "class", "handle": self.handle_of(value)}
            elif callable(value):
                doc = getattr(value, "__doc__", None)
                names[name] = {"kind": "function", "doc": doc if isinstance(doc, str) else None}
            else:
                try:
                    names[name] = {
                        "kind": "value",
                        "value": codec.encode_value(value, lenient=True, handle_of=self.handle_of),
                    }
                except (codec.CodecError, ValueError, RecursionError):
                    continue
            self.exports[name] = value
        for name, value in self.exports.items():  # once every name is known
            if isinstance(value, type) and issubclass(value, BaseException):
                names[name]["mro"] = self.lineage(value)
        return names

    def handle_of(self, value: Any) -> int:
        """The handle of ``value``: the same number each time it is handed out."""
        found = self._handle_ids.get(id(value))
        if found is None:
            found = self._handle_ids[id(value)] = len(self.handles)
            self.handles.append(value)  # kept alive, so its id is never reused
        return found

    def handle(self, number: int) -> Any:
        if not 0 <= number < len(self.handles):
            raise ValueError(f"no object has the handle {number}")
        return self.handles[number]

    def lineage(self, kind: type) -> list[list[str]]:
        """An exception class's ancestry as the harness can rebuild it: exported classes by
        their names, Python's own exceptions by theirs."""
        named = {id(value): name for name, value in self.exports.items()}
        found: list[list[str]] = []
        for ancestor in kind.__mro__:
            module = getattr(ancestor, "__module__", "") or ""
            if id(ancestor) in named:
                found.append(["export", named[id(ancestor)]])
            elif getattr(builtins, ancestor.__name__, None) is ancestor:
                found.append(["builtin", ancestor.__name__])
            elif module.partition(".")[0] in sys.stdlib_module_names:
                # json.JSONDecodeError, dataclasses.FrozenInstanceError: the harness imports it
                found.append(["stdlib", f"{module}:{ancestor.__qualname__}"])
        return found

    def decode(self, tree: Any) -> Any:
        return codec.decode_value(tree, handle=self.handle)

    def reply_value(self, value: Any, *, handle: bool = True) -> dict[str, Any]:
        handle_of = self.handle_of if handle else None
        try:
            return {"value": codec.encode_value(value, lenient=True, handle_of=handle_of)}
        except (codec.CodecError, ValueError, RecursionError):
            return {"unsupported": _type_name(value)}

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        target = request["target"]
        if "name" in target:
            function = self.exports[target["name"]]
        else:
            function = self.handle(target["handle"])
        args = [self.decode(item) for item in request.get("args", [])]
        kwargs = {k: self.decode(v) for k, v in request.get("kwargs", {}).items()}
        made = function(*args, **kwargs)
        made_by_class = isinstance(function, type) and not issubclass(function, enum.Enum)
        if made_by_class and type(made) not in _PLAIN:  # an object to use by its methods
            return {"value": {"H": self.handle_of(made)}}
        return self.reply_value(made)

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "call":
            return self.call(request)
        if op in _ON_HANDLES or op in _SIMPLE_OPS:
            obj = self.handle(int(request["handle"]))
            arg = self.decode(request.get("arg"))
            return self.reply_value(_on_handle(op, obj, arg), handle=op in _MAY_GIVE_HANDLES)
        if op == "stdio":
            return {"value": run_program(self.code, str(request["input"]))}
        return {"raise": {"type": "ValueError", "message": f"unknown request {op!r}"}}


def _on_handle(op: str, obj: Any, arg: Any) -> Any:
    simple = _SIMPLE_OPS.get(op)
    if simple is not None:
        return simple(obj, arg)
    if op == "operator":
        return _operate(obj, arg)
    if op in ("setattr", "setitem"):
        key, value = arg
        if op == "setattr":
            setattr(obj, str(key), value)
        else:
            obj[key] = value
        return None
    if op == "exit":
        obj.__exit__(None, None, None)
        return None
    if op == "plain":  # what a subclass of a plain type holds, as that built-in
        bases: tuple[type[Any], ...] = (int, float, str, bytes, list, tuple, dict, set, frozenset)
        for base in bases:
            if isinstance(obj, base):
                return [True, base(obj)]
        return [False, None]
    return str(obj) if op == "str" else repr(obj)


_SIMPLE_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "getattr": lambda obj, name: getattr(obj, name),
    "len": lambda obj, _: len(obj),
    "getitem": lambda obj, key: obj[key],
    "contains": lambda obj, item: item in obj,
    "iter": lambda obj, _: list(obj),
    "bool": lambda obj, _: bool(obj),
    "hash": lambda obj, _: hash(obj),
    "eq": lambda obj, other: bool(obj == other),
    "delattr": lambda obj, name: delattr(obj, str(name)),
    "delitem": lambda obj, key: obj.__delitem__(key),
    "next": lambda obj, _: _next(obj),
    "iterator": lambda obj, _: iter(obj),
    "batch": lambda obj, _: _batch(obj),
    "enter": lambda obj, _: obj.__enter__(),
    "format": lambda obj, spec: format(obj, str(spec)),
    "isinstance": lambda kind, obj: isinstance(obj, kind),
    "issubclass": lambda kind, sub: issubclass(sub, kind),
}


_OPERATORS: dict[str, Callable[..., Any]] = {
    name: getattr(operator, name if name not in ("and", "or") else f"{name}_")
    for name in (*codec.ARITHMETIC, "lt", "le", "gt", "ge", "neg", "pos", "abs", "invert")
}
_OPERATORS.update(
    {"int": int, "index": operator.index, "float": float, "complex": complex, "round": round}
)
_OPERATORS.update({"trunc": math.trunc, "floor": math.floor, "ceil": math.ceil})


def _operate(obj: Any, arg: Any) -> Any:
    """``[name, *more]`` a unary use of ``obj`` (``round`` takes its digits);
    ``[name, other, reflected]`` a binary operator with another object."""
    name = str(arg[0])
    function = _OPERATORS[name]
    if name in codec.UNARY:
        return function(obj, *arg[1:2])
    return function(arg[1], obj) if arg[2] is True else function(obj, arg[1])


def _next(iterator: Any) -> list[Any]:
    for value in iterator:
        return [True, value]
    return [False, None]


_BATCH = 256


def _batch(iterator: Any) -> list[Any]:
    """The next items of ``iterator``, and whether it has ended."""
    items = list(itertools.islice(iterator, _BATCH))
    return [items, len(items) < _BATCH]


def _type_name(value: object) -> str:
    try:
        return str(type(value).__qualname__)
    except Exception:
        return "?"


def _describe(exc: BaseException, solution: Solution | None = None) -> dict[str, Any]:
    try:
        message = str(exc)[:2000]
    except Exception:
        message = "(its message could not be read)"
    raised: dict[str, Any] = {"type": _type_name(exc), "message": message}
    if solution is not None:
        with contextlib.suppress(Exception):
            raised["mro"] = solution.lineage(type(exc))
    # Its arguments and attributes, where they are plain data (``e.value.code == 404``).
    with contextlib.suppress(Exception):
        raised["args"] = codec.encode_value(list(exc.args), lenient=True)
    attributes = {}
    for name, value in list(getattr(exc, "__dict__", {}).items())[:50]:
        with contextlib.suppress(Exception):
            attributes[str(name)] = codec.encode_value(value, lenient=True)
    raised["attributes"] = attributes
    return {"raise": raised}


def _join_threads() -> None:
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()


def run_program(code: Any, text: str) -> str:
    """Run ``code`` as a program on ``text`` as stdin (fd 0 too); its stdout (fd 1 too)."""
    with open("stdin.txt", "w", encoding="utf-8") as handle:
        handle.write(text)
    saved = os.dup(0), os.dup(1)
    source = os.open("stdin.txt", os.O_RDONLY)
    target = os.open("stdout.txt", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(source, 0)
    os.dup2(target, 1)
    streams = sys.stdin, sys.stdout
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - restored below
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    try:
        exec(code, {"__name__": "__main__", "__builtins__": builtins})
        _join_threads()  # as the interpreter does at exit: the program ends when its threads do
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise _Exit(exc.code) from exc
    finally:
        sys.stdout.flush()
        sys.stdin, sys.stdout = streams
        os.dup2(saved[0], 0)
        os.dup2(saved[1], 1)
        for fd in (*saved, source, target):
            os.close(fd)
    with open("stdout.txt", "rb") as handle:
        return handle.read().decode("utf-8", "replace")


def _send(channel: int, reply: dict[str, Any]) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # what the code printed so far, before its process may be killed
    reply["blocked"] = guard.blocked[:]
    del guard.blocked[:]
    try:
        codec.write_message(channel, reply)
    except (ValueError, TypeError):  # a value json will not write (an int too long)
        codec.write_message(channel, {"unsupported": "a value too large to write", "blocked": []})


def serve(channel: int, spec: dict[str, Any]) -> None:
    """Load the solution and answer requests until the harness closes the channel."""
    try:
        solution = Solution(spec)
        names = {} if spec.get("format") == "stdio" else solution.load()
        _send(channel, {"ready": True, "names": names})
    except SystemExit as exc:
        _send(channel, {"exit": repr(exc.code)})
        return
    except BaseException as exc:
        _send(channel, {"ready": False, **_describe(exc)})
        return
    while True:
        try:
            request = codec.read_message(channel)
        except (EOFError, OSError):
            return
        try:
            reply = solution.answer(request)
        except _Exit as exc:
            reply = {"exit": repr(exc.code)}
        except SystemExit as exc:
            reply = {"exit": repr(exc.code)}
        except BaseException as exc:
            reply = _describe(exc, solution)
        _send(channel, reply)
