"""The sample bank: stored samples of the embedded model, and how to read them back.

The bank lives in ``benchmarks/bank/`` of the repository (see its README): for each set
(``humaneval``, ``gsm8k``), parts drawn by ``benchmarks/bank/generate.py`` with ``ttscale
solve``: ``part-NNN.jsonl.gz`` (one line per sample: ``problem``, ``index``, ``seed``, ``text``,
``answer``, ``finish_reason``, ``completion_tokens``) and ``part-NNN.npz`` (float16 ``chosen``
token logprobs, float16 ``top`` logprobs of the top-5 alternatives per token, uint16
``token_chars``, int64 ``offsets`` into them per sample), and ``verdicts.json`` written by
``benchmarks/bank/verdicts.py`` (each sample's verdict on the full tests, and on HumanEval also
on the weak tests of :func:`weak_tests`).

:func:`load_bank_set` reads a set into a :class:`BankSet`: per problem, its samples in index
order, each with its token logprobs as arrays. :meth:`BankSample.candidate` turns a sample back
into a :class:`~ttscale.types.Candidate` with its logprobs, for the confidence measures and
verifiers. :func:`write_part` writes a part in the bank's format and :func:`slice_bank_set` copies
some problems of a set, byte for byte in content, into another folder (the tests' slice).
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ttscale.errors import DataError
from ttscale.types import Candidate, TokenLogprob

__all__ = [
    "DEFAULT_ROOT",
    "BankSample",
    "BankSet",
    "load_bank_set",
    "slice_bank_set",
    "weak_tests",
    "write_part",
]

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "benchmarks" / "bank"


@dataclass(frozen=True)
class BankSample:
    """One stored sample, with its token logprobs (``chosen`` [T], ``top`` [T, 5])."""

    problem: str
    index: int
    text: str
    answer: str | None
    completion_tokens: int
    finish_reason: str | None
    chosen: np.ndarray = field(repr=False)
    top: np.ndarray = field(repr=False)
    correct: bool | None = None
    correct_weak: bool | None = None

    def candidate(self) -> Candidate:
        """The sample as a candidate carrying its token logprobs (token texts are not stored).

        A top slot the server left empty (stored as ``nan``) is left out of that token's
        alternatives.
        """
        tokens = tuple(
            TokenLogprob(
                "",
                float(chosen),
                tuple(("", float(value)) for value in row if not math.isnan(value)),
            )
            for chosen, row in zip(self.chosen.tolist(), self.top.tolist(), strict=True)
        )
        return Candidate(
            text=self.text,
            index=self.index,
            finish_reason=self.finish_reason,
            completion_tokens=self.completion_tokens,
            logprobs=tokens,
        )


@dataclass(frozen=True)
class BankSet:
    """A set of the bank: its problems in dataset order and their samples in index order."""

    name: str
    problems: tuple[str, ...]
    samples: Mapping[str, tuple[BankSample, ...]]

    def matrix(self, name: str) -> np.ndarray:
        """``name`` (``correct``, ``correct_weak``, ``completion_tokens``) as problems x samples.

        Problems with fewer samples than the most are padded with ``nan``.
        """
        width = max((len(row) for row in self.samples.values()), default=0)
        table = np.full((len(self.problems), width), np.nan)
        for row, problem in enumerate(self.problems):
            for column, sample in enumerate(self.samples[problem]):
                value = getattr(sample, name)
                if value is not None:
                    table[row, column] = float(value)
        return table


def _read_part(text_path: Path) -> list[BankSample]:
    with np.load(text_path.with_name(text_path.name.replace(".jsonl.gz", ".npz"))) as stored:
        # Each item access of an npz decompresses the whole array: read each once.
        arrays = {name: stored[name] for name in ("chosen", "top", "offsets")}
    offsets = arrays["offsets"]
    samples = []
    with gzip.open(text_path, "rt", encoding="utf-8") as handle:
        for position, line in enumerate(handle):
            row = json.loads(line)
            start, end = int(offsets[position]), int(offsets[position + 1])
            samples.append(
                BankSample(
                    problem=str(row["problem"]),
                    index=int(row["index"]),
                    text=row["text"],
                    answer=row.get("answer"),
                    completion_tokens=int(row["completion_tokens"]),
                    finish_reason=row.get("finish_reason"),
                    chosen=arrays["chosen"][start:end],
                    top=arrays["top"][start:end],
                )
            )
    if len(samples) != len(offsets) - 1:
        raise DataError(
            f"{len(samples)} samples but {len(offsets) - 1} logprob runs", path=str(text_path)
        )
    return samples


def load_bank_set(name: str, root: Path | None = None) -> BankSet:
    """Every packed part of set ``name`` under ``root`` (default: the repository's bank)."""
    folder = (root or DEFAULT_ROOT) / name
    parts = sorted(folder.glob("part-*.jsonl.gz"))
    if not parts:
        raise DataError(f"no packed parts of the bank set {name!r}", path=str(folder))
    verdicts: dict[str, Any] = {}
    verdict_path = folder / "verdicts.json"
    if verdict_path.exists():
        verdicts = json.loads(verdict_path.read_text(encoding="utf-8"))
    by_problem: dict[str, list[BankSample]] = {}
    for part in parts:
        for sample in _read_part(part):
            found = verdicts.get(f"{sample.problem}#{sample.index}", {})
            sample = BankSample(
                **{
                    **sample.__dict__,
                    "correct": found.get("full"),
                    "correct_weak": found.get("weak"),
                }
            )
            by_problem.setdefault(sample.problem, []).append(sample)
    samples = {p: tuple(sorted(rows, key=lambda s: s.index)) for p, rows in by_problem.items()}
    return BankSet(name, tuple(samples), samples)


def write_part(
    folder: Path,
    number: int,
    rows: list[dict[str, Any]],
    runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> Path:
    """Write ``part-NNN.jsonl.gz`` and ``part-NNN.npz`` in ``folder``; returns the text file.

    ``rows[i]`` is sample i's JSON line; ``runs[i]`` its ``(chosen [T], top [T, 5],
    token_chars [T])`` arrays, stored as float16, float16 and uint16 with the offsets.
    """
    if len(rows) != len(runs) or not rows:
        raise DataError(f"{len(rows)} rows and {len(runs)} logprob runs", path=str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    text_path = folder / f"part-{number:03d}.jsonl.gz"
    with gzip.open(text_path, "wt", encoding="utf-8", compresslevel=9) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    lengths = [len(chosen) for chosen, _, _ in runs]
    np.savez_compressed(
        text_path.with_name(f"part-{number:03d}.npz"),
        chosen=np.concatenate([r[0] for r in runs]).astype(np.float16),
        top=np.concatenate([r[1] for r in runs]).astype(np.float16),
        token_chars=np.concatenate([r[2] for r in runs]).astype(np.uint16),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
    )
    return text_path


def slice_bank_set(
    name: str, problems: list[str], destination: Path, root: Path | None = None
) -> int:
    """Copy ``problems`` of set ``name`` (rows, arrays and verdicts) into ``destination/name``.

    The slice is one part in the bank's format, its rows in the order of the source parts.
    Returns the number of samples copied; a problem the set does not hold is an error.
    """
    folder = (root or DEFAULT_ROOT) / name
    wanted = set(problems)
    rows: list[dict[str, Any]] = []
    runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for part in sorted(folder.glob("part-*.jsonl.gz")):
        with np.load(part.with_name(part.name.replace(".jsonl.gz", ".npz"))) as stored:
            arrays = {name: stored[name] for name in stored.files}
        offsets = arrays["offsets"]
        with gzip.open(part, "rt", encoding="utf-8") as handle:
            for position, line in enumerate(handle):
                row = json.loads(line)
                if row["problem"] not in wanted:
                    continue
                run = slice(int(offsets[position]), int(offsets[position + 1]))
                rows.append(row)
                runs.append((arrays["chosen"][run], arrays["top"][run], arrays["token_chars"][run]))
    missing = wanted - {row["problem"] for row in rows}
    if missing:
        raise DataError(f"the bank set {name!r} holds no {sorted(missing)}", path=str(folder))
    write_part(destination / name, 0, rows, runs)
    verdict_path = folder / "verdicts.json"
    if verdict_path.exists():
        verdicts = json.loads(verdict_path.read_text(encoding="utf-8"))
        kept = {key: value for key, value in verdicts.items() if key.split("#")[0] in wanted}
        (destination / name / "verdicts.json").write_text(
            json.dumps(kept, sort_keys=True, indent=0) + "\n", encoding="utf-8"
        )
    return len(rows)


def weak_tests(tests: str) -> str:
    """HumanEval tests cut after ``check``'s first statement holding an assert (pure).

    What comes before it (imports, helpers, setup) stays, so the cut test still runs; a loop
    holding the first assert stays whole. This is the weak verifier of the soundness analysis
    (Inference Scaling fLaws): it passes every correct program and some wrong ones.
    """
    tree = ast.parse(tests)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            for position, statement in enumerate(node.body):
                if any(isinstance(inner, ast.Assert) for inner in ast.walk(statement)):
                    node.body = node.body[: position + 1]
                    return ast.unparse(tree) + "\n"
            raise DataError("check() holds no assert", field="tests")
    raise DataError("the tests define no check()", field="tests")
