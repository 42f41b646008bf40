"""Scale any generate function: draw N answers through it and select one with a strategy.

``scale`` turns a function that produces one answer into one that draws N answers through it and
returns the selected answer with the whole result::

    @ttscale.scale(strategy="majority", samples=8)
    def ask(question: str, seed: int | None = None) -> str:
        return my_model.generate(question, seed=seed)

    answer, result = ask("What is 17 * 23?")      # a sync function gives a sync wrapper

The function may be sync (run in worker threads, at most ``concurrency`` at once) or async, and may
return a string, an OpenAI ``ChatCompletion`` (or its JSON as a dict) or a ``Completion``. Its
arguments pass through; if it takes a ``seed`` argument each sample gets its own seed, derived from
``seed`` (the base) and the sample's index, and with ``temperatures`` given, a ``temperature``
argument cycles through them by sample index. Sync wrappers run on one long-lived background loop
(:func:`ttscale.portal.default_portal`), so they also work inside a running event loop (Jupyter).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ttscale.budget import BudgetedSampler, Condition, StopCondition, budget_condition, parse_limits
from ttscale.errors import ConfigError
from ttscale.portal import Portal, default_portal
from ttscale.protocols import Sampler, Strategy, Verifier, as_strategy, as_verifier
from ttscale.registry import create
from ttscale.seeds import derive_seed, random_base_seed
from ttscale.types import Candidate, Problem, Prompt, Result, SampleBatch, SamplingParams, Usage

__all__ = ["Scaled", "scale"]


class Scaled(NamedTuple):
    """What a scaled function returns: the selected answer and the whole result.

    ``answer`` is the selected candidate's text (``answers`` all k of them, best first); unpack as
    ``answer, result = f(...)``.
    """

    answer: str | None
    result: Result

    @property
    def answers(self) -> list[str]:
        return [candidate.text for candidate in self.result.selected]

    @property
    def usage(self) -> Usage:
        return self.result.usage

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        return self.result.candidates


def _reply_fields(reply: Any) -> tuple[str, str | None, int, int, bool, str]:
    """(text, finish reason, prompt tokens, completion tokens, tokens known, model) of a reply."""
    if isinstance(reply, str):
        return reply, None, 0, 0, False, ""
    data = reply.model_dump() if hasattr(reply, "model_dump") else reply
    if not isinstance(data, Mapping) or not data.get("choices"):
        raise ConfigError(
            "a scaled function must return a string, a ChatCompletion or a Completion, got "
            f"{type(reply).__name__}"
        )
    choice = data["choices"][0]
    message = choice.get("message")
    text = message.get("content") if isinstance(message, Mapping) else choice.get("text")
    usage = data.get("usage") or {}
    known = bool(usage)
    return (
        text or "",
        choice.get("finish_reason"),
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        known,
        str(data.get("model") or ""),
    )


@dataclass
class _CallSampler:
    """A Sampler that draws by calling the wrapped function once per sample.

    Made per call of the wrapped function: its arguments are this call's.
    """

    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    base_seed: int
    seed_parameter: bool
    temperatures: Sequence[float] | None
    limit: asyncio.Semaphore
    is_async: bool

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        indices = range(start_index, start_index + n)
        replies = await asyncio.gather(*(self._one(index) for index in indices))
        candidates = tuple(candidate for candidate, _ in replies)
        usage = Usage.total([usage for _, usage in replies])
        return SampleBatch(candidates, usage)

    async def _one(self, index: int) -> tuple[Candidate, Usage]:
        kwargs = dict(self.kwargs)
        seed = None
        if self.seed_parameter:
            seed = kwargs["seed"] = derive_seed(self.base_seed, index)
        temperature = None
        if self.temperatures:
            temperature = kwargs["temperature"] = self.temperatures[index % len(self.temperatures)]
        loop = asyncio.get_running_loop()
        async with self.limit:
            started = loop.time()
            if self.is_async:
                reply = await self.function(*self.args, **kwargs)
            else:
                reply = await asyncio.to_thread(self.function, *self.args, **kwargs)
            latency = loop.time() - started
        text, finish, prompt_tokens, completion_tokens, known, model = _reply_fields(reply)
        candidate = Candidate(
            text=text,
            index=index,
            finish_reason=finish,
            completion_tokens=completion_tokens,
            tokens_exact=known,
            seed=seed,
            model=model,
            latency_s=latency,
            temperature=temperature,
        )
        usage = Usage(
            requests=1,
            samples=1,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        return candidate, usage


def _default_problem(*args: Any, **kwargs: Any) -> Problem:
    # What verifiers and extractors see of a call: its prompt, found where functions usually
    # take one, else the call's arguments written out.
    problem_id = f"call-{uuid.uuid4().hex[:12]}"
    messages = kwargs.get("messages")
    if isinstance(messages, list | tuple) and messages:
        return Problem(id=problem_id, messages=tuple(messages))
    for value in (kwargs.get("prompt"), args[0] if args else None):
        if isinstance(value, str):
            return Problem(id=problem_id, prompt=value)
    shown = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    return Problem(id=problem_id, prompt=shown)


def _strategy_from(
    strategy: str | Strategy | Callable[..., Any], samples: int, k: int, options: Mapping[str, Any]
) -> Strategy:
    if isinstance(strategy, str):
        built: Strategy = create("strategy", strategy, samples=samples, k=k, **options)
        return built
    if options:
        raise ConfigError(
            f"strategy options {sorted(options)} go with a strategy name, not a strategy object"
        )
    return as_strategy(strategy)


def _verifier_from(verifier: str | Verifier | Callable[..., Any] | None) -> Verifier | None:
    if verifier is None:
        return None
    if isinstance(verifier, str):
        built: Verifier = create("verifier", verifier)
        return built
    return as_verifier(verifier)


def scale(
    function: Callable[..., Any] | None = None,
    *,
    strategy: str | Strategy | Callable[..., Any] = "majority",
    samples: int = 8,
    k: int = 1,
    verifier: str | Verifier | Callable[..., Any] | None = None,
    budget: Condition | Mapping[str, float] | None = None,
    seed: int | None = None,
    temperatures: Sequence[float] | None = None,
    concurrency: int = 8,
    problem: Callable[..., Problem] | None = None,
    portal: Portal | None = None,
    **strategy_options: Any,
) -> Any:
    """Scale ``function``: draw ``samples`` answers through it and select with ``strategy``.

    Use as ``@scale``, ``@scale(...)`` or ``scale(f, ...)``. ``strategy`` is a registered name
    (built with ``samples``, ``k`` and ``strategy_options``, e.g. ``extractor="boxed"``), a
    Strategy object or a function. ``budget`` is a stop condition (``max_tokens(20_000)``) or a
    mapping such as ``{"tokens": 20_000}``, applied to each call. ``seed`` is the base of the
    per-sample seeds (random when not given). ``problem(*args, **kwargs)`` builds the
    :class:`Problem` verifiers see (with a reference answer or tests), when the default (the
    call's prompt) is not enough.
    """
    if function is None:
        return functools.partial(
            scale,
            strategy=strategy,
            samples=samples,
            k=k,
            verifier=verifier,
            budget=budget,
            seed=seed,
            temperatures=temperatures,
            concurrency=concurrency,
            problem=problem,
            portal=portal,
            **strategy_options,
        )
    parameters = _checked_parameters(function, concurrency, temperatures)
    chosen = _strategy_from(strategy, samples, k, strategy_options)
    checker, condition = _verifier_from(verifier), _budget(budget)
    takes_seed = "seed" in parameters
    is_async = inspect.iscoroutinefunction(function)
    make_problem = problem or _default_problem

    async def run(*args: Any, **kwargs: Any) -> Scaled:
        base = kwargs.pop("seed", None) if takes_seed else None
        base = base if base is not None else seed
        sampler: Sampler = _CallSampler(
            function=function,
            args=args,
            kwargs=kwargs,
            base_seed=base if base is not None else random_base_seed(),
            seed_parameter=takes_seed,
            temperatures=temperatures,
            limit=asyncio.Semaphore(concurrency),
            is_async=is_async,
        )
        if condition is not None:
            sampler = BudgetedSampler(sampler, limit=condition)
        result = await chosen.run(make_problem(*args, **kwargs), sampler, checker)
        answer = result.selected[0].text if result.selected else None
        return Scaled(answer, result)

    if is_async:

        @functools.wraps(function)
        async def scaled_async(*args: Any, **kwargs: Any) -> Scaled:
            return await run(*args, **kwargs)

        return scaled_async

    @functools.wraps(function)
    def scaled(*args: Any, **kwargs: Any) -> Scaled:
        return (portal or default_portal()).call(run, *args, **kwargs)

    scaled.run_async = run  # type: ignore[attr-defined]  # the async twin, for event loops
    return scaled


def _checked_parameters(
    function: Any, concurrency: int, temperatures: Sequence[float] | None
) -> Mapping[str, inspect.Parameter]:
    """The parameters of the function scale() wraps, its arguments checked against them."""
    if not callable(function):
        raise ConfigError(f"scale() wraps a function, got {function!r}")
    if concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
    parameters = _parameters(function)
    if temperatures is not None:
        if "temperature" not in parameters:
            raise ConfigError(
                f"temperatures were given but {function.__name__}() takes no 'temperature'"
            )
        if not temperatures:
            raise ConfigError("temperatures must not be empty")
    return parameters


def _parameters(function: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(function).parameters
    except (TypeError, ValueError):
        return {}


def _budget(budget: Condition | Mapping[str, float] | None) -> StopCondition | Condition | None:
    if budget is None or not isinstance(budget, Mapping):
        return budget
    return budget_condition(parse_limits(budget, "budget"))
