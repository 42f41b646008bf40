"""``ttscale solve``: the runner that solves a dataset's problems, one JSONL record per problem.

Its parts live apart: the sample store that makes a killed run resumable is
:mod:`ttscale.store` (the journal ``<out>.samples.jsonl``) and :mod:`ttscale.cache`; records,
the run file and the resume checks are :mod:`ttscale.records`. This module holds the run's
settings (:class:`SolveConfig`) and the runner (:func:`solve`).

What it guarantees:

- Each problem's record is appended and flushed as soon as that problem is done (the file is
  fsynced at most every :data:`~ttscale.store.FSYNC_INTERVAL_S` seconds and at the end); the run
  file beside the output (``runs/arith.jsonl`` -> ``runs/arith.run.json``) holds versions, model
  and settings. A rerun with other settings (strategy, samples, temperature, model, ...) is
  refused rather than mixed into the same file.
- Every sample is journalled as its response arrives (per choice, not per draw call). A rerun
  with the same ``--out`` skips finished problems and replays journalled samples before drawing
  new ones, so a run killed with SIGKILL, mid-problem or not, resumes without paying twice:
  sample indices, and so the derived seeds, are the same on the rerun.
- A write that fails (disk full) stops the drawing; the run ends with one
  :class:`~ttscale.store.StoreWriteError` naming the file and what was kept.
- Memory does not grow with the dataset's results: problems are taken a few at a time, records
  are written and dropped, and the journal holds only the problems in progress.
- Correctness is judged by a grader chosen from the data (reference answers: ``exact_match``;
  tests: ``unit_tests``), separately from any verifier the strategy uses to select.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import math
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ttscale.budget import (
    BudgetedSampler,
    BudgetLimitReached,
    BudgetTracker,
    StopCondition,
    budget_condition,
    parse_budget,
    parse_limits,
)
from ttscale.cache import CachedSampler, SampleCache
from ttscale.datasets import load_dataset
from ttscale.errors import ConfigError, DataError
from ttscale.protocols import Sampler, Strategy, TokenWatcher, Verifier, WrappedSampler
from ttscale.records import (
    RESUME_SETTINGS,
    FinishedRun,
    ProblemRecord,
    RecordsView,
    ResultsFile,
    build_record,
    check_out,
    check_resume,
    exclusive_run,
    human_eval_completion,
    human_eval_lines,
    read_finished,
    record_params,
    run_file,
    scan_finished,
    write_run_json,
)
from ttscale.registry import create, load
from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
from ttscale.samplers.pool import PoolSampler
from ttscale.scaling import MeteredVerifier
from ttscale.store import JournalledSampler, SampleJournal, StoreWriteError
from ttscale.types import (
    Pricing,
    Problem,
    Prompt,
    Result,
    SampleBatch,
    SamplingParams,
    Usage,
)

__all__ = [
    "CODE_INSTRUCTION",
    "RESUME_SETTINGS",
    "InstructedSampler",
    "JournalledSampler",
    "ProblemRecord",
    "SampleJournal",
    "SolveConfig",
    "SolveSummary",
    "check_resume",
    "default_grader",
    "human_eval_completion",
    "human_eval_lines",
    "parse_budget",
    "parse_price",
    "read_finished",
    "record_params",
    "run_file",
    "solve",
]

log = logging.getLogger(__name__)

JournalKey = tuple[str, str, int]
"""A journal entry's problem, settings key and sample index (kept for imports of old)."""

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
        parse_limits(self.budget, "--budget")
        parse_limits(self.run_budget, "--run-budget")
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


# -- prices ---------------------------------------------------------------------------------------


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


class _RunWatch(WrappedSampler):
    """A problem's budgeted view that notes when the run's limit, not the problem's, refuses or
    trims one of its draws: such a problem is unfinished, not done with fewer samples."""

    def __init__(
        self, sampler: Sampler, limit: StopCondition | None, tracker: BudgetTracker, cut: _RunCut
    ) -> None:
        super().__init__(sampler)
        self.limit = limit
        self.tracker = tracker
        self.cut = cut

    async def forward(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None,
        *,
        start_index: int,
        watcher: Callable[[int], TokenWatcher] | None,
    ) -> SampleBatch:
        if self.limit is not None:
            # Nothing awaits between here and the budget's own check, so this sees what it sees.
            spent = self.tracker.live(None)
            remaining = self.limit.remaining_samples(spent)
            if self.limit(spent) or (remaining is not None and remaining < n):
                self.cut.reason = f"the run's budget ({self.limit!r}) is spent"
        try:
            return await super().forward(
                prompt, n, params, start_index=start_index, watcher=watcher
            )
        except BudgetLimitReached as exc:
            if exc.scope == "run":
                self.cut.reason = str(exc)
            raise


class InstructedSampler(WrappedSampler):
    """Wraps prompts in an instruction (e.g. HumanEval's function stubs for a chat model)."""

    def __init__(self, sampler: Sampler, template: str) -> None:
        super().__init__(sampler)
        self.template = template

    async def forward(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None,
        *,
        start_index: int,
        watcher: Callable[[int], TokenWatcher] | None,
    ) -> SampleBatch:
        wrapped = self.template.format(prompt=prompt) if isinstance(prompt, str) else prompt
        return await super().forward(wrapped, n, params, start_index=start_index, watcher=watcher)


# -- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolveSummary:
    """What a run did, for the summary table.

    ``records`` are every record of the results file, read from it when looked at
    (:class:`~ttscale.records.RecordsView`) rather than held.

    ``stopped`` says why the run's budget ended the run early, and ``unfinished`` how many
    problems it left without a record (their samples are journalled; a rerun with a larger
    ``run_budget`` replays them and goes on).
    """

    records: Sequence[dict[str, Any]]
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


def default_grader(problems: Sequence[Problem], config: SolveConfig) -> Verifier:
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
    # --allow-code-execution reaches every verifier that runs code, a composed one's members too.
    server = {"allow_code_execution": True} if config.allow_code_execution else {}
    try:
        factory = load("verifier", name)
    except ConfigError as exc:
        raise ConfigError(f"--verifier {name}: {exc}") from exc

    def build(sampler: Sampler | None) -> Verifier:
        try:
            return build_verifier(name, options, sampler=sampler, server_options=server)
        except ConfigError as exc:
            # The builder speaks of request fields; here they are flags.
            raise ConfigError(
                f"--verifier {name} with options {sorted(options)} (-V KEY=VALUE): {exc}"
            ) from exc

    if not _takes_sampler(factory):
        shared = build(None)
        return lambda _sampler: shared
    return build


@dataclass
class _Tally:
    """What the problems of this run did, counted as they finish (their records are not held)."""

    written: int = 0
    usage: Usage = field(default_factory=Usage)
    replayed: int = 0
    cut_short: int = 0
    first_cut: str | None = None

    def cut(self, reason: str) -> None:
        self.cut_short += 1
        self.first_cut = self.first_cut or reason


@dataclass
class _Run:
    """One run's shared parts: what every problem draws through, grades with and writes to."""

    config: SolveConfig
    model: str
    strategy: Strategy
    grader: Verifier
    extract: Callable[[str], str | None]
    is_code: bool
    build_verifier: Callable[[Sampler], Verifier] | None
    drawer: Sampler
    journal: SampleJournal
    tracker: BudgetTracker
    run_limit: StopCondition | None
    problem_limit: StopCondition | None
    results: ResultsFile
    on_problem: Callable[[dict[str, Any]], None] | None
    cache: SampleCache | None = None
    tally: _Tally = field(default_factory=_Tally)
    # Budgets whose draws may still be in flight, drained before the sampler and journal close.
    budgets: set[BudgetedSampler] = field(default_factory=set)

    def close(self) -> None:
        self.journal.close()
        self.results.close()
        if self.cache is not None:
            self.cache.close()


def _open_sampler(
    config: SolveConfig, base_url: str, model: str, pool: bool
) -> OpenAISampler | PoolSampler:
    urls = [url.strip() for url in base_url.split(",") if url.strip()]
    if len(urls) > 1 or pool:
        # Several servers of one model: a pool routes by outstanding requests, fails over.
        return PoolSampler(
            endpoints=urls,
            model=model,
            concurrency=config.concurrency,
            api_key=os.environ.get(config.api_key_env),
            api_key_env=None,
            params=SamplingParams(seed=config.seed),
            timeout=config.request_timeout_s,
        )
    return OpenAISampler(
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


@dataclass
class _Views:
    """A problem's views of the run's server (see :func:`_problem_views`)."""

    sampler: Sampler
    meter: MeteredVerifier | None
    journalled: list[JournalledSampler]
    budgets: list[BudgetedSampler]


def _problem_views(run: _Run, problem: Problem, cut: _RunCut) -> _Views:
    """A problem's views of the run's server: the strategy's draws and its verifier's calls,
    each journalled, under the run's and the problem's budgets."""
    views = [JournalledSampler(run.drawer, run.journal, problem.id)]
    # Replays sit under the budget: a resumed problem's journalled samples count against its
    # limits as they did when they were drawn.
    budget = BudgetedSampler(
        views[0], tracker=run.tracker, limit=run.run_limit, per_problem=run.problem_limit
    )
    budgets = [budget]
    draws: Sampler = _RunWatch(budget.for_problem(problem.id), run.run_limit, run.tracker, cut)
    inner = InstructedSampler(draws, CODE_INSTRUCTION) if run.is_code else draws
    if run.build_verifier is None:
        run.budgets.update(budgets)
        return _Views(inner, None, views, budgets)
    views.append(JournalledSampler(run.drawer, run.journal, problem.id, by_prompt=True))
    # A verifier's calls count toward the problem but only the run's limit refuses them:
    # scoring samples already paid for finishes the problem.
    asks = BudgetedSampler(views[1], tracker=run.tracker, limit=run.run_limit)
    budgets.append(asks)
    run.budgets.update(budgets)
    watched = _RunWatch(asks.for_problem(problem.id), run.run_limit, run.tracker, cut)
    return _Views(inner, MeteredVerifier(run.build_verifier(watched)), views, budgets)


async def _solve_one(run: _Run, problem: Problem) -> None:
    """Solve one problem and append its record; a problem the run's budget cut short is left
    unfinished (no record; what it drew stays journalled, for a rerun with a larger budget)."""
    started = time.perf_counter()
    cut = _RunCut()
    views = _problem_views(run, problem, cut)
    meter = views.meter
    result: Result | None = None
    try:
        result = await run.strategy.run(problem, views.sampler, meter)
    except BudgetLimitReached as exc:
        if exc.scope != "run":
            raise
        cut.reason = cut.reason or str(exc)
    except Exception:
        run.journal.check_writable()  # the store's failure, however a strategy wrapped it
        raise
    run.journal.check_writable()  # a strategy that swallowed the store's error still stops
    run.tally.replayed += sum(view.replayed for view in views.journalled)
    if result is None or cut.reason is not None:
        reason = cut.reason or "the run's budget is spent"
        log.info("problem %s left unfinished: %s", problem.id, reason)
        run.tally.cut(reason)
    else:
        grades = await run.grader.score(problem, result.candidates)
        record = build_record(
            problem,
            run.config,
            result,
            grades,
            run.extract,
            time.perf_counter() - started,
            model=run.model,
            verifier_usage=meter.usage if meter is not None else None,
        )
        run.results.write(problem, record)
        run.tally.written += 1
        run.tally.usage = run.tally.usage + Usage.from_dict(record["usage"])
        if run.on_problem is not None:
            run.on_problem(record)
    # The problem is done: its draws have returned, so its budgets and journal entries go.
    for budget in views.budgets:
        await budget.drain()
        run.budgets.discard(budget)
    run.journal.forget(problem.id)


async def _solve_all(run: _Run, todo: Iterator[Problem]) -> None:
    """Solve the problems with ``problem_concurrency`` workers taking them one at a time (not a
    task per problem: memory stays flat however long the dataset); the first error cancels the
    rest, and every draw still in flight is waited for (it is paid for and journalled)."""

    async def worker() -> None:
        for problem in todo:
            await _solve_one(run, problem)

    workers = [asyncio.create_task(worker()) for _ in range(run.config.problem_concurrency)]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for task in workers:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*workers, return_exceptions=True)
        raise
    finally:
        # Draws of cancelled problems still run, and the server bills them: wait until they are
        # counted and journalled (a rerun replays them) before the sampler and journal close.
        for budget in list(run.budgets):
            await budget.drain()


def _tracker(config: SolveConfig, spent_before: Usage) -> BudgetTracker:
    """The choke point every draw goes through, the strategy's and the verifier's: one tracker
    counts (and prices) the run and each problem, and the limits are checked there."""
    tracker = BudgetTracker(pricing=Pricing(*config.price) if config.price else None)
    if config.run_budget and spent_before != Usage():
        # The run's budget spans reruns: what the finished problems spent is already gone.
        tracker.record(SampleBatch((), spent_before.replace(wall_time_s=0.0)))
    return tracker


def _write_failed(exc: StoreWriteError, run: _Run, finished: FinishedRun) -> StoreWriteError:
    """The one message a failed write ends the run with: the file, and what was kept."""
    journal = run.journal
    kept = journal.loaded + journal.written
    lost = (
        f"; {journal.unwritten} that arrived after the failure could not be written (a rerun "
        "draws them again)"
        if journal.unwritten
        else ""
    )
    return StoreWriteError(
        f"{exc} - the run stopped. Kept: {kept} samples in {journal.path.name}{lost}, and "
        f"{len(finished) + run.tally.written} problems' records in {run.results.path.name}. "
        "Free some space, then rerun with the same --out to go on without paying again.",
        path=exc.path,
    )


async def solve(
    config: SolveConfig,
    *,
    base_url: str | None = None,
    model: str | None = None,
    on_problem: Callable[[dict[str, Any]], None] | None = None,
    only: Collection[str] | None = None,
    pool: bool = False,
    check_settings: bool = True,
    spent_before: Usage | None = None,
) -> SolveSummary:
    """Run ``config`` against the OpenAI-compatible server at ``base_url`` (or the config's).

    ``only`` restricts the run to the problems with those ids (the grader and extractor are still
    chosen from the whole dataset, so records do not depend on the restriction); ``pool`` draws
    through a :class:`PoolSampler` even from a single URL; ``check_settings`` False skips
    :func:`check_resume` (a shard's driver has checked); ``spent_before`` is what the run spent
    before this call, counted against ``config.run_budget`` (default: what the finished records
    of ``config.out`` spent; a shard's driver counts the whole run's). All four serve
    ``ttscale.distributed``.

    Budgets: every draw, the strategy's and the verifier's, goes through one
    :class:`~ttscale.budget.BudgetedSampler` tracker. ``config.budget`` trims or ends a problem's
    drawing (the strategy then selects from what it has); ``config.run_budget`` counts what the
    finished records already spent, and once it refuses or trims a draw the problem drawing is
    left unfinished (no record; its samples stay in the journal), so the run ends cleanly and a
    rerun with a larger budget goes on from there.
    """
    base_url = base_url or config.base_url
    model = model or config.model
    if base_url is None or model is None:
        raise ConfigError("solve needs a server: a base URL and a model name")
    problems = load_dataset(config.dataset, limit=config.limit)
    check_out(config.out, config.dataset)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_run(config.out):
        return await _solve_held(
            config, problems, base_url, model, on_problem, only, pool, check_settings, spent_before
        )


async def _solve_held(
    config: SolveConfig,
    problems: Sequence[Problem],
    base_url: str,
    model: str,
    on_problem: Callable[[dict[str, Any]], None] | None,
    only: Collection[str] | None,
    pool: bool,
    check_settings: bool,
    spent_before: Usage | None,
) -> SolveSummary:
    """:func:`solve` once the results file is this run's alone."""
    finished = scan_finished(config.out)
    if check_settings:
        check_resume(config.out, config, model, finished, problems)
    sampler = _open_sampler(config, base_url, model, pool)
    before = finished.usage if spent_before is None else spent_before
    run = _open_run(config, problems, model, sampler, before, finished, on_problem)
    write_run_json(config.out, config, model, base_url, problems)
    todo = (p for p in problems if p.id not in finished.ids and (only is None or p.id in only))
    started = time.perf_counter()
    try:
        async with sampler:
            await _solve_all(run, todo)
    except StoreWriteError as exc:
        raise _write_failed(exc, run, finished) from None
    finally:
        run.close()
    tally = run.tally
    if tally.cut_short:
        log.warning(
            "the run's budget is spent: %d problems left unfinished (%s)",
            tally.cut_short,
            tally.first_cut,
        )
    return SolveSummary(
        records=RecordsView(config.out, len(finished) + tally.written),
        skipped=len(finished),
        wall_time_s=time.perf_counter() - started,
        replayed_samples=tally.replayed,
        usage=tally.usage,
        model=model,
        out=config.out,
        stopped=tally.first_cut,
        unfinished=tally.cut_short,
    )


def _open_run(
    config: SolveConfig,
    problems: Sequence[Problem],
    model: str,
    sampler: OpenAISampler | PoolSampler,
    spent_before: Usage,
    finished: FinishedRun,
    on_problem: Callable[[dict[str, Any]], None] | None,
) -> _Run:
    """The run's shared parts; settings that fail (grader, strategy, verifier options) fail
    here, before anything is drawn or written."""
    from ttscale.strategies.extract import get_extractor  # the strategies package, installed

    is_code = all(p.tests is not None for p in problems)
    grader = default_grader(problems, config)
    strategy = _strategy(config, is_code)
    build_verifier = _verifier_builder(config)
    extract = get_extractor(
        "code" if is_code else str(config.strategy_options.get("extractor", "auto"))
    )
    if build_verifier is not None:
        build_verifier(sampler)  # a bad option fails here, before anything is drawn
    out = config.out
    # The cache spans runs (nothing is paid for twice); the journal resumes this one.
    cache = SampleCache(config.cache) if config.cache is not None else None
    return _Run(
        config=config,
        model=model,
        strategy=strategy,
        grader=grader,
        extract=extract,
        is_code=is_code,
        build_verifier=build_verifier,
        drawer=CachedSampler(sampler, cache, model=model) if cache is not None else sampler,
        journal=SampleJournal(out.with_name(out.name + ".samples.jsonl"), skip=finished.ids),
        tracker=_tracker(config, spent_before),
        run_limit=budget_condition(config.run_budget) if config.run_budget else None,
        problem_limit=budget_condition(config.budget) if config.budget else None,
        results=ResultsFile(out, config.output_format == "human-eval", problems),
        on_problem=on_problem,
        cache=cache,
    )
