"""Reading a results file for ``ttscale fit``: each line checked, streamed into compact arrays.

:class:`ResultColumns` holds what the law fit reads of each record (counts, tokens, cost) and
:class:`SampleTable` what offline evaluation reads of each sample (answer, correctness, score),
a few bytes each, so memory follows the number of samples, not the size of the records.

A record needs ``id``, ``strategy``, ``n``, ``num_correct``, ``samples`` (``n`` of them, each with a
``correct`` of true, false or null) and ``usage`` (a ``Usage.to_dict()``); other fields (``params``,
``selected``) are carried but not read. A bad line is a :class:`~ttscale.errors.DataError` naming
the file, the line and the field (a line that is no JSON object too:
:func:`ttscale.datasets.read_jsonl`).
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from ttscale.datasets import read_jsonl
from ttscale.errors import DataError
from ttscale.types import Usage

__all__ = [
    "ProblemRecord",
    "ResultColumns",
    "SampleTable",
    "iter_results",
    "read_results",
    "sample_rows",
]


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


def _parse_record(raw: dict[str, Any], path: str, line: int) -> ProblemRecord:
    def bad(message: str, field_name: str | None = None) -> DataError:
        return DataError(message, path=path, line=line, field=field_name)

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
            # Written so that NaN and infinities fail too (NaN < 0 is false).
            number_ok = isinstance(number, int | float) and not isinstance(number, bool)
            if not (number_ok and 0 <= number < math.inf):
                where = f"usage.{key}" + (f".{part}" if part is not None else "")
                raise bad(f"usage values must be finite numbers >= 0, got {number!r}", where)
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
    for number, raw in read_jsonl(Path(path), what="results"):
        yield _parse_record(raw, str(path), number)


def sample_rows(path: str | Path) -> SampleTable:
    """The records of a results file as much as offline evaluation reads of them (``strategy``
    and each sample's ``answer``, ``correct`` and ``score``), streamed from the file into a
    :class:`SampleTable`: a few bytes a sample, whatever the file's size."""
    return SampleTable.from_records(record for _, record in read_jsonl(Path(path), what="results"))


@dataclass(frozen=True)
class ResultColumns:
    """The checked records of a results file as columns, one entry per record (``ttscale fit``'s
    input): ``strategy`` codes into ``strategies``, ``n``, ``num_correct``, ``tokens`` (total)
    and ``cost`` of each, its ``line`` and its ``ids``."""

    strategies: tuple[str, ...]
    strategy: npt.NDArray[np.int32]
    n: npt.NDArray[np.int64]
    num_correct: npt.NDArray[np.int64]
    tokens: npt.NDArray[np.float64]
    cost: npt.NDArray[np.float64]
    line: npt.NDArray[np.int64]
    ids: tuple[str, ...]

    @classmethod
    def read(cls, path: str | Path) -> ResultColumns:
        """Every record of ``path``, checked as :func:`iter_results` checks it."""
        names: dict[str, int] = {}
        strategy, line = array("i"), array("q")
        n, num_correct = array("q"), array("q")
        tokens, cost = array("d"), array("d")
        ids: list[str] = []
        for record in iter_results(path):
            strategy.append(names.setdefault(record.strategy, len(names)))
            n.append(record.n)
            num_correct.append(record.num_correct)
            tokens.append(record.usage.total_tokens)
            cost.append(record.usage.cost)
            line.append(record.line)
            ids.append(record.id)
        return cls(
            strategies=tuple(names),
            strategy=np.frombuffer(strategy, dtype=np.int32).copy(),
            n=np.frombuffer(n, dtype=np.int64).copy(),
            num_correct=np.frombuffer(num_correct, dtype=np.int64).copy(),
            tokens=np.frombuffer(tokens, dtype=np.float64).copy(),
            cost=np.frombuffer(cost, dtype=np.float64).copy(),
            line=np.frombuffer(line, dtype=np.int64).copy(),
            ids=tuple(ids),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: npt.NDArray[np.intp]) -> ResultColumns:
        """The records at ``rows`` (in that order)."""
        return ResultColumns(
            strategies=self.strategies,
            strategy=self.strategy[rows],
            n=self.n[rows],
            num_correct=self.num_correct[rows],
            tokens=self.tokens[rows],
            cost=self.cost[rows],
            line=self.line[rows],
            ids=tuple(self.ids[row] for row in rows.tolist()),
        )


class SampleTable(Sequence[dict[str, Any]]):
    """The samples of some records as offline evaluation reads them, in flat arrays.

    Per record its strategy; per sample (the records' samples one after another, record ``r``'s
    at ``offsets[r]:offsets[r + 1]``) its answer (a code into the answers seen, -1 for none),
    correctness (1 right, 0 wrong, -1 unknown) and score (NaN when it is not a finite number).
    Read as a sequence, a record is ``{"strategy": ..., "samples": [...]}`` whose samples are
    small read-only rows (``row.get("answer")``), one per distinct sample.
    """

    def __init__(
        self,
        strategies: Sequence[Any],
        offsets: npt.NDArray[np.int64],
        answers: npt.NDArray[np.int32],
        correct: npt.NDArray[np.int8],
        scores: npt.NDArray[np.float64],
        answer_values: Sequence[Any],
    ) -> None:
        self.strategies = list(strategies)
        self.offsets = offsets
        self.answers = answers
        self.correct = correct
        self.scores = scores
        self.answer_values = list(answer_values)
        self._rows: dict[tuple[int, int, float | None], _SampleRow] = {}

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> SampleTable:
        """The table of ``records`` (mappings as ``ttscale solve`` writes them), streamed."""
        codes: dict[Any, int] = {}
        values: list[Any] = []
        strategies: list[Any] = []
        offsets = array("q", [0])
        answers, correct, scores = array("i"), array("b"), array("d")
        for record in records:
            strategies.append(record.get("strategy"))
            for sample in record.get("samples") or ():
                answer = sample.get("answer")
                answers.append(-1 if answer is None else _code(codes, values, answer))
                verdict = sample.get("correct")
                correct.append(1 if verdict is True else 0 if verdict is False else -1)
                scores.append(_score(sample.get("score")))
            offsets.append(len(answers))
        return cls(
            strategies,
            np.frombuffer(offsets, dtype=np.int64).copy(),
            np.frombuffer(answers, dtype=np.int32).copy(),
            np.frombuffer(correct, dtype=np.int8).copy(),
            np.frombuffer(scores, dtype=np.float64).copy(),
            values,
        )

    def __len__(self) -> int:
        return len(self.strategies)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        number = range(len(self))[index]
        start, end = int(self.offsets[number]), int(self.offsets[number + 1])
        samples = [self._row(position) for position in range(start, end)]
        return {"strategy": self.strategies[number], "samples": samples}

    def counts(self) -> npt.NDArray[np.int64]:
        """How many samples each record holds."""
        return np.diff(self.offsets)

    def block(
        self, rows: Sequence[int], width: int
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        """The first ``width`` samples of each record in ``rows``: answers (codes, -1 none),
        whether each is right, and scores, each (len(rows), width)."""
        starts = self.offsets[np.asarray(rows, dtype=np.int64)]
        at = starts[:, None] + np.arange(width)[None, :]
        return self.answers[at], self.correct[at] == 1, self.scores[at]

    def _row(self, position: int) -> _SampleRow:
        code = int(self.answers[position])
        number = float(self.scores[position])
        score = None if math.isnan(number) else number  # (NaN is no key: it equals nothing)
        key = (code, int(self.correct[position]), score)
        row = self._rows.get(key)
        if row is None:
            answer = None if code < 0 else self.answer_values[code]
            verdict = {1: True, 0: False}.get(key[1])
            row = self._rows.setdefault(key, _SampleRow((answer, verdict, score)))
        return row


def _code(codes: dict[Any, int], values: list[Any], answer: Any) -> int:
    """The answer's code: equal answers share one (unhashable ones by their JSON text)."""
    try:
        key: Any = answer
        hash(key)
    except TypeError:
        key = ("unhashable", json.dumps(answer, sort_keys=True, default=repr))
    code = codes.get(key)
    if code is None:
        code = codes[key] = len(values)
        values.append(answer)
    return code


def _score(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return math.nan


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
