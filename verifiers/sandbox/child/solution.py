"""The solution's side of a run: load the model-written code, then answer the harness's calls.

The process running this is untrusted from the moment the solution's code runs: it may rewrite
anything here. Nothing it sends is believed beyond what the harness's strict decoding lets
through, so this module is written for honest solutions, not against dishonest ones.

Requests (one framed JSON message each, answered by one):

- ``call``: ``target`` (``{"name": ...}`` an exported function or class, ``{"handle": n}`` an
  object handed out before), ``args`` and ``kwargs`` in wire form;
- ``getattr``, ``len``, ``getitem``, ``contains``, ``iter``, ``str``, ``repr`` on a handle;
- ``stdio``: run the whole program with ``input`` as its standard input; answer its output.

Replies: ``{"value": wire}``; ``{"handle": n, "type": name}`` (objects made by calling a class,
and attributes of handles that are not plain data); ``{"raise": {"type", "message"}}``;
``{"exit": code}`` (the code called ``exit``); ``{"unsupported": type name}`` (a function
returned what cannot cross). Every reply carries ``blocked``: what the guard refused since the
last one.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import sys
from typing import Any

from . import codec, guard

__all__ = ["serve"]

_ON_HANDLES = ("getattr", "len", "getitem", "contains", "iter", "str", "repr")


class _Exit(Exception):
    def __init__(self, code: object) -> None:
        super().__init__(code)
        self.code = code


class Solution:
    """The loaded code, what it exports, and the objects handed out as handles."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.handles: list[Any] = []
        self.exports: dict[str, Any] = {}
        self.code = compile(spec["code"], spec.get("filename", "solution.py"), "exec")

    def load(self) -> dict[str, Any]:
        """Run the module once; what it exports, described for the harness."""
        module = {"__name__": self.spec.get("module", "solution"), "__builtins__": builtins}
        exec(self.code, module)
        names: dict[str, Any] = {}
        for name, value in module.items():
            if name.startswith("__") or type(value).__name__ == "module":
                continue
            if isinstance(value, type):
                names[name] = {"kind": "class"}
            elif callable(value):
                names[name] = {"kind": "function"}
            else:
                try:
                    names[name] = {
                        "kind": "value",
                        "value": codec.encode_value(value, lenient=True),
                    }
                except (codec.CodecError, ValueError, RecursionError):
                    continue
            self.exports[name] = value
        return names

    def reply_value(self, value: Any, *, handle: bool) -> dict[str, Any]:
        try:
            return {"value": codec.encode_value(value, lenient=True)}
        except (codec.CodecError, ValueError, RecursionError):
            if not handle:
                return {"unsupported": _type_name(value)}
        self.handles.append(value)
        return {"handle": len(self.handles) - 1, "type": _type_name(value)}

    def target(self, spec: Any) -> tuple[Any, bool]:
        """The callable a request names, and whether its results may be handles."""
        if "name" in spec:
            value = self.exports[spec["name"]]
            return value, isinstance(value, type)
        return self.handles[int(spec["handle"])], True

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "call":
            function, handle = self.target(request["target"])
            args = [codec.decode_value(item) for item in request.get("args", [])]
            kwargs = {k: codec.decode_value(v) for k, v in request.get("kwargs", {}).items()}
            return self.reply_value(function(*args, **kwargs), handle=handle)
        if op in _ON_HANDLES:
            obj = self.handles[int(request["handle"])]
            arg = codec.decode_value(request.get("arg"))
            return self.reply_value(_on_handle(op, obj, arg), handle=op in ("getattr", "getitem"))
        if op == "stdio":
            return {"value": run_program(self.code, str(request["input"]))}
        return {"raise": {"type": "ValueError", "message": f"unknown request {op!r}"}}


def _on_handle(op: str, obj: Any, arg: Any) -> Any:
    if op == "getattr":
        return getattr(obj, arg)
    if op == "len":
        return len(obj)
    if op == "getitem":
        return obj[arg]
    if op == "contains":
        return arg in obj
    if op == "iter":
        return list(obj)
    return str(obj) if op == "str" else repr(obj)


def _type_name(value: object) -> str:
    try:
        return str(type(value).__qualname__)
    except Exception:
        return "?"


def _describe(exc: BaseException) -> dict[str, Any]:
    try:
        message = str(exc)[:2000]
    except Exception:
        message = "(its message could not be read)"
    return {"raise": {"type": _type_name(exc), "message": message}}


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
            reply = _describe(exc)
        _send(channel, reply)
