"""Reading a results file for ``ttscale fit``: each line checked, kept small, streamed.

A record needs ``id``, ``strategy``, ``n``, ``num_correct``, ``samples`` (``n`` of them, each with a
``correct`` of true, false or null) and ``usage`` (a ``Usage.to_dict()``); other fields (``params``,
``selected``) are carried but not read. A bad line is a :class:`~ttscale.errors.DataError` naming
the file, the line and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttscale.errors import DataError
from ttscale.types import Usage

__all__ = ["ProblemRecord", "iter_results", "read_results", "sample_rows"]


@dataclass(frozen=True)
class ProblemRecord:
    """What the report reads of one results line."""

    id: str
    strategy: str
    n: int
    num_correct: int
    usage: Usage
    line: int


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_record(raw: Any, path: str, line: int) -> ProblemRecord:
    def bad(message: str, field_name: str | None = None) -> DataError:
        return DataError(message, path=path, line=line, field=field_name)

    if not isinstance(raw, dict):
        raise bad(f"a record must be a JSON object, got {type(raw).__name__}")
    for name in ("id", "strategy", "n", "num_correct", "samples", "usage"):
        if name not in raw:
            raise bad("missing field", name)
    if not isinstance(raw["id"], str) or not raw["id"]:
        raise bad("id must be a non-empty string", "id")
    if not isinstance(raw["strategy"], str):
        raise bad("strategy must be a string", "strategy")
    n, num_correct, samples = raw["n"], raw["num_correct"], raw["samples"]
    if not _is_int(n) or n < 0:
        raise bad(f"n must be a whole number >= 0, got {n!r}", "n")
    if not isinstance(samples, list):
        raise bad("samples must be a list", "samples")
    if len(samples) != n:
        raise bad(f"n is {n} but {len(samples)} samples are listed", "n")
    correct = 0
    for position, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise bad("a sample must be an object", f"samples[{position}]")
        verdict = sample.get("correct")
        if verdict is not None and not isinstance(verdict, bool):
            raise bad(
                f"correct must be true, false or null, got {verdict!r}",
                f"samples[{position}].correct",
            )
        correct += verdict is True
    if not _is_int(num_correct) or not 0 <= num_correct <= n:
        raise bad(
            f"num_correct must be a whole number in 0..{n}, got {num_correct!r}", "num_correct"
        )
    if num_correct != correct:
        raise bad(f"num_correct is {num_correct} but {correct} samples are correct", "num_correct")
    usage = raw["usage"]
    if not isinstance(usage, dict):
        raise bad("usage must be an object", "usage")
    for key, value in usage.items():
        # A nested object is a part of the total shown apart (``usage.verifier``).
        parts = value.items() if isinstance(value, dict) else [(None, value)]
        for part, number in parts:
            if not isinstance(number, int | float) or isinstance(number, bool) or number < 0:
                where = f"usage.{key}" + (f".{part}" if part is not None else "")
                raise bad(f"usage values must be numbers >= 0, got {number!r}", where)
    try:
        parsed_usage = Usage.from_dict(usage)
    except TypeError as exc:
        raise bad(f"usage is not a Usage: {exc}", "usage") from exc
    return ProblemRecord(raw["id"], raw["strategy"], n, num_correct, parsed_usage, line)


def read_results(path: str | Path) -> list[ProblemRecord]:
    """Read and check a results JSONL file, line by line; blank lines are skipped. What is kept
    of a record is small (counts and usage), so memory does not follow the file's size."""
    return list(iter_results(path))


def iter_results(path: str | Path) -> Iterator[ProblemRecord]:
    """:func:`read_results` as a stream."""
    source = Path(path)
    try:
        handle = source.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read results: {exc}", path=str(source)) from exc
    with handle:
        for number, content in enumerate(handle, start=1):
            if not content.strip():
                continue
            try:
                raw = json.loads(content)
            except json.JSONDecodeError as exc:
                raise DataError(f"not JSON: {exc.msg}", path=str(source), line=number) from exc
            yield _parse_record(raw, str(source), number)


def sample_rows(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results file as much as offline evaluation reads of them (``strategy``
    and each sample's ``answer``, ``correct`` and ``score``), streamed from the file. Equal
    samples share one small read-only row, so a large file costs little more than a pointer per
    sample. For files too large to hold whole records of in memory."""
    seen: dict[tuple[Any, Any, Any], _SampleRow] = {}
    rows = []
    with Path(path).open(encoding="utf-8") as handle:
        for content in handle:
            if not content.strip():
                continue
            record = json.loads(content)
            samples = [
                _shared(seen, (s.get("answer"), s.get("correct"), s.get("score")))
                for s in record.get("samples") or ()
            ]
            rows.append({"strategy": record.get("strategy"), "samples": samples})
    return rows


class _SampleRow(tuple[Any, Any, Any]):
    """A sample's answer, correctness and score, read like the record's sample (``row.get``)."""

    __slots__ = ()
    _FIELDS = ("answer", "correct", "score")

    def get(self, key: str, default: Any = None) -> Any:
        return self[self._FIELDS.index(key)] if key in self._FIELDS else default

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self.get(key)
        return tuple.__getitem__(self, key)


def _shared(seen: dict[tuple[Any, Any, Any], _SampleRow], values: tuple[Any, Any, Any]) -> Any:
    try:
        return seen.setdefault(values, _SampleRow(values))
    except TypeError:  # an unhashable value (a list as an answer): kept apart
        return _SampleRow(values)
