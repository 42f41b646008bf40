"""What every built-in strategy shares: the common options and the bookkeeping of one run.

Strategies are thin: they draw through :class:`ProblemRun` (which keeps sample indices distinct,
sums usage and records the trace), call the pure selection and stopping functions, and build a
:class:`~ttscale.types.Result` with :meth:`ProblemRun.result`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ttscale.errors import BudgetExhausted, ConfigError
from ttscale.protocols import (
    Sampler,
    TokenWatcher,
    Verifier,
    as_sampler,
    as_verifier,
    checked_scores,
)
from ttscale.registry import resolve_config
from ttscale.strategies.extract import AnswerEquivalence, Extractor, get_extractor
from ttscale.strategies.sampling import PolicySpec, SamplingPolicy, as_policy, draw
from ttscale.strategies.selection import group_answers
from ttscale.types import Candidate, Problem, Result, SampleBatch, Score, TraceEvent, Usage

__all__ = ["ProblemRun", "StrategyConfig", "resolve_config"]

log = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound="StrategyConfig")


@dataclass(frozen=True)
class StrategyConfig:
    """Options every built-in strategy takes.

    ``samples`` is the sample budget: N for the fixed-N strategies, the most that may be drawn for
    the adaptive ones. ``k`` is how many candidates to select (k > 1 for pass@k). ``params`` is a
    :class:`SamplingParams` or a sampling policy (see :mod:`ttscale.strategies.sampling`).
    ``extractor`` names an extractor (see :mod:`ttscale.strategies.extract`) or is a function
    ``text -> answer | None``. ``equivalence`` (an object with ``equivalent(a, b)``) merges answer
    groups it finds equal; without it, the strategies that take a verifier (majority,
    best-of-majority) use the verifier's own ``equivalent`` when it has one (the math verifier
    does).
    """

    samples: int = 16
    k: int = 1
    params: PolicySpec = None
    extractor: str | Extractor = "auto"
    equivalence: AnswerEquivalence | None = None

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ConfigError(f"samples must be an integer >= 1, got {self.samples!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {self.k!r}")
        try:
            as_policy(self.params)
        except ConfigError as exc:
            raise ConfigError(f"params: {exc}") from exc
        get_extractor(self.extractor)  # raises ConfigError naming the field
        if self.equivalence is not None and not isinstance(self.equivalence, AnswerEquivalence):
            raise ConfigError(
                f"equivalence must have an equivalent(a, b) method, got {self.equivalence!r}"
            )

    @property
    def policy(self) -> SamplingPolicy:
        return as_policy(self.params)

    @property
    def extract(self) -> Extractor:
        return get_extractor(self.extractor)


class ProblemRun:
    """The mutable state of one strategy run on one problem; never shared between runs."""

    def __init__(
        self, problem: Problem, sampler: Sampler, config: StrategyConfig, strategy: str
    ) -> None:
        self.problem = problem
        # Plain functions are accepted wherever a protocol is.
        self.sampler = as_sampler(sampler)
        self.strategy = strategy
        self.policy = config.policy
        self.extract = config.extract
        self.candidates: list[Candidate] = []
        self.answers: list[str | None] = []
        self.usages: list[Usage] = []
        self.trace: list[TraceEvent] = []
        self.next_index = 0
        self.budget_stop: str | None = None

    @property
    def indices(self) -> list[int]:
        return [candidate.index for candidate in self.candidates]

    def event(self, step: str, **data: Any) -> None:
        self.trace.append(TraceEvent(step, data))
        log.debug("%s %s: %s %s", self.strategy, self.problem.id, step, data)

    @property
    def can_draw(self) -> bool:
        """False once a budget has refused a draw: the run then selects from what it has."""
        return self.budget_stop is None

    async def draw(
        self, count: int, watcher: Callable[[int], TokenWatcher] | None = None
    ) -> list[Candidate]:
        """Draw the next ``count`` samples; returns the new candidates in index order.

        With ``watcher`` the samples are streamed and each is stopped where its watcher says
        (the sampler must be able to: :func:`~ttscale.protocols.can_watch`).

        A budget that refuses the draw after some samples were drawn ends the drawing, not the
        run: the samples already paid for are kept and :attr:`can_draw` turns false. A refusal
        before the first sample propagates, since there is nothing to select from.
        """
        start = self.next_index
        # Advance first: indices once asked for are never reused, even if a call failed.
        self.next_index += count
        try:
            batch: SampleBatch = await draw(
                self.sampler, self.problem.input, self.policy, start, count, watcher
            )
        except BudgetExhausted as exc:
            if not self.candidates:
                raise
            self.budget_stop = str(exc)
            self.event("budget_exhausted", start_index=start, reason=str(exc))
            return []
        self.usages.append(batch.usage)
        new = sorted(batch.candidates, key=lambda candidate: candidate.index)
        self.candidates.extend(new)
        self.answers.extend(self.extract(candidate.text) for candidate in new)
        self.event("draw", start_index=start, count=count, received=len(new))
        return new

    async def equivalence(
        self, configured: AnswerEquivalence | None, verifier: Verifier | None
    ) -> AnswerEquivalence | None:
        """What merges this run's answer groups: ``configured``, else the verifier's own.

        Every comparison grouping the answers needs is made here, off the event loop (a
        verifier's ``equivalent`` may block: the math verifier waits on a worker process), and
        remembered, so that the grouping that follows asks nothing more. A verifier whose
        comparison fails costs the merging, not the run: the samples are paid for and an unmerged
        vote is still a vote. A configured equivalence that fails raises, as it was asked for.
        """
        chosen = configured
        if chosen is None and isinstance(verifier, AnswerEquivalence):
            chosen = verifier
        if chosen is None:
            return None
        remembered = _RememberedEquivalence(chosen)
        grouping = functools.partial(group_answers, self.answers, equivalence=remembered)
        try:
            await asyncio.get_running_loop().run_in_executor(_comparison_thread(), grouping)
        except Exception as exc:
            if configured is not None:
                raise
            log.warning(
                "%s %s: the verifier could not compare answers (%s); votes are not merged",
                self.strategy,
                self.problem.id,
                exc,
            )
            self.event("equivalence_failed", error=str(exc))
            return None
        return remembered

    async def score(self, verifier: Verifier) -> list[Score]:
        scores = checked_scores(
            await as_verifier(verifier).score(self.problem, self.candidates),
            self.candidates,
            "verifier",
        )
        self.event("score", count=len(scores))
        return scores

    def result(
        self, selected: Sequence[int], scores: Sequence[Score] | None = None, **summary: Any
    ) -> Result:
        """The result selecting the candidates at positions ``selected`` (best first)."""
        chosen = tuple(self.candidates[p] for p in selected)
        answers = tuple(self.answers[p] for p in selected)
        self.event(
            "select",
            indices=[c.index for c in chosen],
            answers=list(answers),
            samples=len(self.candidates),
            **summary,
        )
        return Result(
            problem_id=self.problem.id,
            selected=chosen,
            candidates=tuple(self.candidates),
            usage=Usage.total(self.usages),
            answers=answers,
            scores=tuple(scores) if scores is not None else (),
            trace=tuple(self.trace),
        )


class _RememberedEquivalence:
    """An equivalence that asks each unordered pair of answers once (equivalence is symmetric)."""

    def __init__(self, inner: AnswerEquivalence) -> None:
        self.inner = inner
        self.known: dict[tuple[str, str], bool] = {}

    def equivalent(self, a: str, b: str) -> bool:
        pair = (a, b) if a <= b else (b, a)
        known = self.known.get(pair)
        if known is None:
            known = self.known[pair] = bool(self.inner.equivalent(a, b))
        return known


_comparisons: concurrent.futures.ThreadPoolExecutor | None = None
_comparisons_lock = threading.Lock()


def _comparison_thread() -> concurrent.futures.ThreadPoolExecutor:
    """One thread for every run's answer comparisons.

    Its own thread, not the loop's default pool, so that runs waiting on slow comparisons never
    hold up the loop's other thread work (DNS lookups); one, so that comparisons never race each
    other inside a verifier that was not written for threads (the math verifier starts its worker
    pool on first use).
    """
    global _comparisons
    with _comparisons_lock:
        if _comparisons is None:
            _comparisons = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="ttscale-equivalence"
            )
        return _comparisons


def score_values(scores: Sequence[Score]) -> list[float]:
    """The scores as floats for selection; a missing score (None) is NaN, which ranks last."""
    return [score.number for score in scores]


def votes_summary(counts: Mapping[str, int]) -> dict[str, int]:
    """Votes per answer, most first, for a trace."""
    return dict(sorted(counts.items(), key=lambda item: -item[1]))
