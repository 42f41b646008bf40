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
order, each with its token logprobs as arrays. It checks the set whole and refuses a corrupt or
inconsistent one with a :class:`~ttscale.errors.DataError` naming the file (and line, field and
sample where known): parts against ``manifest.json`` (beside the sets: per set the ``parts``,
``samples`` and ``completion_tokens`` packed), each part's lines against its arrays, and every
sample against ``verdicts.json``. Only a set with no part at all is :class:`NoPackedParts`.
:meth:`BankSample.candidate` turns a sample back into a :class:`~ttscale.types.Candidate` with
its logprobs, for the confidence measures and verifiers. :func:`write_part` writes a part in the
bank's format (and counts it in the manifest) and :func:`slice_bank_set` copies some problems of
a set, byte for byte in content, into another folder (the tests' slice).
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import math
import zipfile
import zlib
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
    "NoPackedParts",
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


class NoPackedParts(DataError):
    """The set has no packed part at all (nothing drawn yet): the one refusal meaning "no data".

    Every other :class:`DataError` of :func:`load_bank_set` is a corrupt or inconsistent bank.
    """


MANIFEST = "manifest.json"
VERDICTS_HINT = "run `python benchmarks/bank/verdicts.py` to judge the packed parts"
# The jsonl line of a sample: each field's check and what it must be.
_FIELDS: dict[str, tuple[str, Any]] = {
    "problem": ("a non-empty string", lambda v: isinstance(v, str) and bool(v)),
    "index": ("an integer >= 0", lambda v: type(v) is int and v >= 0),
    "text": ("a string", lambda v: isinstance(v, str)),
    "answer": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "completion_tokens": ("an integer >= 0", lambda v: type(v) is int and v >= 0),
}
_ARRAYS = ("chosen", "top", "token_chars", "offsets")


@dataclass(frozen=True)
class _Part:
    """One packed part as stored, checked: its rows and its arrays (run i is sample i's)."""

    path: Path
    rows: list[dict[str, Any]]
    arrays: dict[str, np.ndarray]

    def run(self, position: int) -> slice:
        offsets = self.arrays["offsets"]
        return slice(int(offsets[position]), int(offsets[position + 1]))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot be read: {exc}", path=str(path)) from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg}", path=str(path), line=exc.lineno) from exc


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The part's four arrays, their shapes and offsets checked (values are checked later)."""
    if not zipfile.is_zipfile(path):
        raise DataError("not an .npz archive (a zip of the bank's arrays)", path=str(path))
    try:
        stored = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"not a readable .npz archive: {exc}", path=str(path)) from exc
    if not isinstance(stored, np.lib.npyio.NpzFile):
        raise DataError("not an .npz archive (a zip of the bank's arrays)", path=str(path))
    arrays: dict[str, np.ndarray] = {}
    with stored:
        for name in _ARRAYS:
            # Each item access of an npz decompresses the whole array: read each once.
            try:
                arrays[name] = stored[name]
            except KeyError as exc:
                raise DataError("array missing", path=str(path), field=name) from exc
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise DataError(f"cannot be read: {exc}", path=str(path), field=name) from exc
    chosen, offsets = arrays["chosen"], arrays["offsets"]
    tokens = len(chosen) if chosen.ndim == 1 else -1
    wanted = {
        "chosen": (chosen.ndim == 1 and chosen.dtype.kind == "f", "float, one per token"),
        "top": (
            arrays["top"].ndim == 2
            and len(arrays["top"]) == tokens
            and arrays["top"].dtype.kind == "f",
            "float, one row per token of chosen",
        ),
        "token_chars": (
            arrays["token_chars"].shape == (tokens,) and arrays["token_chars"].dtype.kind in "iu",
            "integer, one per token of chosen",
        ),
        "offsets": (
            offsets.ndim == 1 and len(offsets) >= 1 and offsets.dtype.kind in "iu",
            "an integer vector",
        ),
    }
    for name, (fine, what) in wanted.items():
        if not fine:
            shape = f"{arrays[name].dtype} {arrays[name].shape}"
            raise DataError(
                f"must be {what} ({tokens} tokens), got {shape}", path=str(path), field=name
            )
    offsets = offsets.astype(np.int64)
    falls = np.flatnonzero(np.diff(offsets) < 0)
    fault = (
        f"start at {offsets[0]}"
        if offsets[0] != 0
        else f"fall at run {falls[0]} (from {offsets[falls[0]]} to {offsets[falls[0] + 1]})"
        if falls.size
        else f"end at {offsets[-1]}"
        if offsets[-1] != tokens
        else None
    )
    if fault is not None:
        raise DataError(
            f"must rise from 0 to the {tokens} tokens of chosen, but {fault}",
            path=str(path),
            field="offsets",
        )
    arrays["offsets"] = offsets
    return arrays


def _check_row(text: str, path: Path, line: int) -> dict[str, Any]:
    if not text.strip():
        raise DataError("blank line (one JSON object per sample)", path=str(path), line=line)
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg}", path=str(path), line=line) from exc
    if not isinstance(row, dict):
        raise DataError(f"not a JSON object: {_short(row)}", path=str(path), line=line)
    for name, (what, fine) in _FIELDS.items():
        if name not in row:
            raise DataError("missing", path=str(path), line=line, field=name)
        if not fine(row[name]):
            raise DataError(
                f"must be {what}, got {_short(row[name])}", path=str(path), line=line, field=name
            )
    reason = row.get("finish_reason")
    if reason is not None and not isinstance(reason, str):
        raise DataError(
            f"must be a string or null, got {_short(reason)}",
            path=str(path),
            line=line,
            field="finish_reason",
        )
    return row


def _read_rows(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line, text in enumerate(handle, start=1):
                rows.append(_check_row(text, path, line))
    except (EOFError, OSError, UnicodeDecodeError, zlib.error) as exc:
        raise DataError(
            f"the gzip stream breaks off or is corrupt after {len(rows)} whole lines: {exc}",
            path=str(path),
            line=len(rows) + 1,
        ) from exc
    return rows


def _read_part(text_path: Path) -> _Part:
    """A part's rows and arrays, each checked and checked against the other."""
    array_path = text_path.with_name(text_path.name.removesuffix(".jsonl.gz") + ".npz")
    arrays = _read_arrays(array_path)
    rows = _read_rows(text_path)
    offsets = arrays["offsets"]
    if len(rows) != len(offsets) - 1:
        raise DataError(
            f"{len(rows)} samples in {text_path.name} but {len(offsets) - 1} logprob runs",
            path=str(array_path),
            field="offsets",
        )
    part = _Part(text_path, rows, arrays)
    # generate.py stores each sample's completion_tokens as the server reported it and its run
    # from the same response's token logprobs; on the bank as drawn (llama.cpp; checked on all
    # 2176 samples of humaneval parts 000-002 and gsm8k 000-013) the two agree for every
    # sample, so a difference means the rows and the runs were paired wrongly.
    lengths = np.diff(offsets)
    for position, row in enumerate(rows):
        if row["completion_tokens"] != lengths[position]:
            raise DataError(
                f"sample {row['problem']}#{row['index']}: completion_tokens "
                f"{row['completion_tokens']} but its logprob run in {array_path.name} holds "
                f"{lengths[position]} tokens",
                path=str(text_path),
                line=position + 1,
                field="completion_tokens",
            )
    # nan in top is a slot the server left empty (BankSample.candidate drops it); chosen is
    # the drawn token's own logprob, always a number; infinities are nowhere legitimate.
    for name, bad in (
        ("chosen", ~np.isfinite(arrays["chosen"])),
        ("top", np.isinf(arrays["top"]).any(axis=1)),
    ):
        if bad.any():
            token = int(np.argmax(bad))
            position = int(np.searchsorted(offsets, token, side="right")) - 1
            row = rows[position]
            raise DataError(
                f"sample {row['problem']}#{row['index']} (line {position + 1} of "
                f"{text_path.name}): token {token - int(offsets[position])} has logprob "
                f"{_short(arrays[name][token].tolist())}, not a finite number",
                path=str(array_path),
                field=name,
            )
    return part


def _manifest_counts(root: Path, name: str) -> dict[str, int] | None:
    """The manifest's counts for set ``name``; None when the manifest does not count it."""
    path = root / MANIFEST
    if not path.exists():
        return None
    sets = _read_json(path)
    sets = sets.get("sets") if isinstance(sets, dict) else None
    if not isinstance(sets, dict):
        raise DataError("no object of the sets' counts", path=str(path), field="sets")
    entry = sets.get(name)
    if entry is None:
        return None
    counts = {}
    for key in ("parts", "samples", "completion_tokens"):
        value = entry.get(key) if isinstance(entry, dict) else None
        if type(value) is not int or value < 0:
            raise DataError(
                f"must be an integer >= 0, got {_short(value)}",
                path=str(path),
                field=f"sets.{name}.{key}",
            )
        counts[key] = value
    return counts


def _read_set(name: str, root: Path | None) -> tuple[Path, list[_Part]]:
    """The set's parts, checked one by one and against the manifest; no two hold one sample."""
    root = DEFAULT_ROOT if root is None else root
    if not root.is_dir():
        raise DataError("the bank folder does not exist", path=str(root))
    folder = root / name
    texts = {p.name.removesuffix(".jsonl.gz") for p in folder.glob("part-*.jsonl.gz")}
    stored = {p.name.removesuffix(".npz") for p in folder.glob("part-*.npz")}
    counts = _manifest_counts(root, name)
    manifest = str(root / MANIFEST)
    if not texts | stored:
        if counts is not None and counts["parts"]:
            raise DataError(
                f"counts {counts['parts']} parts of {name!r} but {folder} holds none",
                path=manifest,
                field=f"sets.{name}.parts",
            )
        raise NoPackedParts(f"no packed parts of the bank set {name!r}", path=str(folder))
    unpaired = sorted(texts ^ stored)
    if unpaired:
        other = f"{unpaired[0]}.npz" if unpaired[0] in texts else f"{unpaired[0]}.jsonl.gz"
        raise DataError("missing: a part is its .jsonl.gz and its .npz", path=str(folder / other))
    if counts is None:
        raise DataError(
            f"counts no set {name!r} though {folder} holds packed parts"
            if (root / MANIFEST).exists()
            else f"missing, though {folder} holds packed parts (the parts are checked against it)",
            path=manifest,
            field=f"sets.{name}",
        )
    # generate.py packs a part, then rewrites the manifest's counts from the parts on disk
    # (its parts, samples = offset runs, completion_tokens = logprob tokens): a bank at rest,
    # drawing or not, agrees with it. The manifest counts parts, not numbers: a chunk that
    # failed is drawn again later, so honest numbering may skip one for a while.
    stems = sorted(texts)
    if len(stems) != counts["parts"]:
        raise DataError(
            f"counts {counts['parts']} parts of {name!r} but {folder} holds {len(stems)} "
            f"({', '.join(stems)}): a part is missing or was not packed by generate.py",
            path=manifest,
            field=f"sets.{name}.parts",
        )
    parts = [_read_part(folder / f"{stem}.jsonl.gz") for stem in stems]
    found = {
        "samples": sum(len(part.rows) for part in parts),
        "completion_tokens": sum(int(part.arrays["offsets"][-1]) for part in parts),
    }
    for key, value in found.items():
        if value != counts[key]:
            raise DataError(
                f"counts {counts[key]} {key} of {name!r} but the parts hold {value}",
                path=manifest,
                field=f"sets.{name}.{key}",
            )
    seen: dict[str, str] = {}
    for part in parts:
        for position, row in enumerate(part.rows):
            sample = f"{row['problem']}#{row['index']}"
            if sample in seen:
                raise DataError(
                    f"sample {sample} is stored twice (also in {seen[sample]})",
                    path=str(part.path),
                    line=position + 1,
                    field="index",
                )
            seen[sample] = part.path.name
    return folder, parts


def _read_verdicts(folder: Path) -> dict[str, dict[str, Any]]:
    """``verdicts.json`` of a set, every verdict a real boolean (``"false"`` is no verdict)."""
    path = folder / "verdicts.json"
    if not path.exists():
        raise DataError(f"no verdicts: {VERDICTS_HINT}", path=str(path))
    verdicts = _read_json(path)
    if not isinstance(verdicts, dict):
        raise DataError("not a JSON object of verdicts by '<problem>#<index>'", path=str(path))
    weak = set()
    for key, entry in verdicts.items():
        if not isinstance(entry, dict):
            raise DataError(f"not an object: {_short(entry)}", path=str(path), field=key)
        for name in ("full", "weak"):
            value = entry.get(name)
            if type(value) is not bool and (name == "full" or name in entry):
                raise DataError(
                    f"a verdict is true or false, got {_short(value)}",
                    path=str(path),
                    field=f"{key}.{name}",
                )
        weak.add("weak" in entry)
    if len(weak) > 1:
        raise DataError("some verdicts have a weak verdict and some not", path=str(path))
    return verdicts


def load_bank_set(name: str, root: Path | None = None, *, verdicts: bool = True) -> BankSet:
    """Every packed part of set ``name`` under ``root`` (default: the repository's bank).

    The bank is checked whole: a corrupt or inconsistent part, manifest or ``verdicts.json`` is
    a :class:`DataError` naming the file (and line, field and sample where known); a set with
    no packed part at all is :class:`NoPackedParts`. Every sample must have its verdicts unless
    ``verdicts`` is false (``verdicts.py``, which makes them): then none are read.
    """
    folder, parts = _read_set(name, root)
    judged: dict[str, dict[str, Any]] = _read_verdicts(folder) if verdicts else {}
    by_problem: dict[str, list[BankSample]] = {}
    for part in parts:
        unjudged = []
        for position, row in enumerate(part.rows):
            key = f"{row['problem']}#{row['index']}"
            found = judged.pop(key, None)
            if verdicts and found is None:
                unjudged.append(key)
                continue
            run = part.run(position)
            by_problem.setdefault(row["problem"], []).append(
                BankSample(
                    problem=row["problem"],
                    index=row["index"],
                    text=row["text"],
                    answer=row["answer"],
                    completion_tokens=row["completion_tokens"],
                    finish_reason=row.get("finish_reason"),
                    chosen=part.arrays["chosen"][run],
                    top=part.arrays["top"][run],
                    correct=None if found is None else found["full"],
                    correct_weak=None if found is None else found.get("weak"),
                )
            )
        if unjudged:
            raise DataError(
                f"{len(unjudged)} of the {len(part.rows)} samples of {part.path.name} have no "
                f"verdict (first {unjudged[0]}): verdicts.json is older than the parts; "
                f"{VERDICTS_HINT}",
                path=str(folder / "verdicts.json"),
                field=unjudged[0],
            )
    if judged:
        raise DataError(
            f"{len(judged)} verdicts for samples no part holds (first {next(iter(judged))})",
            path=str(folder / "verdicts.json"),
            field=next(iter(judged)),
        )
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
    token_chars [T])`` arrays, stored as float16, float16 and uint16 with the offsets. The
    set's counts in ``folder.parent / "manifest.json"`` are then set from its parts on disk.
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
    _count_in_manifest(folder)
    return text_path


def _count_in_manifest(folder: Path) -> None:
    """Set the counts of the set in ``folder`` in the bank's manifest (beside the sets) from its
    parts on disk, as ``benchmarks/bank/generate.py`` does after packing a part."""
    path = folder.parent / MANIFEST
    manifest = _read_json(path) if path.exists() else {"sets": {}}
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sets"), dict):
        raise DataError("no object of the sets' counts", path=str(path), field="sets")
    parts = sorted(folder.glob("part-*.npz"))
    samples = tokens = 0
    for part in parts:
        offsets = _read_arrays(part)["offsets"]
        samples += len(offsets) - 1
        tokens += int(offsets[-1])
    entry = manifest["sets"].setdefault(folder.name, {})
    entry.update(parts=len(parts), samples=samples, completion_tokens=tokens)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def slice_bank_set(
    name: str, problems: list[str], destination: Path, root: Path | None = None
) -> int:
    """Copy ``problems`` of set ``name`` (rows, arrays and verdicts) into ``destination/name``.

    The slice is one part in the bank's format, its rows in the order of the source parts, and
    ``destination/manifest.json`` counts it (the source manifest's model and settings are kept
    in a new one). The source set is read as :func:`load_bank_set` reads it: a corrupt bank, a
    problem the set does not hold or a copied sample without its verdicts is an error. Returns
    the number of samples copied.
    """
    folder, parts = _read_set(name, root)
    verdicts = _read_verdicts(folder)
    wanted = set(problems)
    rows: list[dict[str, Any]] = []
    runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for part in parts:
        for position, row in enumerate(part.rows):
            if row["problem"] in wanted:
                run = part.run(position)
                rows.append(row)
                arrays = part.arrays
                runs.append((arrays["chosen"][run], arrays["top"][run], arrays["token_chars"][run]))
    missing = wanted - {row["problem"] for row in rows}
    if missing:
        raise DataError(f"the bank set {name!r} holds no {sorted(missing)}", path=str(folder))
    keys = [f"{row['problem']}#{row['index']}" for row in rows]
    unjudged = [key for key in keys if key not in verdicts]
    if unjudged:
        raise DataError(
            f"{len(unjudged)} samples to copy have no verdict (first {unjudged[0]}); "
            f"{VERDICTS_HINT}",
            path=str(folder / "verdicts.json"),
            field=unjudged[0],
        )
    manifest = destination / MANIFEST
    if not manifest.exists():
        source = _read_json(folder.parent / MANIFEST)
        kept = {key: value for key, value in source.items() if key != "sets"}
        destination.mkdir(parents=True, exist_ok=True)
        manifest.write_text(
            json.dumps({**kept, "sets": {}}, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    write_part(destination / name, 0, rows, runs)
    (destination / name / "verdicts.json").write_text(
        json.dumps({key: verdicts[key] for key in keys}, sort_keys=True, indent=0) + "\n",
        encoding="utf-8",
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
