"""The trusted side of a run: the tests, the comparisons and the verdict.

The harness holds the problem's tests and never shows them to the solution, which runs in another
process (:mod:`.solution`) behind a channel. The entry point the tests call is a proxy: a call
crosses the channel as plain data and its result comes back through the strict codec, so every
``==``, ``hash`` and ``repr`` the tests do runs on built-in values. Objects of the solution (an
instance of a class under test) stay there; the harness holds handles whose methods and
attributes are forwarded the same way and which compare by identity only.

Formats (``spec["format"]``):

- ``humaneval``: the prompt (trusted: the dataset's) runs here, for its helpers; the entry point
  is the proxy; the tests define ``check``, called with it.
- ``asserts``: every name the solution defines is bound (functions and classes as proxies, plain
  values as values), then the assert statements run.
- ``pytest``: the solution is the module the test file imports (a remote module whose functions
  and classes are proxies); pytest runs here, on the test file in a private directory.
- ``stdio``: each case's ``input`` is the program's standard input; its output is compared with
  ``output`` by :func:`outputs_match`.

A fault of the solution's side (its process died, a malformed reply, a value that cannot cross,
``exit``) raises :class:`SolutionFault`, which tests cannot swallow for good: it is remembered,
and a run that saw one is an ``error`` whatever the tests did afterwards.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import linecache
import math
import operator
import os
import re
import shutil
import sys
import tempfile
import traceback
import types
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from . import codec
from .codec import ARITHMETIC, UNARY

__all__ = ["Link", "SolutionFault", "outputs_match", "run"]

_T = TypeVar("_T")

# Exceptions of the solution that the tests may meet as themselves (pytest.raises(ValueError)).
# StopIteration is not among them: raised inside map() it would end the iteration early and let
# a test over an empty remainder pass.
_NOT_AS_THEMSELVES = frozenset({"StopIteration", "StopAsyncIteration"})


class SolutionFault(BaseException):
    """The solution's side failed in a way that decides the run: ``cause`` says how."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message


class RemoteError(Exception):
    """An exception the solution raised, of a type the harness does not rebuild."""


def _rebuildable(found: object) -> bool:
    """Whether a built-in exception may stand for the solution's: ``Exception`` and below, not the
    iteration-ending ones."""
    return (
        isinstance(found, type)
        and issubclass(found, Exception)
        and not issubclass(found, (StopIteration, StopAsyncIteration))
    )


def _lineage(found: object) -> list[tuple[str, str]]:
    """A well-formed ``mro`` of a reply or a class description, else nothing."""
    if type(found) is not list:
        return []
    return [
        (entry[0], entry[1][:100])
        for entry in found[:64]
        if type(entry) is list and len(entry) == 2 and all(type(part) is str for part in entry)
    ]


def _remote_exception(
    kind: str, raised: dict[str, Any], lineage: list[tuple[str, str]], errors: dict[str, type]
) -> BaseException:
    """The solution's exception as the tests meet it: its exported class (rebuilt here), a
    standard library one, or the nearest built-in one it extends (``pytest.raises(ValueError)``),
    with its plain arguments and attributes; else a :class:`RemoteError`."""
    found_message = raised.get("message")
    message = found_message if isinstance(found_message, str) else ""
    args = _plain_part(raised.get("args"))
    for origin, name in lineage or [("builtin", kind)]:
        found = _exception_class(origin, name, errors)
        if found is Exception or name in _NOT_AS_THEMSELVES:
            break  # RemoteError is an Exception too, and keeps the solution's name for the reason
        if found is None or not _rebuildable(found):
            continue
        assert isinstance(found, type)
        rebuilt = _rebuilt(found, args if isinstance(args, list) else None, message)
        if rebuilt is not None:
            _set_attributes(rebuilt, raised.get("attributes"))
            return rebuilt
    return RemoteError(f"{kind}: {message}")


def _rebuilt(kind: Any, args: list[Any] | None, message: str) -> BaseException | None:
    """``kind`` made with the solution's arguments, or its message, or (an ``__init__`` that
    wants other ones, as ``JSONDecodeError``'s) made bare with its ``args`` set."""
    for given in (args, [message]):
        if given is not None:
            with contextlib.suppress(Exception):
                made = kind(*given)
                if isinstance(made, BaseException):
                    return made
    with contextlib.suppress(Exception):
        bare = kind.__new__(kind)
        if isinstance(bare, BaseException):
            bare.args = tuple(args if args is not None else [message])
            return bare
    return None


def _exception_class(origin: str, name: str, errors: dict[str, type]) -> object:
    if origin == "export":
        return errors.get(name)
    if origin == "builtin":
        return getattr(builtins, name, None)
    module, _, qualname = name.partition(":")
    if origin != "stdlib" or module.partition(".")[0] not in sys.stdlib_module_names:
        return None  # pytest's own outcomes (``_pytest.outcomes.Exit``) are not the library's
    # Only a module the harness has imported already (the tests' ``import json``): importing
    # one the solution names would run that module's code here (``antigravity`` opens a browser).
    found: object = sys.modules.get(module)
    for part in qualname.split(".") if found is not None else ():
        found = getattr(found, part, None)
    if not isinstance(found, type) or _drives_the_runner(found):
        return None
    if str(found.__module__).partition(".")[0] not in sys.stdlib_module_names:
        return None  # a name of the library's module bound to a class from elsewhere
    return found


def _drives_the_runner(kind: type) -> bool:
    """Whether a test runner reads ``kind`` as an outcome (``unittest.SkipTest`` makes pytest
    skip the test: a run whose tests all skip exits 0)."""
    skip = getattr(sys.modules.get("unittest"), "SkipTest", None)
    return isinstance(skip, type) and issubclass(kind, skip)


def _plain_part(tree: Any) -> Any:
    try:
        return codec.decode_value(tree) if tree is not None else None
    except codec.CodecError:
        return None


def _set_attributes(exc: BaseException, tree: Any) -> None:
    if type(tree) is not dict:
        return
    for name, value in list(tree.items())[:50]:
        if type(name) is str and not name.startswith("__"):
            with contextlib.suppress(Exception):
                setattr(exc, name, _plain_part(value))


def error_classes(described: dict[str, list[tuple[str, str]]]) -> dict[str, type]:
    """Local stand-ins for the solution's exception classes, each extending its exported and
    built-in ancestors, so that ``pytest.raises(InsufficientFunds)`` and ``except ValueError``
    meet what the solution raised. Built here from names only: none of its code runs."""
    built: dict[str, type] = {}
    pending = dict(described)
    while pending:
        ready: dict[str, tuple[type, ...]] = {}
        for name, lineage in pending.items():
            bases = _bases([a for a in lineage if a != ("export", name)], built, pending)
            if bases is not None:
                ready[name] = bases
        if not ready:  # a cycle, which only a lying solution could describe
            ready = dict.fromkeys(pending, (Exception,))
        for name, bases in ready.items():
            built[name] = _error_class(name, bases)
            del pending[name]
    return built


def _error_class(name: str, bases: tuple[type, ...]) -> type:
    # Built-in bases can clash in their layouts (OSError with UnicodeError): then the first alone.
    name = name if name.isidentifier() else "SolutionError"
    for choice in (bases, bases[:1]):
        try:
            return type(name, choice, {"__module__": "solution"})
        except TypeError:
            continue
    return type(name, (Exception,), {"__module__": "solution"})


def _bases(
    ancestors: list[tuple[str, str]], built: dict[str, type], pending: dict[str, Any]
) -> tuple[type, ...] | None:
    """The bases of a stand-in, in the solution's order; ``None`` while one is not built yet."""
    chosen: list[type] = []
    for origin, name in ancestors:
        if origin == "export" and name in pending:
            return None
        found = built.get(name) if origin == "export" else getattr(builtins, name, None)
        if name in _NOT_AS_THEMSELVES or not _rebuildable(found):
            continue
        assert isinstance(found, type)
        if not any(issubclass(base, found) for base in chosen):
            chosen.append(found)
    return tuple(chosen) or (Exception,)


class Link:
    """The harness's end of the channel: requests, replies, and the fault that ends a run."""

    def __init__(self, fd: int, max_bytes: int) -> None:
        self.fd = fd
        self.max_bytes = max_bytes
        self.fault: SolutionFault | None = None
        self.blocked: list[str] = []
        self.calls = 0
        self.objects: dict[int, RemoteObject] = {}
        self.errors: dict[str, type] = {}

    def fail(self, cause: str, message: str) -> SolutionFault:
        if self.fault is None:
            self.fault = SolutionFault(cause, message)
        return self.fault

    def receive(self) -> dict[str, Any]:
        try:
            reply = codec.read_message(self.fd, self.max_bytes)
        except EOFError as exc:
            raise self.fail("died", "the solution's process ended") from exc
        except (codec.CodecError, OSError) as exc:
            raise self.fail(
                "protocol", f"the solution's side sent an unreadable reply ({exc})"
            ) from exc
        found = reply.get("blocked")
        if type(found) is list:
            self.blocked.extend(str(item)[:300] for item in found[:20] if type(item) is str)
        return reply

    def request(self, message: dict[str, Any]) -> Any:
        if self.fault is not None:
            raise self.fault
        self.calls += 1
        try:
            codec.write_message(self.fd, message)
        except OSError as exc:
            raise self.fail("died", "the solution's process ended") from exc
        return self.result(self.receive())

    def remote(self, handle: int, kind: type[RemoteObject] | None = None) -> RemoteObject:
        """The one proxy of the solution's object ``handle`` (so ``is`` holds between two)."""
        if handle not in self.objects:
            self.objects[handle] = (kind or RemoteObject)(self, handle)
        return self.objects[handle]

    def result(self, reply: dict[str, Any]) -> Any:
        if "value" in reply:
            try:
                return codec.decode_value(reply["value"], handle=self.remote)
            except codec.CodecError as exc:
                raise self.fail(
                    "protocol", f"the solution's side sent a malformed value ({exc})"
                ) from exc
        raised = reply.get("raise")
        if type(raised) is dict and type(raised.get("type")) is str:
            kind = raised["type"][:100]
            if kind == "MemoryError":
                raise self.fail("memory", "the solution ran out of memory (MemoryError)")
            raise _remote_exception(kind, raised, _lineage(raised.get("mro")), self.errors)
        if "exit" in reply:
            raise self.fail("exit", f"the solution called exit({str(reply['exit'])[:50]})")
        if "unsupported" in reply:
            kind = str(reply["unsupported"])[:100]
            raise self.fail(
                "unsupported_type",
                f"the solution returned a value of type {kind}, which cannot cross "
                "(plain data, or objects of the solution's own)",
            )
        raise self.fail("protocol", "the solution's side sent a reply of no known kind")

    def encode(self, value: Any) -> Any:
        try:
            return codec.encode_value(value, handle_of=self._handle_of)
        except codec.CodecError as exc:
            raise self.fail("unsupported_argument", f"the tests passed {exc}") from exc

    def _handle_of(self, value: Any) -> int:
        if isinstance(value, RemoteObject) and object.__getattribute__(value, "_link") is self:
            return int(object.__getattribute__(value, "_handle"))
        raise codec.CodecError(f"a value of type {type(value).__name__} cannot cross")


class RemoteFunction:
    """A function of the solution: calls cross the channel, and so do their results."""

    def __init__(self, link: Link, name: str, doc: str | None = None) -> None:
        self._link = link
        self.__name__ = self.__qualname__ = name
        self.__doc__ = doc  # the solution's own docstring, not this class's

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._link.request(
            {
                "op": "call",
                "target": {"name": self.__name__},
                "args": [self._link.encode(a) for a in args],
                "kwargs": {str(k): self._link.encode(v) for k, v in kwargs.items()},
            }
        )

    def __repr__(self) -> str:
        return f"<solution function {self.__name__}>"


class RemoteObject:
    """An object that stays in the solution's process. Every use crosses the channel.

    What the solution's methods may see of the tests' values is the rule here. Its objects
    compare with each other as it says, as in one process. Uses that show it nothing of the
    tests' (attributes, calls, ``len``, iteration, conversions, ``str``) are forwarded. But an
    operator, ``in`` or a comparison with plain data the tests wrote never reaches its methods:
    in ``abs(f(x) - 0.5) < 1e-6`` or ``7 in primes(10)`` the plain value is the expected one. Such
    a use counts the plain data the object holds (a dict subclass as its items; for ``in``, else
    what it iterates); an object that holds none equals no plain value, and any other such use
    ends the run as an error (cause ``unsupported_operation``), never as an exception the tests
    could expect.
    """

    def __init__(self, link: Link, handle: int) -> None:
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_handle", handle)

    def _ask(self, op: str, arg: Any = None) -> Any:
        link: Link = object.__getattribute__(self, "_link")
        message = {"op": op, "handle": object.__getattribute__(self, "_handle")}
        return link.request({**message, "arg": link.encode(arg)})

    def _plain(self, use: str) -> Any:
        """The plain data this object holds, for a use with the tests' plain data."""
        holds, plain = self._ask("plain")
        if holds is not True:
            link: Link = object.__getattribute__(self, "_link")
            raise link.fail(
                "unsupported_operation",
                f"the tests used {use} on an object of the solution's with a plain value; its "
                "methods never see the tests' values, and it holds no plain data to use instead",
            )
        return plain

    @property
    def __doc__(self) -> Any:  # type: ignore[override]
        return self._ask("getattr", "__doc__")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._ask("setattr", [name, value])

    def __delattr__(self, name: str) -> None:
        self._ask("delattr", name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        link: Link = object.__getattribute__(self, "_link")
        return link.request(
            {
                "op": "call",
                "target": {"handle": object.__getattribute__(self, "_handle")},
                "args": [link.encode(a) for a in args],
                "kwargs": {str(k): link.encode(v) for k, v in kwargs.items()},
            }
        )

    def __len__(self) -> int:
        return _checked(self._ask("len"), int, "len()")

    def __bool__(self) -> bool:
        return _checked(self._ask("bool"), bool, "bool()")

    def __hash__(self) -> int:
        holds, plain = self._ask("plain")
        if holds is True:  # as the plain value it holds, which is how it compares
            return hash(plain)
        return _checked(self._ask("hash"), int, "hash()")

    def __eq__(self, other: object) -> bool:
        holds, plain = self._ask("plain")
        if isinstance(other, RemoteObject):
            other_holds, other_plain = other._ask("plain")
            if holds is True and other_holds is True:
                return _plain_equal(plain, other_plain)  # an int subclass saying 9 == 3 is not
            return _checked(self._ask("eq", other), bool, "==")
        return bool(holds is True and _plain_equal(plain, other))

    def __getitem__(self, key: Any) -> Any:
        return self._ask("getitem", key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._ask("setitem", [key, value])

    def __delitem__(self, key: Any) -> None:
        self._ask("delitem", key)

    def __contains__(self, item: Any) -> bool:
        if isinstance(item, RemoteObject):
            return self._ask("contains", item) is True
        holds, plain = self._ask("plain")
        # Membership in what it holds, or else in what it iterates (Python's own fallback):
        # either way the solution answers without seeing the item.
        return item in (plain if holds is True else self._iterate())

    def __iter__(self) -> Any:
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        # In batches, as it is asked for: an endless generator under islice() or a break ends.
        iterator = self._ask("iterator")
        while True:
            batch, ended = iterator._ask("batch")
            yield from batch
            if ended is True:
                return

    def __next__(self) -> Any:
        more, value = self._ask("next")
        if more is not True:
            raise StopIteration
        return value

    def __enter__(self) -> Any:
        return self._ask("enter")

    def __exit__(self, *raised: object) -> None:
        # The solution is told the block ended, never what it raised, and cannot swallow it.
        self._ask("exit")

    def __format__(self, spec: str) -> str:
        return _checked(self._ask("format", spec), str, "format()")

    def __str__(self) -> str:
        return _checked(self._ask("str"), str, "str()")

    def __repr__(self) -> str:
        link: Link = object.__getattribute__(self, "_link")
        if link.fault is None:
            with contextlib.suppress(Exception):
                return _checked(self._ask("repr"), str, "repr()")
        return f"<solution object {object.__getattribute__(self, '_handle')}>"


def _binary(name: str, *, reflected: bool = False) -> Callable[[RemoteObject, Any], Any]:
    """An operator between a solution object and ``other``: forwarded between two of its
    objects; with plain data, applied here to the plain data it holds (:class:`RemoteObject`)."""
    function = _OPERATORS[name]

    def operate(self: RemoteObject, other: Any) -> Any:
        if isinstance(other, RemoteObject):
            return self._ask("operator", [name, other, reflected])
        plain = self._plain(f"the operator {name}")
        return function(other, plain) if reflected else function(plain, other)

    operate.__name__ = f"__{'r' if reflected else ''}{name}__"
    return operate


def _unary(name: str, kind: type | None = None) -> Callable[..., Any]:
    """A use that shows the solution nothing of the tests' (``-x``, ``float(x)``, ``round(x, 2)``):
    its own method answers."""

    def operate(self: RemoteObject, *args: Any) -> Any:
        found = self._ask("operator", [name, *args])
        return found if kind is None else _checked(found, kind, f"{name}()")

    operate.__name__ = f"__{name}__"
    return operate


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    name: getattr(operator, name if name not in ("and", "or") else f"{name}_")
    for name in (*ARITHMETIC, "lt", "le", "gt", "ge")
}
for _name in ARITHMETIC:
    setattr(RemoteObject, f"__{_name}__", _binary(_name))
    setattr(RemoteObject, f"__r{_name}__", _binary(_name, reflected=True))
for _name in ("lt", "le", "gt", "ge"):
    setattr(RemoteObject, f"__{_name}__", _binary(_name))
for _name, _kind in UNARY.items():
    setattr(RemoteObject, f"__{_name}__", _unary(_name, {"int": int, "float": float}.get(_kind)))


class RemoteClass(RemoteObject):
    """A class of the solution: calling it makes objects there; ``isinstance`` asks there."""

    # What tests read as ``Stack.__doc__`` is the solution's docstring, not the one above.
    __doc__ = RemoteObject.__dict__["__doc__"]

    def __subclasscheck__(self, subclass: Any) -> bool:
        if not isinstance(subclass, RemoteObject):
            return False
        return _checked(self._ask("issubclass", subclass), bool, "issubclass()")

    def __instancecheck__(self, instance: Any) -> bool:
        if not isinstance(instance, RemoteObject):
            return False
        return _checked(self._ask("isinstance", instance), bool, "isinstance()")

    def __repr__(self) -> str:
        return f"<solution class {self.__dict__.get('__name__', '?')}>"


def _checked(value: Any, kind: type[_T], what: str) -> _T:
    if type(value) is not kind:
        raise TypeError(f"{what} of a solution object gave no {kind.__name__}")
    return value


def _plain_equal(plain: Any, other: Any) -> bool:
    # ``plain`` came through the strict codec: built-ins, whose ``==`` is Python's own, and handles.
    return bool(plain == other)


# Python's own names: a solution's ``set`` or ``abs`` must not replace the one the tests call
# (``assert set(f(x)) == set(y)`` would pass whatever ``f`` returned).
_BUILTIN_NAMES = frozenset(dir(builtins))


def bind(link: Link, names: dict[str, Any], entry_point: str | None = None) -> dict[str, Any]:
    """The solution's exports as the tests see them: proxies, plain values and local stand-ins
    for its exception classes. A name of Python's builtins is left out, unless it is the entry
    point the tests are about."""
    if not all(type(name) is str and type(about) is dict for name, about in names.items()):
        raise link.fail("protocol", "the solution's side described its names wrongly")
    # Python's own names and dunder names (``__builtins__``, ``__all__``) are never the solution's
    # to give: a forged ``__builtins__`` would be every builtin the tests call.
    names = {
        n: about
        for n, about in names.items()
        if (n not in _BUILTIN_NAMES or n == entry_point) and not n.startswith("__")
    }
    link.errors = error_classes(
        {n: _lineage(about["mro"]) for n, about in names.items() if "mro" in about}
    )
    bound: dict[str, Any] = dict(link.errors)
    for name, about in names.items():
        kind = about.get("kind")
        if name in bound:
            continue
        if kind == "function":
            doc = about.get("doc")
            bound[name] = RemoteFunction(link, name, doc if type(doc) is str else None)
        elif kind == "class" and type(about.get("handle")) is int:
            remote = link.remote(about["handle"], RemoteClass)
            object.__setattr__(remote, "__name__", name)
            bound[name] = remote
        elif kind == "value":
            bound[name] = link.result({"value": about.get("value")})
    return bound


def _describe_assertion(exc: AssertionError, source: str) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == source]
    message = str(exc)
    where = ""
    if frames:
        where = f" at line {frames[-1].lineno}: {(frames[-1].line or '').strip()}"
    return f"assertion failed{where}" + (f" ({message[:300]})" if message else "")


def _compile(source: str, name: str) -> Any:
    """Compile trusted source under ``name``, with its lines kept for tracebacks."""
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    return compile(source, name, "exec")


def _run_humaneval(spec: dict[str, Any], bound: dict[str, Any], link: Link) -> None:
    entry = spec["entry_point"]
    if entry not in bound or not isinstance(bound[entry], RemoteFunction):
        raise link.fail("load", f"the solution defines no function named {entry!r}")
    scope: dict[str, Any] = {"__name__": "__tests__"}
    try:
        exec(_compile(spec.get("prompt") or "", "<prompt>"), scope)
    except Exception:
        scope = {"__name__": "__tests__"}  # a prompt that is no program adds no helpers
    scope[entry] = bound[entry]
    exec(_compile(spec["tests"], "<tests>"), scope)
    scope["check"](bound[entry])


def _run_asserts(spec: dict[str, Any], bound: dict[str, Any]) -> None:
    tests = spec["tests"]
    binds, reads = _bound_by(tests)
    given = {name: value for name, value in bound.items() if _may_bind(name, value, binds)}
    scope: dict[str, Any] = {**given, "__name__": "__tests__", "__builtins__": builtins}
    scope.update(_modules_the_tests_use(reads - binds - set(scope)))
    exec(_compile(tests, "<tests>"), scope)


_RUNNER_NAMES = re.compile(r"(pytest|setup|teardown|conftest)|(setUp|tearDown)Module$", re.I)


def _bound_by(source: str) -> tuple[set[str], set[str]]:
    """The names a test file binds (imports, definitions, assignments) and those it reads."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set(), set()
    binds: set[str] = set()
    reads: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            binds.update((a.asname or a.name).partition(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            binds.add(node.name)
        elif isinstance(node, ast.Name):
            (binds if isinstance(node.ctx, ast.Store) else reads).add(node.id)
    return binds, reads


def _is_a_module(name: str) -> bool:
    # The library's and those imported here (pytest, numpy); the test file's own imports are
    # refused as what it binds.
    return name in sys.stdlib_module_names or name in sys.modules


def _may_bind(name: str, value: Any, binds: set[str]) -> bool:
    """Whether the solution's ``name`` may enter the tests' namespace: never one the tests bind
    themselves, a name a test runner reads (``pytest_plugins``, ``setup_module``), or, unless it
    is a plain function, a module's name (a class ``math`` with an ``isclose`` saying yes)."""
    if name.startswith("_") or name in binds or _RUNNER_NAMES.match(name):
        return False
    return isinstance(value, RemoteFunction) or not _is_a_module(name)


def _modules_the_tests_use(unbound: set[str]) -> dict[str, Any]:
    """The standard library modules the tests read but nothing binds (MBPP's tests use ``math``
    that the solution imported): the harness's own copies, imported here."""
    found = {}
    for name in sorted(unbound):
        if name in sys.stdlib_module_names and name not in _NEVER_IMPORTED:
            with contextlib.suppress(ImportError):
                found[name] = importlib.import_module(name)
    return found


# Standard library modules whose import does something (opens a browser, prints, needs a screen).
_NEVER_IMPORTED = frozenset({"antigravity", "this", "idlelib", "turtle", "turtledemo", "tkinter"})


class _PytestCollect:
    def __init__(self) -> None:
        self.passed = 0
        self.collected = 0
        self.failed: list[str] = []

    def pytest_collection_finish(self, session: Any) -> None:
        self.collected = len(session.items)

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.passed and report.when == "call":
            self.passed += 1
        elif report.failed:
            self.failed.append(f"{report.nodeid}: {report.longreprtext[-300:]}")


def _run_pytest(spec: dict[str, Any], bound: dict[str, Any]) -> dict[str, str]:
    import pytest

    module_name = spec.get("module", "solution")
    module = types.ModuleType(module_name)
    module.__dict__.update(bound)
    # What ``from solution import *`` gives: never a name the test file binds itself, a module's
    # name or a runner's (see :func:`_may_bind`).
    binds, _ = _bound_by(spec["tests"])
    module.__dict__["__all__"] = [
        name for name, value in bound.items() if _may_bind(name, value, binds)
    ]
    sys.modules[module_name] = module
    folder = tempfile.mkdtemp(prefix="ttscale-tests-")
    try:
        path = os.path.join(folder, f"test_{module_name}.py")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(spec["tests"])
        collect = _PytestCollect()
        # The run's own folder is pytest's root, and no configuration or conftest.py is read from
        # above it: whoever can write to /tmp must not decide a verdict (nor slow every run by
        # what /tmp holds).
        options = [
            path, "-q", "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", folder,
            "--confcutdir", folder, "--basetemp", os.path.join(folder, "tmp"),
        ]  # fmt: skip
        code = pytest.main(options, plugins=[collect])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    counts = f"{collect.passed} passed, {len(collect.failed)} failed"
    if code == 0 and not 0 < collect.passed == collect.collected:
        # A pass is every collected test passing: a skip, or a session ended early (pytest.exit
        # with status 0), shows nothing to work.
        reason = f"pytest: {counts} of {collect.collected} collected"
        return {"outcome": "error", "reason": reason, "cause": "tests"}
    if code == 0:
        return {"outcome": "pass", "reason": f"pytest: {counts}"}
    if code == 1:
        first = collect.failed[0] if collect.failed else ""
        return {
            "outcome": "fail",
            "reason": f"pytest: {counts}; first: {first}",
            "cause": "assertion",
        }
    if code == 5:
        return {"outcome": "error", "reason": "pytest collected no tests", "cause": "tests"}
    return {
        "outcome": "error",
        "reason": f"pytest exited with {int(code)} ({counts})",
        "cause": "tests",
    }


# What a judge reads as a number and as a separator: ASCII only. Python's float() and str.split()
# would also take Arabic-Indic digits, "1_000.5", U+2028 or a full-width space, which no judge does.
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_ASCII_SPACE = re.compile(r"[ \t\r\f\v]+")


def _tokens(line: str) -> list[str]:
    return [token for token in _ASCII_SPACE.split(line) if token]


def _lines(text: str) -> list[list[str]]:
    lines = [_tokens(line) for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()  # trailing blank lines
    return lines


def _numbers(expected: str, got: str, tolerance: float) -> bool:
    if not (_DECIMAL.fullmatch(expected) and _DECIMAL.fullmatch(got)):
        return False
    try:
        want, have = float(expected), float(got)
    except ValueError:
        return False
    if not (math.isfinite(want) and math.isfinite(have)):
        return False
    return abs(want - have) <= tolerance * max(1.0, abs(want))


def outputs_match(expected: str, got: str, tolerance: float = 1e-6) -> tuple[bool, str]:
    """Whether a program's output is the expected one, and where not (pure).

    Lines (split at ``\n``) are compared after trailing blank ones are dropped; within a line,
    tokens separated by ASCII whitespace must be equal, except that a token of the expected
    output written as a decimal (``0.5``, ``1e-3``) matches a number written in ASCII within
    ``tolerance`` (absolute, or relative beyond 1). Other Unicode spaces, line separators and
    digits are characters like any other.
    """
    want, have = _lines(expected), _lines(got)
    for number, (line_want, line_have) in enumerate(zip(want, have, strict=False), start=1):
        if len(line_want) != len(line_have):
            return (
                False,
                f"line {number}: expected {' '.join(line_want)[:200]!r}, "
                f"got {' '.join(line_have)[:200]!r}",
            )
        for token_want, token_have in zip(line_want, line_have, strict=True):
            decimal = (
                any(mark in token_want for mark in ".eE") and token_want.lstrip("-+")[:1].isdigit()
            )
            if token_want != token_have and not (
                decimal and _numbers(token_want, token_have, tolerance)
            ):
                return (
                    False,
                    f"line {number}: expected {token_want[:100]!r}, got {token_have[:100]!r}",
                )
    if len(want) != len(have):
        return False, f"expected {len(want)} lines of output, got {len(have)}"
    return True, ""


def _run_stdio(spec: dict[str, Any], link: Link) -> dict[str, str] | None:
    for number, case in enumerate(spec["cases"], start=1):
        output = link.request({"op": "stdio", "input": case["input"]})
        if type(output) is not str:
            raise link.fail("protocol", "the solution's side sent no text as the output")
        same, where = outputs_match(case["output"], output, spec.get("tolerance", 1e-6))
        if not same:
            return {"outcome": "fail", "reason": f"case {number}: {where}", "cause": "output"}
    return None


def _verdict(spec: dict[str, Any], link: Link) -> dict[str, Any]:
    hello = link.receive()
    if hello.get("ready") is not True:
        found = hello.get("raise")
        raised: dict[str, Any] = found if type(found) is dict else {}
        if "exit" in hello:
            raise link.fail(
                "exit", f"the solution called exit({str(hello['exit'])[:50]}) while loading"
            )
        what = f"{str(raised.get('type', '?'))[:100]}: {str(raised.get('message', ''))[:300]}"
        if raised.get("type") == "MemoryError":
            raise link.fail("memory", "the solution ran out of memory (MemoryError) while loading")
        raise link.fail("load", f"the solution failed to load: {what}")
    names = hello.get("names")
    entry = spec.get("entry_point")
    bound = bind(link, names if type(names) is dict else {}, entry if type(entry) is str else None)
    kind = spec["format"]
    if kind == "humaneval":
        _run_humaneval(spec, bound, link)
    elif kind == "asserts":
        _run_asserts(spec, bound)
    elif kind == "pytest":
        return _run_pytest(spec, bound)
    elif kind == "stdio":
        failed = _run_stdio(spec, link)
        if failed is not None:
            return failed
        return {"outcome": "pass", "reason": f"all {len(spec['cases'])} cases matched"}
    else:
        raise ValueError(f"unknown test format {kind!r}")
    return {"outcome": "pass", "reason": "every test passed"}


def run(spec: dict[str, Any], channel: int) -> dict[str, Any]:
    """Run the tests of ``spec`` against the solution behind ``channel``; the report."""
    link = Link(channel, int(spec.get("max_message_bytes", codec.MAX_MESSAGE_BYTES)))
    verdict: dict[str, Any]
    try:
        verdict = _verdict(spec, link)
    except SolutionFault as fault:
        verdict = {"outcome": "error", "reason": fault.message, "cause": fault.cause}
    except AssertionError as exc:
        verdict = {
            "outcome": "fail",
            "reason": _describe_assertion(exc, "<tests>"),
            "cause": "assertion",
        }
    except RemoteError as exc:
        verdict = {"outcome": "error", "reason": f"the solution raised {exc}", "cause": "exception"}
    except Exception as exc:
        verdict = {
            "outcome": "error",
            "reason": f"{type(exc).__name__}: {str(exc)[:300]}",
            "cause": "exception",
        }
    if link.fault is not None and verdict.get("cause") != link.fault.cause:
        # The tests caught the fault and carried on: the fault decides all the same.
        verdict = {"outcome": "error", "reason": link.fault.message, "cause": link.fault.cause}
    verdict.setdefault("cause", None)
    verdict["blocked"] = link.blocked[:50]
    verdict["calls"] = link.calls
    return verdict
