"""What a run spends, and the one place where its limits are enforced.

:class:`BudgetTracker` counts requests, samples, prompt and completion tokens, cost, wall time and
estimated FLOPs, per problem and per run; everything it reports is JSON-serialisable.

:class:`BudgetedSampler` wraps any :class:`~ttscale.protocols.Sampler` and is the choke point for
limits. Limits are stop conditions that compose like tenacity's (``max_samples(64) |
max_cost(1.0)`` stops at either, ``&`` at both), and a plain function of a :class:`Spend` is
accepted as a condition. One condition applies to the whole run, another to each problem::

    budget = BudgetedSampler(sampler, limit=max_cost(5.0), per_problem=max_samples(64))
    result = await strategy.run(problem, budget.for_problem(problem.id))

How a limit ends a draw (the same every time):

- Before a draw is sent, the run's and the problem's conditions are checked. If either is met the
  draw raises :class:`BudgetLimitReached` (a :class:`~ttscale.errors.BudgetExhausted`) carrying
  what was spent; nothing is sent.
- A draw that would take more samples than a sample limit leaves is trimmed to what remains, so it
  returns fewer candidates than asked for; when nothing remains it raises as above. Samples of
  draws in flight are reserved at once, so concurrent draws never overshoot a sample limit.
- Tokens, cost and time are only known once a draw returns, so a draw already in flight when such a
  limit is crossed completes and is counted in full: those limits may be overshot by the draws in
  flight, never by a draw sent after.
- A draw that fails with a :class:`~ttscale.errors.SamplerError` has the samples of its ``partial``
  batch counted before the error is re-raised; so does a draw cancelled itself (the loop
  stopping) whose ``CancelledError`` carries a ``partial`` batch (OpenAISampler's does).
- A draw whose caller is cancelled is not: its requests are out, and the server bills them
  whether or not anyone reads the answers. The caller gets its ``CancelledError`` at once, the
  draw runs on and is counted when it ends, and its samples stay reserved until then, so the
  tracker never counts less than the server delivered. :meth:`BudgetedSampler.drain` waits for
  such draws (before reading final totals, or closing the sampler under them).

A sampler that streams samples and stops them early (``sample_watched``, see
:func:`~ttscale.protocols.can_watch`) is offered the same way through the budget: such a draw is
checked, reserved and counted like any other, with the tokens that arrived before each stream
was closed.

A server's caps (:class:`DrawCaps`: total samples, and ``max_tokens`` of every sample) are
enforced here too, on every draw whatever the strategy asked for: a draw's ``max_tokens`` above
the cap (or unset) is sent as the cap, and samples beyond the cap are trimmed or refused like a
sample limit's. No strategy can get past them, as every draw goes through this choke point.

Budget mappings (``{"samples": 64, "tokens": 20000}``) are read in one place,
:func:`~ttscale.budget_mappings.parse_limits` (re-exported here, with the rest of
:mod:`ttscale.budget_mappings`); :func:`budget_condition` makes them a condition.

All bookkeeping happens between awaits on one event loop, so many problems may draw at once through
one budget without locks. The budget is not thread-safe.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from ttscale.budget_mappings import (
    LIMIT_NAMES,
    WHOLE_LIMITS,
    limits_left,
    most_parts,
    parse_budget,
    parse_limits,
    split_limits,
)
from ttscale.errors import BudgetExhausted, ConfigError, SamplerError
from ttscale.protocols import (
    Sampler,
    TokenWatcher,
    WrappedSampler,
    can_watch,
    draw_from,
    with_model,
)
from ttscale.spend import (
    Account,
    DrawCaps,
    FlopsModel,
    FlopsTable,
    PricingTable,
    Spend,
    by_model,
)
from ttscale.types import Pricing, Prompt, SampleBatch, SamplingParams, Usage

__all__ = [
    "BUDGET_LIMITS",
    "WHOLE_LIMITS",
    "BudgetLimitReached",
    "BudgetTracker",
    "BudgetedSampler",
    "Condition",
    "DrawCaps",
    "FlopsModel",
    "ProblemSampler",
    "Spend",
    "StopCondition",
    "budget_condition",
    "limits_left",
    "max_completion_tokens",
    "max_cost",
    "max_flops",
    "max_requests",
    "max_samples",
    "max_time",
    "max_tokens",
    "most_parts",
    "parse_budget",
    "parse_limits",
    "split_limits",
    "stop_when",
]

log = logging.getLogger(__name__)

Scope = Literal["run", "problem"]


class BudgetTracker:
    """Counts what draws spend, per problem (by id) and for the run.

    ``pricing`` is one :class:`Pricing` or a table by model name (``"*"`` is the default entry);
    without it the cost a sampler reported is kept. ``flops`` is one :class:`FlopsModel` or a table
    by model name; without it FLOPs stay 0. A batch's model is that of its first candidate.
    """

    def __init__(
        self,
        *,
        pricing: PricingTable | None = None,
        flops: FlopsTable | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pricing = pricing
        self.flops = flops
        self.clock = clock
        self._run = Account()
        self._problems: dict[str, Account] = {}
        self._warned_models: set[str] = set()

    # -- reading ---------------------------------------------------------------------------------

    @property
    def run(self) -> Spend:
        """The run's totals so far."""
        return self._run.snapshot(self.clock(), live=False)

    def problem(self, problem_id: str) -> Spend:
        """One problem's totals so far (zeros for a problem that has not drawn)."""
        account = self._problems.get(problem_id)
        return account.snapshot(self.clock(), live=False) if account else Spend()

    @property
    def problems(self) -> dict[str, Spend]:
        now = self.clock()
        return {key: account.snapshot(now, live=False) for key, account in self._problems.items()}

    def started_at(self, problem_id: str | None = None) -> float | None:
        """When the run's (or the problem's) first draw went out, on the tracker's clock."""
        account = self._run if problem_id is None else self._problems.get(problem_id)
        return account.started_at if account else None

    def live(self, problem_id: str | None = None) -> Spend:
        """What limits see: the scope's totals with its clock running to now."""
        account = self._run if problem_id is None else self._problems.get(problem_id)
        return account.snapshot(self.clock(), live=True) if account else Spend()

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run.to_dict(),
            "problems": {key: spend.to_dict() for key, spend in self.problems.items()},
        }

    # -- recording -------------------------------------------------------------------------------

    def start_draw(self, problem_id: str | None, samples: int) -> None:
        """Note a draw going out: start the clocks and reserve its samples against limits."""
        now = self.clock()
        for account in self._accounts(problem_id, create=True):
            if account.started_at is None:
                account.started_at = now
            account.in_flight += 1
            account.pending_samples += samples

    def finish_draw(
        self, problem_id: str | None, samples: int, batch: SampleBatch | None
    ) -> SampleBatch | None:
        """Release a draw's reservation and count what it delivered; returns the batch priced."""
        now = self.clock()
        priced = self._priced(batch) if batch is not None else None
        flops = self._flops(priced) if priced is not None else 0.0
        for account in self._accounts(problem_id, create=True):
            account.in_flight -= 1
            account.pending_samples -= samples
            account.finished_at = now
            account.draws += 1
            if priced is not None:
                account.add(priced.usage, flops)
        return priced

    def record(self, batch: SampleBatch, problem_id: str | None = None) -> SampleBatch:
        """Count a batch drawn outside any budgeted sampler; returns it priced."""
        self.start_draw(problem_id, 0)
        priced = self.finish_draw(problem_id, 0, batch)
        assert priced is not None  # a batch was given
        return priced

    def _accounts(self, problem_id: str | None, *, create: bool) -> list[Account]:
        if problem_id is None:
            return [self._run]
        account = self._problems.get(problem_id)
        if account is None and create:
            account = self._problems[problem_id] = Account()
        return [self._run] if account is None else [self._run, account]

    def _model(self, batch: SampleBatch) -> str:
        return batch.candidates[0].model if batch.candidates else ""

    def _priced(self, batch: SampleBatch) -> SampleBatch:
        if self.pricing is None:
            return batch
        model = self._model(batch)
        price = self.pricing if isinstance(self.pricing, Pricing) else by_model(self.pricing, model)
        if price is None:
            if model not in self._warned_models:
                self._warned_models.add(model)
                log.warning("no price for model %r; keeping the cost the sampler reported", model)
            return batch
        cost = price.cost(batch.usage.prompt_tokens, batch.usage.completion_tokens)
        return SampleBatch(batch.candidates, batch.usage.replace(cost=cost))

    def _flops(self, batch: SampleBatch) -> float:
        if self.flops is None:
            return 0.0
        table = self.flops
        model = table if isinstance(table, FlopsModel) else by_model(table, self._model(batch))
        return model.batch_flops(batch) if model is not None else 0.0


# -- stop conditions -------------------------------------------------------------------------------


class StopCondition:
    """A limit: called with a scope's :class:`Spend`, true once no further draw may go out.

    ``|`` stops when either condition does, ``&`` when both do; either side may be a plain
    function of a :class:`Spend`.
    """

    def __call__(self, spent: Spend) -> bool:
        raise NotImplementedError

    def remaining_samples(self, spent: Spend) -> int | None:
        """How many more samples may be drawn before this condition stops; None if it cannot say."""
        return None

    def __or__(self, other: Condition) -> StopCondition:
        return _AnyOf(_parts(_AnyOf, self, _as_condition(other)))

    def __ror__(self, other: Condition) -> StopCondition:
        return _AnyOf(_parts(_AnyOf, _as_condition(other), self))

    def __and__(self, other: Condition) -> StopCondition:
        return _AllOf(_parts(_AllOf, self, _as_condition(other)))

    def __rand__(self, other: Condition) -> StopCondition:
        return _AllOf(_parts(_AllOf, _as_condition(other), self))


Condition = StopCondition | Callable[[Spend], bool]


def _as_condition(condition: Condition) -> StopCondition:
    if isinstance(condition, StopCondition):
        return condition
    if callable(condition):
        return _FunctionCondition(condition)
    raise ConfigError(f"{condition!r} is neither a stop condition nor a function of a Spend")


def stop_when(function: Callable[[Spend], bool]) -> StopCondition:
    """Make a plain function of a :class:`Spend` a composable stop condition."""
    return _FunctionCondition(function)


@dataclass(frozen=True, repr=False)
class _FunctionCondition(StopCondition):
    function: Callable[[Spend], bool]

    def __call__(self, spent: Spend) -> bool:
        return bool(self.function(spent))

    def __repr__(self) -> str:
        return f"stop_when({getattr(self.function, '__name__', repr(self.function))})"


@dataclass(frozen=True, repr=False)
class _AnyOf(StopCondition):
    conditions: tuple[StopCondition, ...]

    def __call__(self, spent: Spend) -> bool:
        return any(condition(spent) for condition in self.conditions)

    def remaining_samples(self, spent: Spend) -> int | None:
        known = [r for c in self.conditions if (r := c.remaining_samples(spent)) is not None]
        return min(known) if known else None

    def __repr__(self) -> str:
        return " | ".join(_grouped(c) for c in self.conditions)


@dataclass(frozen=True, repr=False)
class _AllOf(StopCondition):
    conditions: tuple[StopCondition, ...]

    def __call__(self, spent: Spend) -> bool:
        return all(condition(spent) for condition in self.conditions)

    def remaining_samples(self, spent: Spend) -> int | None:
        # Drawing goes on until every part stops; a part that cannot bound samples leaves them
        # unbounded.
        remaining = [c.remaining_samples(spent) for c in self.conditions]
        if any(r is None for r in remaining):
            return None
        return max(r for r in remaining if r is not None)

    def __repr__(self) -> str:
        return " & ".join(_grouped(c) for c in self.conditions)


def _parts(kind: type, *conditions: StopCondition) -> tuple[StopCondition, ...]:
    parts: list[StopCondition] = []  # the operands, one of the same kind flattened into them
    for condition in conditions:
        same = isinstance(condition, _AnyOf | _AllOf) and type(condition) is kind
        parts.extend(condition.conditions if same else (condition,))  # type: ignore[attr-defined]
    return tuple(parts)


def _grouped(condition: StopCondition) -> str:
    return f"({condition!r})" if isinstance(condition, _AnyOf | _AllOf) else repr(condition)


@dataclass(frozen=True, repr=False)
class _AtLeast(StopCondition):
    """Stops once a quantity of the Spend reaches a limit."""

    name: str
    limit: float
    measure: Callable[[Spend], float] = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ConfigError(f"{self.name} limit must be >= 0, got {self.limit}")

    def __call__(self, spent: Spend) -> bool:
        return self.measure(spent) >= self.limit

    def __repr__(self) -> str:
        return f"{self.name}({self.limit:g})"


@dataclass(frozen=True, repr=False)
class _SampleLimit(_AtLeast):
    def remaining_samples(self, spent: Spend) -> int | None:
        return max(int(self.limit) - spent.samples - spent.pending_samples, 0)


def max_samples(limit: int) -> StopCondition:
    """Stop once ``limit`` samples are delivered or in flight; draws are trimmed to fit."""
    if int(limit) != limit:
        raise ConfigError(f"max_samples takes a whole number, got {limit}")
    return _SampleLimit("max_samples", int(limit), lambda s: s.samples + s.pending_samples)


def max_requests(limit: int) -> StopCondition:
    """Stop once ``limit`` requests have been answered (or failed)."""
    return _AtLeast("max_requests", limit, lambda s: s.requests + s.failed_requests)


def max_tokens(limit: int) -> StopCondition:
    """Stop once prompt plus completion tokens reach ``limit``."""
    return _AtLeast("max_tokens", limit, lambda s: s.total_tokens)


def max_completion_tokens(limit: int) -> StopCondition:
    """Stop once completion tokens reach ``limit``."""
    return _AtLeast("max_completion_tokens", limit, lambda s: s.completion_tokens)


def max_cost(dollars: float) -> StopCondition:
    """Stop once the cost reaches ``dollars`` (priced by the tracker's table, else the sampler)."""
    return _AtLeast("max_cost", dollars, lambda s: s.cost)


def max_time(seconds: float) -> StopCondition:
    """Stop once ``seconds`` have passed since the scope's first draw."""
    return _AtLeast("max_time", seconds, lambda s: s.wall_time_s)


def max_flops(flops: float) -> StopCondition:
    """Stop once estimated FLOPs reach ``flops`` (needs a :class:`FlopsModel`)."""
    return _AtLeast("max_flops", flops, lambda s: s.flops)


# -- budget mappings ---------------------------------------------------------------------------

BUDGET_LIMITS: Mapping[str, Callable[[Any], StopCondition]] = MappingProxyType(
    {
        "samples": max_samples,
        "requests": max_requests,
        "tokens": max_tokens,
        "completion_tokens": max_completion_tokens,
        "cost": max_cost,
        "seconds": max_time,
    }
)


assert tuple(BUDGET_LIMITS) == LIMIT_NAMES


def budget_condition(limits: Mapping[str, float]) -> StopCondition | None:
    """The stop condition a checked budget mapping means: any one of its limits stops."""
    condition: StopCondition | None = None
    for key, limit in limits.items():
        one = BUDGET_LIMITS[key](int(limit) if key in WHOLE_LIMITS else limit)
        condition = one if condition is None else condition | one
    return condition


# -- the choke point ---------------------------------------------------------------------------


class BudgetLimitReached(BudgetExhausted):
    """A limit stopped a draw before it was sent. Carries what the stopping scope had spent.

    ``scope`` is "run" or "problem"; ``spent`` is that scope's :class:`Spend` and ``run_spent``
    the run's, both as they stood when the draw was refused.
    """

    def __init__(
        self,
        *,
        scope: Scope,
        condition: StopCondition,
        spent: Spend,
        run_spent: Spend,
        problem_id: str | None,
    ) -> None:
        self.scope = scope
        self.condition = condition
        self.spent = spent
        self.run_spent = run_spent
        self.problem_id = problem_id
        where = "the run" if scope == "run" else f"problem {problem_id!r}"
        super().__init__(
            f"budget of {where} exhausted ({condition!r}): {spent.samples} samples, "
            f"{spent.total_tokens} tokens, ${spent.cost:.6g}, {spent.wall_time_s:.3g}s"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "condition": repr(self.condition),
            "problem_id": self.problem_id,
            "spent": self.spent.to_dict(),
            "run_spent": self.run_spent.to_dict(),
        }


class BudgetedSampler(WrappedSampler):
    """A :class:`Sampler` around another that counts every draw and enforces limits.

    ``limit`` applies to the whole run and ``per_problem`` to each problem's own draws; ``caps``
    are a server's caps on every draw (:class:`DrawCaps`); see the module docstring for how a
    limit ends a draw. Draw through :meth:`for_problem` so that draws
    are counted for their problem; drawing through this object directly counts toward the run only
    and applies only the run's limit.
    """

    def __init__(
        self,
        sampler: Sampler,
        *,
        limit: Condition | None = None,
        per_problem: Condition | None = None,
        pricing: PricingTable | None = None,
        flops: FlopsTable | None = None,
        tracker: BudgetTracker | None = None,
        clock: Callable[[], float] = time.monotonic,
        caps: DrawCaps | None = None,
    ) -> None:
        if tracker is not None and (pricing is not None or flops is not None):
            raise ConfigError("give pricing and flops to the tracker, or no tracker, not both")
        super().__init__(sampler)
        self.limit = _as_condition(limit) if limit is not None else None
        self.per_problem = _as_condition(per_problem) if per_problem is not None else None
        self.caps = caps if caps is not None else DrawCaps()
        self._cap = max_samples(self.caps.samples) if self.caps.samples is not None else None
        self.tracker = (
            tracker
            if tracker is not None
            else BudgetTracker(pricing=pricing, flops=flops, clock=clock)
        )
        self._views: dict[str, ProblemSampler] = {}
        # Draws whose callers were cancelled, still running; shared with with_model() twins.
        self._abandoned: set[asyncio.Future[SampleBatch]] = set()

    def for_problem(self, problem_id: str) -> ProblemSampler:
        """A Sampler drawing for ``problem_id``: its own limit, the run's totals shared."""
        if not isinstance(problem_id, str) or not problem_id:
            raise ConfigError("a problem id must be a non-empty string")
        view = self._views.get(problem_id)
        if view is None:
            view = self._views[problem_id] = ProblemSampler(self, problem_id)
        return view

    @property
    def spent(self) -> Spend:
        return self.tracker.run

    def with_model(self, model: str) -> BudgetedSampler:
        """The inner sampler asking ``model``, under the same limits and the same tracker."""
        twin = BudgetedSampler(
            with_model(self.sampler, model), tracker=self.tracker, caps=self.caps
        )
        twin.limit, twin.per_problem = self.limit, self.per_problem
        twin._abandoned = self._abandoned
        return twin

    def exhausted(self, problem_id: str | None = None) -> bool:
        """Whether a draw (for ``problem_id``, if given) would be refused now."""
        return self._refusal(problem_id) is not None

    def to_dict(self) -> dict[str, Any]:
        data = self.tracker.to_dict()
        data["limits"] = {
            "run": repr(self.limit) if self.limit is not None else None,
            "per_problem": repr(self.per_problem) if self.per_problem is not None else None,
        }
        if self.caps != DrawCaps():
            data["caps"] = self.caps.to_dict()
        return data

    async def forward(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None,
        *,
        start_index: int,
        watcher: Callable[[int], TokenWatcher] | None,
    ) -> SampleBatch:
        """A draw for the run only (:meth:`draw` with no problem), within the limits."""
        return await self.draw(None, prompt, n, params, start_index=start_index, watcher=watcher)

    def _scopes(self, problem_id: str | None) -> list[tuple[Scope, StopCondition, Spend]]:
        scopes: list[tuple[Scope, StopCondition, Spend]] = []
        if self._cap is not None:
            scopes.append(("run", self._cap, self.tracker.live(None)))
        if self.limit is not None:
            scopes.append(("run", self.limit, self.tracker.live(None)))
        if problem_id is not None and self.per_problem is not None:
            scopes.append(("problem", self.per_problem, self.tracker.live(problem_id)))
        return scopes

    def _refusal(self, problem_id: str | None, n: int = 1) -> BudgetLimitReached | None:
        for scope, condition, spent in self._scopes(problem_id):
            remaining = condition.remaining_samples(spent)
            if condition(spent) or (n > 0 and remaining == 0):
                return BudgetLimitReached(
                    scope=scope,
                    condition=condition,
                    spent=spent,
                    run_spent=self.tracker.live(None),
                    problem_id=problem_id,
                )
        return None

    def _allowed(self, problem_id: str | None, n: int) -> int:
        allowed = n
        for _, condition, spent in self._scopes(problem_id):
            remaining = condition.remaining_samples(spent)
            if remaining is not None:
                allowed = min(allowed, remaining)
        return allowed

    async def draw(
        self,
        problem_id: str | None,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
        watcher: Callable[[int], TokenWatcher] | None = None,
    ) -> SampleBatch:
        """Draw ``n`` samples for ``problem_id`` (None: the run only) within the limits.

        With ``watcher`` the inner sampler streams them and stops each where its watcher says.
        """
        if n < 0:
            raise ConfigError(f"n must be >= 0, got {n}")
        if watcher is not None and not can_watch(self.sampler):
            raise ConfigError(
                f"{type(self.sampler).__name__} cannot stream samples to stop them early"
            )
        # From here to start_draw nothing awaits, so the check and the reservation are atomic with
        # respect to other draws on the loop.
        refusal = self._refusal(problem_id, n)
        if refusal is not None:
            raise refusal
        if n == 0:
            return SampleBatch((), Usage())
        params = self.caps.params(params)
        allowed = self._allowed(problem_id, n)
        if allowed < n:
            log.info(
                "budget trims a draw%s from %d to %d samples",
                f" for {problem_id!r}" if problem_id else "",
                n,
                allowed,
            )
        self.tracker.start_draw(problem_id, allowed)
        arrived: list[SampleBatch] = []  # what the draw had received if it is itself cancelled
        inner = asyncio.ensure_future(
            self._sample(arrived, prompt, allowed, params, start_index=start_index, watcher=watcher)
        )
        try:
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            if not inner.done():
                # The caller gave up; the requests it sent did not, and the server bills them.
                # They finish in the background and are counted then (see drain()).
                self._abandoned.add(inner)
                inner.add_done_callback(
                    functools.partial(self._settle, problem_id, allowed, arrived)
                )
                raise
            self._count(problem_id, allowed, inner, arrived)
            raise
        except Exception:
            pass  # the draw failed: counted and raised below
        priced = self._count(problem_id, allowed, inner, arrived)
        if inner.cancelled():
            raise asyncio.CancelledError
        failure = inner.exception()
        if failure is not None:
            raise failure
        assert priced is not None  # a batch was delivered
        return priced

    async def _sample(
        self,
        arrived: list[SampleBatch],
        prompt: Prompt,
        n: int,
        params: SamplingParams | None,
        *,
        start_index: int,
        watcher: Callable[[int], TokenWatcher] | None = None,
    ) -> SampleBatch:
        try:
            return await draw_from(
                self.sampler, prompt, n, params, start_index=start_index, watcher=watcher
            )
        except asyncio.CancelledError as exc:
            # A cancelled future keeps no exception to read later: keep what the sampler said
            # had arrived before the cancellation, for _count.
            partial = getattr(exc, "partial", None)
            if isinstance(partial, SampleBatch):
                arrived.append(partial)
            raise

    async def drain(self) -> None:
        """Wait until the draws whose callers were cancelled have finished and been counted."""
        while self._abandoned:
            await asyncio.wait(set(self._abandoned))

    def _settle(
        self,
        problem_id: str | None,
        allowed: int,
        arrived: list[SampleBatch],
        inner: asyncio.Future[SampleBatch],
    ) -> None:
        self._abandoned.discard(inner)
        priced = self._count(problem_id, allowed, inner, arrived)
        if priced is not None:
            log.info(
                "a cancelled draw%s finished and was counted: %d samples, %d tokens",
                f" for {problem_id!r}" if problem_id else "",
                len(priced.candidates),
                priced.usage.total_tokens,
            )

    def _count(
        self,
        problem_id: str | None,
        allowed: int,
        inner: asyncio.Future[SampleBatch],
        arrived: list[SampleBatch],
    ) -> SampleBatch | None:
        """Release a finished draw's reservation and count what it delivered; the batch priced.

        A draw that failed with a :class:`SamplerError` delivered its ``partial`` batch, which is
        counted and put back on the error priced. One cancelled itself delivered what its
        cancellation carried (``arrived``), or nothing known.
        """
        delivered: SampleBatch | None = None
        failure = None if inner.cancelled() else inner.exception()
        if inner.cancelled():
            delivered = arrived[0] if arrived else None
        elif failure is None:
            delivered = inner.result()
        elif isinstance(failure, SamplerError) and isinstance(failure.partial, SampleBatch):
            delivered = failure.partial
        priced = self.tracker.finish_draw(problem_id, allowed, delivered)
        if isinstance(failure, SamplerError):
            failure.partial = priced
        return priced


@dataclass(frozen=True)
class ProblemSampler(WrappedSampler):
    """The per-problem view of a :class:`BudgetedSampler`; a Sampler itself."""

    budget: BudgetedSampler
    problem_id: str

    @property
    def spent(self) -> Spend:
        return self.budget.tracker.problem(self.problem_id)

    @property
    def exhausted(self) -> bool:
        return self.budget.exhausted(self.problem_id)

    def with_model(self, model: str) -> ProblemSampler:
        return ProblemSampler(self.budget.with_model(model), self.problem_id)

    @property
    def watches(self) -> bool:
        return self.budget.watches

    async def forward(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None,
        *,
        start_index: int,
        watcher: Callable[[int], TokenWatcher] | None,
    ) -> SampleBatch:
        """A draw for this problem (:meth:`BudgetedSampler.draw`)."""
        return await self.budget.draw(
            self.problem_id, prompt, n, params, start_index=start_index, watcher=watcher
        )
