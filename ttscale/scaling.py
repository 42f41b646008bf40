"""One OpenAI-style request, answered by a strategy: planning and running what the proxy and the
wrapped client share.

A request's settings are resolved by :mod:`ttscale.settings` (body, headers, preset, default),
its body read and its answer written by :mod:`ttscale.wire` (the OpenAI wire format), its
strategy and verifier built by :mod:`ttscale.registry`. Here :func:`plan_scaled` checks a request
and builds what answers it (nothing drawn, so a server can refuse before a stream starts) and
:func:`run_scaled` runs the plan within the request's budget, under the server's caps on every
draw (:class:`~ttscale.budget.DrawCaps`).

The names of those modules that callers used from here (``parse_request``, ``ScaleSettings``,
``to_response``, ...) are re-exported.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ttscale.budget import BUDGET_LIMITS, BudgetedSampler, Spend, budget_condition
from ttscale.errors import ConfigError, RequestError, SamplerError
from ttscale.protocols import (
    Sampler,
    Strategy,
    TokenWatcher,
    Verifier,
    WrappedSampler,
    draw_from,
    with_model,
)
from ttscale.registry import build_strategy, build_verifier
from ttscale.settings import (
    RequestLimits,
    ScaleSettings,
    greedy_warning,
    parse_settings,
    pin_sampling,
    resolve_plan,
    resolve_settings,
    settings_from_headers,
)
from ttscale.spend import DrawCaps
from ttscale.types import (
    Candidate,
    Problem,
    Prompt,
    Result,
    SampleBatch,
    SamplingParams,
    Score,
    Usage,
)
from ttscale.wire import (
    ChatRequest,
    ScaledAnswer,
    metadata,
    parse_request,
    stream_chunks,
    to_response,
)

__all__ = [
    "BUDGET_LIMITS",
    "ChatRequest",
    "MeteredVerifier",
    "RequestBudgetSampler",
    "RequestLimits",
    "ScaleSettings",
    "ScaledAnswer",
    "ScaledPlan",
    "UnfinishedDraws",
    "budget_condition",
    "build_strategy",
    "build_verifier",
    "metadata",
    "parse_request",
    "parse_settings",
    "plan_scaled",
    "resolve_settings",
    "run_scaled",
    "settings_from_headers",
    "stream_chunks",
    "to_response",
]

log = logging.getLogger(__name__)

VerifierFactory = Callable[[str, Mapping[str, Any], Sampler], Verifier]


class MeteredVerifier:
    """A verifier that adds up the usage its scores carry (see :attr:`Score.usage`).

    Made per request: its total is that request's verifier spend and nobody else's.
    """

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self.usage = Usage()
        self.calls = 0

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        scores = list(await self.verifier.score(problem, candidates))
        self.calls += 1
        spent = [score.usage for score in scores if score.usage is not None]
        if spent:
            self.usage = self.usage + Usage.total(spent)
        return scores


@dataclass(frozen=True)
class ScaledPlan:
    """A checked request with the strategy and verifier built for it alone, the caps every one of
    its draws meets and the warnings its answer carries (``ttscale.warnings``).

    ``request.params`` are the sampling settings every sample is drawn with: the request's own
    with the settings' pins over them (:func:`ttscale.settings.pin_sampling`).
    """

    request: ChatRequest
    settings: ScaleSettings
    strategy_name: str
    strategy: Strategy
    verifier: Verifier | None
    samples: int
    k: int
    caps: DrawCaps = field(default_factory=DrawCaps)
    warnings: tuple[str, ...] = ()


def plan_scaled(
    request: ChatRequest,
    settings: ScaleSettings,
    sampler: Sampler,
    *,
    limits: RequestLimits | None = None,
    default_strategy: str = "majority",
    verifier_factory: VerifierFactory | None = None,
    server_options: Mapping[str, Any] | None = None,
) -> ScaledPlan:
    """Check ``request`` and build what answers it; every problem is a :class:`ConfigError`
    naming the field.

    Nothing is drawn here, so a server can refuse a bad request before it starts a stream.
    ``server_options`` are the server's own settings for any verifier that has them
    (``allow_code_execution``); a request may not set them.
    """
    limits = limits or RequestLimits()
    samples, k = resolve_plan(settings, request.n, limits)
    name = settings.strategy or default_strategy
    request = dataclasses.replace(request, params=pin_sampling(request.params, settings.sampling))
    verifier = _plan_verifier(settings, sampler, verifier_factory, server_options)
    wanted = getattr(verifier, "wants_logprobs", None)
    drawn = request.params.logprobs
    if isinstance(wanted, int) and drawn is None:
        # A verifier reading the samples' logprobs has them drawn with them (the client gets
        # them back only if it asked).
        request = dataclasses.replace(request, params=request.params.replace(logprobs=wanted))
    elif isinstance(wanted, int) and wanted > 0 and drawn == 0:
        # The client's own ask would draw no alternatives, which the verifier reads: refused
        # before anything is drawn, not after.
        raise RequestError(
            f"verifier {settings.verifier!r} reads each token's top alternatives, and the request "
            "asks for none (top_logprobs 0; completions: logprobs 0); ask for at least 1, or "
            "leave logprobs out",
            param="top_logprobs" if request.chat else "logprobs",
        )
    strategy = build_strategy(name, samples, k, request.params, settings.options)
    greedy = greedy_warning(_drawn_with(strategy, request.params), samples, name)
    warnings = () if greedy is None else (greedy,)
    return ScaledPlan(
        request, settings, name, strategy, verifier, samples, k, limits.caps(), warnings
    )


def _plan_verifier(
    settings: ScaleSettings,
    sampler: Sampler,
    verifier_factory: VerifierFactory | None,
    server_options: Mapping[str, Any] | None,
) -> Verifier | None:
    """The request's verifier, checked before anything is drawn (None when it names none)."""
    if settings.verifier is None:
        return None
    # A verifier that asks a model (the judge) draws through the request's budget, which
    # exists only once run_scaled runs the plan: it gets a sampler that finds it then.
    asks = RequestBudgetSampler(sampler)
    if verifier_factory is not None:
        verifier = verifier_factory(settings.verifier, settings.verifier_options, asks)
    else:
        verifier = build_verifier(
            settings.verifier,
            settings.verifier_options,
            sampler=asks,
            server_options=server_options,
        )
    preflight = getattr(verifier, "preflight", None)
    if callable(preflight):
        preflight()  # a verifier that will refuse to score says so before anything is drawn
    if getattr(verifier, "needs_reference", False):
        raise ConfigError(
            f"verifier {settings.verifier!r} grades against what a dataset gives a problem (a "
            "reference answer, unit tests), and a request carries none; use one that needs "
            "none (judge, confidence, a reward model)",
            param="ttscale.verifier",
        )
    return verifier


def _drawn_with(strategy: Strategy, params: SamplingParams) -> SamplingParams:
    """The settings ``strategy`` draws with: a strategy that sets its own temperature (step
    search's 0.8) draws at that one, whatever the request said."""
    own = getattr(getattr(strategy, "config", None), "temperature", None)
    if isinstance(own, int | float) and not isinstance(own, bool):
        return params.replace(temperature=float(own))
    return params


# The budget of the request run_scaled is running in this context (tasks it starts inherit it).
_REQUEST_BUDGET: ContextVar[BudgetedSampler | None] = ContextVar(
    "ttscale_request_budget", default=None
)


class RequestBudgetSampler(WrappedSampler):
    """The sampler a request's verifier asks: the request's budget while :func:`run_scaled` runs.

    A plan is built before its budget (nothing may be drawn while a request is checked), and a
    plan may be rebuilt around the same verifier, so the verifier cannot be handed the budget
    itself. Through this sampler, the judge's calls meet the same limits as the samples and are
    counted in the same spend; outside a run there is no budget, and it asks ``sampler`` as is.
    Everything else passes through (:class:`~ttscale.protocols.WrappedSampler`).
    """

    def __init__(self, sampler: Sampler, model: str | None = None) -> None:
        super().__init__(sampler)
        self.model = model

    def _target(self) -> Sampler:
        budgeted = _REQUEST_BUDGET.get()
        target: Sampler = budgeted if budgeted is not None else self.sampler
        return target if self.model is None else with_model(target, self.model)

    async def forward(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None,
        *,
        start_index: int,
        watcher: Callable[[int], TokenWatcher] | None,
    ) -> SampleBatch:
        """A draw through the request's budget if one is running, else through ``sampler``."""
        return await draw_from(
            self._target(), prompt, n, params, start_index=start_index, watcher=watcher
        )

    def with_model(self, model: str) -> RequestBudgetSampler:
        """Asking ``model`` through whichever budget runs then: the model is switched at each
        draw, on the budget (its twin shares the request's limits and spend)."""
        with_model(self.sampler, model)  # fails now, not at the first draw, if it cannot
        return RequestBudgetSampler(self.sampler, model)


class UnfinishedDraws:
    """The budgets of requests that ended without an answer, until their draws are counted.

    A request cancelled part way (its client hung up, the server is stopping) or failed may leave
    draws at the upstream, which bills them whether or not anyone reads the answers; its budget
    counts them when they end (:meth:`BudgetedSampler.drain`). :func:`run_scaled` hands such a
    request's budget here; once its draws have ended, ``on_spent`` gets everything the request
    spent. A server or client keeps one of these and awaits :meth:`drain` before closing the
    sampler under those draws or reading its totals.
    """

    def __init__(self, on_spent: Callable[[Spend], None] | None = None) -> None:
        self.on_spent = on_spent
        self._settling: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._settling)

    def add(self, budget: BudgetedSampler) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(budget))
        self._settling.add(task)  # a strong reference: the loop keeps only weak ones
        task.add_done_callback(self._settling.discard)

    async def _settle(self, budget: BudgetedSampler) -> None:
        await budget.drain()
        if self.on_spent is not None:
            self.on_spent(budget.spent)

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every handed-over request's draws have been counted; False on timeout."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while self._settling:
            left = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if left is not None and left <= 0:
                return False
            await asyncio.wait(set(self._settling), timeout=left)
        return True


async def run_scaled(
    plan: ScaledPlan, sampler: Sampler, *, unfinished: UnfinishedDraws | None = None
) -> ScaledAnswer:
    """Run ``plan``, drawing through ``sampler`` within the request's budget.

    Everything made here (the verifier meter, the budget) belongs to this call alone, so
    concurrent requests share only the sampler: its connection pool and its bounds. A run that
    ends without an answer (cancelled, failed) hands its budget to ``unfinished``, which counts
    the draws it left in flight when they end.
    """
    settings = plan.settings
    meter = MeteredVerifier(plan.verifier) if plan.verifier is not None else None
    budgeted = BudgetedSampler(sampler, limit=budget_condition(settings.budget), caps=plan.caps)
    answer_id = uuid.uuid4().hex
    prompt = plan.request.prompt
    problem = Problem(
        id=answer_id,
        prompt=prompt if isinstance(prompt, str) else None,
        messages=None if isinstance(prompt, str) else prompt,
    )
    for warning in plan.warnings:
        log.warning("request %s: %s", answer_id, warning)
    started = time.perf_counter()
    token = _REQUEST_BUDGET.set(budgeted)
    try:
        result = await plan.strategy.run(problem, budgeted, meter)
        # Draws the strategy itself gave up on are paid for too: the totals wait for them.
        await budgeted.drain()
    except BaseException as exc:
        if unfinished is not None:
            unfinished.add(budgeted)
        if isinstance(exc, ConfigError):
            # A strategy that cannot work with what it was given (best_of_n without a verifier).
            raise ConfigError(
                f"strategy {plan.strategy_name!r}: {exc}", param=exc.param or "ttscale"
            ) from exc
        raise
    finally:
        _REQUEST_BUDGET.reset(token)
    budget = budgeted.to_dict()
    result, short = fill_choices(result, plan.k)
    warnings = plan.warnings if short is None else (*plan.warnings, short)
    if short is not None:
        log.warning("request %s: %s", answer_id, short)
    return ScaledAnswer(
        request=plan.request,
        settings=settings,
        strategy=plan.strategy_name,
        samples=plan.samples,
        k=plan.k,
        result=result,
        verifier_usage=meter.usage if meter is not None else Usage(),
        budget=budget,
        wall_time_s=time.perf_counter() - started,
        id=answer_id,
        warnings=warnings,
    )


def fill_choices(result: Result, k: int) -> tuple[Result, str | None]:
    """``result`` with ``k`` selected candidates, and a warning when the strategy chose fewer
    (pure). A client asking ``n`` reads ``n`` choices: the strategy's picks first, then the
    samples it did not pick, in the order drawn (no answer was extracted from a sample cut at
    ``max_tokens``; fewer distinct answers than ``n``). With no sample at all there is nothing to
    answer with: a SamplerError."""
    if len(result.selected) >= k:
        return result, None
    if not result.candidates:
        raise SamplerError("no sample came back to answer with")
    chosen = {candidate.index for candidate in result.selected}
    rest = [c for c in result.candidates if c.index not in chosen][: k - len(result.selected)]
    picked = len(result.selected)
    selected = (*result.selected, *rest)
    # answers align with selected: the strategy's own, then none read for the samples added.
    answers = (
        *result.answers[:picked],
        *[None] * (len(selected) - min(picked, len(result.answers))),
    )
    filled = dataclasses.replace(result, selected=selected, answers=answers)
    said = f"the strategy chose {picked} of the {k} answers asked for"
    if picked + len(rest) < k:
        return filled, f"{said}, and only {len(result.candidates)} samples were drawn"
    return filled, f"{said}; choices {picked + 1}-{k} are samples it did not choose"
