"""One OpenAI-style request, answered by a strategy: what the proxy and the wrapped client share.

A request chooses what to do through a namespaced body field, headers, a preset or the server's
default, in that order of precedence (the first that sets a key wins, key by key)::

    client.chat.completions.create(
        model="qwen", messages=[...], n=2,
        extra_body={"ttscale": {"strategy": "majority", "samples": 16,
                                "budget": {"tokens": 20000}}},
    )

The ``ttscale`` keys are ``strategy``, ``samples`` (how many to draw), ``k`` (how many answers to
return; the client's ``n`` means the same), ``verifier`` (a name, or ``{"name": ..., options}``),
``budget`` (limits: ``samples``, ``requests``, ``tokens``, ``completion_tokens``, ``cost``,
``seconds``) and the strategy's own parameters (``weighted``, ``alpha``, ``margin``, ...), which the
strategy checks by name. As headers: ``X-TTScale-Strategy: majority``, ``X-TTScale-Samples: 16``,
``X-TTScale-Budget: {"tokens": 20000}``, ``X-TTScale-Weighted: true``.

The answer is an OpenAI ``chat.completion`` (or ``text_completion``) whose ``choices`` are the
selected candidates, whose ``usage`` counts every token spent (all samples, every verifier call),
and whose top-level ``ttscale`` field carries the votes, scores, samples and budget used.

Everything here is plain logic over plain data except :func:`run_scaled`, which draws.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ttscale.budget import (
    BudgetedSampler,
    Spend,
    StopCondition,
    max_completion_tokens,
    max_cost,
    max_requests,
    max_samples,
    max_time,
    max_tokens,
)
from ttscale.errors import ConfigError, RequestError, TTScaleError, UnknownNameError
from ttscale.protocols import Sampler, Strategy, Verifier, with_model
from ttscale.registry import load
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

__all__ = [
    "BUDGET_LIMITS",
    "ChatRequest",
    "RequestBudgetSampler",
    "RequestLimits",
    "ScaleSettings",
    "ScaledAnswer",
    "ScaledPlan",
    "UnfinishedDraws",
    "build_strategy",
    "build_verifier",
    "parse_request",
    "parse_settings",
    "plan_scaled",
    "run_scaled",
    "settings_from_headers",
    "stream_chunks",
    "to_response",
]

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, Any] = MappingProxyType({})

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
_INTEGER_BUDGETS = frozenset({"samples", "requests", "tokens", "completion_tokens"})

# Request fields this module reads; every other field goes upstream unchanged (vLLM's top_k, ...).
_CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "n",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "logprobs",
        "top_logprobs",
        "stream",
        "stream_options",
        "ttscale",
    }
)
_COMPLETION_FIELDS = (_CHAT_FIELDS - {"messages", "top_logprobs", "max_completion_tokens"}) | {
    "prompt"
}


# -- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleSettings:
    """What a request, a preset or a server default asks for; ``None`` means "not said here".

    ``model`` is the upstream model (presets name one); ``options`` are the strategy's own
    parameters.
    """

    strategy: str | None = None
    samples: int | None = None
    k: int | None = None
    verifier: str | None = None
    verifier_options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    budget: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    model: str | None = None

    def __post_init__(self) -> None:
        for name in ("verifier_options", "budget", "options"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def empty(self) -> bool:
        return self == ScaleSettings()

    def over(self, base: ScaleSettings) -> ScaleSettings:
        """These settings, with what they leave unsaid taken from ``base``.

        Options belong to their strategy, as verifier options to their verifier: settings that
        name another strategy than ``base`` bring only their own options (a request asking for
        ``majority`` over a default graph must not inherit the graph's ``spec``). Options said
        where no strategy is named apply to whichever strategy runs, so they are merged.
        """
        same_verifier = self.verifier is None or self.verifier == base.verifier
        same_strategy = (
            self.strategy is None or base.strategy is None or self.strategy == base.strategy
        )
        return ScaleSettings(
            strategy=self.strategy if self.strategy is not None else base.strategy,
            samples=self.samples if self.samples is not None else base.samples,
            k=self.k if self.k is not None else base.k,
            verifier=self.verifier if self.verifier is not None else base.verifier,
            # A different verifier brings its own options; the same one refines the base's.
            verifier_options=(
                {**base.verifier_options, **self.verifier_options}
                if same_verifier
                else self.verifier_options
            ),
            budget={**base.budget, **self.budget},
            options={**base.options, **self.options} if same_strategy else self.options,
            model=self.model if self.model is not None else base.model,
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in ("strategy", "samples", "k", "verifier", "model"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.verifier_options:
            data["verifier"] = {"name": self.verifier, **self.verifier_options}
        if self.budget:
            data["budget"] = dict(self.budget)
        data.update(self.options)
        return data


def _positive_int(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{param} must be an integer >= 1, got {value!r}", param=param)
    return value


def _parse_budget(value: Any, param: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise RequestError(
            f'{param} must be an object such as {{"tokens": 20000}}, got {value!r}', param=param
        )
    budget: dict[str, float] = {}
    for key, limit in value.items():
        where = f"{param}.{key}"
        if key not in BUDGET_LIMITS:
            raise RequestError(
                f"unknown budget limit {key!r} in {param}; known: {', '.join(BUDGET_LIMITS)}",
                param=where,
            )
        if key in _INTEGER_BUDGETS:
            budget[key] = _positive_int(limit, where)
        elif isinstance(limit, bool) or not isinstance(limit, int | float) or limit <= 0:
            raise RequestError(f"{where} must be a number > 0, got {limit!r}", param=where)
        else:
            budget[key] = float(limit)
    return budget


def parse_settings(raw: Any, where: str = "ttscale", *, allow_model: bool = False) -> ScaleSettings:
    """Settings from a ``ttscale`` object (a request body's, or a preset's).

    Keys other than the common ones are the strategy's own parameters; the strategy rejects those
    it does not know when it is built (:func:`build_strategy`).
    """
    if raw is None:
        return ScaleSettings()
    if not isinstance(raw, Mapping):
        raise RequestError(f"{where} must be an object, got {type(raw).__name__}", param=where)
    values: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in raw.items():
        param = f"{where}.{key}"
        if not isinstance(key, str) or not key:
            raise RequestError(f"{where} has an empty or non-string key", param=where)
        if key == "strategy":
            if not isinstance(value, str) or not value:
                raise RequestError(f"{param} must be a strategy name", param=param)
            values["strategy"] = value
        elif key in ("samples", "k"):
            values[key] = _positive_int(value, param)
        elif key == "verifier":
            if isinstance(value, str) and value:
                values["verifier"] = value
            elif isinstance(value, Mapping) and isinstance(value.get("name"), str):
                values["verifier"] = value["name"]
                values["verifier_options"] = {k: v for k, v in value.items() if k != "name"}
            else:
                raise RequestError(
                    f"{param} must be a verifier name or an object with a 'name'", param=param
                )
        elif key == "budget":
            values["budget"] = _parse_budget(value, param)
        elif key == "model":
            if not allow_model:
                raise RequestError(
                    f"{param}: the upstream model is the request's own 'model' field", param=param
                )
            if not isinstance(value, str) or not value:
                raise RequestError(f"{param} must be a model name", param=param)
            values["model"] = value
        else:
            options[key] = value
    return ScaleSettings(**values, options=options)


_HEADER_PREFIX = "x-ttscale-"


def _header_value(text: str) -> Any:
    # Header values are strings; JSON reads numbers, booleans and objects, anything else is text.
    try:
        return json.loads(text)
    except ValueError:
        return text


def settings_from_headers(headers: Mapping[str, str]) -> ScaleSettings:
    """Settings from ``X-TTScale-*`` headers (``X-TTScale-Max-Depth`` is option ``max_depth``)."""
    raw: dict[str, Any] = {}
    for name, text in headers.items():
        lowered = name.lower()
        if not lowered.startswith(_HEADER_PREFIX) or lowered == _HEADER_PREFIX:
            continue
        key = lowered[len(_HEADER_PREFIX) :].replace("-", "_")
        value = _header_value(text.strip())
        if key in ("strategy", "verifier") and not isinstance(value, Mapping):
            value = text.strip()  # a name, even one JSON would read as a number
        raw[key] = value
    return parse_settings(raw, "X-TTScale headers") if raw else ScaleSettings()


# -- the request ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestLimits:
    """Per-request caps a server puts on what one request may ask for.

    ``max_samples`` caps ``samples``, ``max_tokens`` a sample's ``max_tokens`` (and is the default
    when the request sets none; ``None``: no cap, the upstream's default), ``max_k`` the answers
    returned.
    """

    max_samples: int = 64
    max_tokens: int | None = 4096
    max_k: int = 16

    def __post_init__(self) -> None:
        for name in ("max_samples", "max_tokens", "max_k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ChatRequest:
    """An OpenAI chat or completions request, read and checked.

    ``prompt`` is the messages (chat) or the text (completions); ``extra`` the fields sent upstream
    unchanged; ``n`` the client's ``n`` when it gave one.
    """

    chat: bool
    model: str
    prompt: str | tuple[Mapping[str, Any], ...]
    n: int | None
    params: SamplingParams
    stream: bool
    include_usage: bool
    settings: ScaleSettings
    logprobs: bool


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"{name} must be a number in [{low}, {high}], got {value!r}", param=name)
    return float(value)


def _messages(value: Any) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise RequestError("messages must be a non-empty list of messages", param="messages")
    for position, message in enumerate(value):
        param = f"messages[{position}]"
        if not isinstance(message, Mapping):
            raise RequestError(f"{param} must be an object", param=param)
        if not isinstance(message.get("role"), str):
            raise RequestError(f"{param}.role must be a string", param=f"{param}.role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise RequestError(
                f"{param}.content must be a string or a list of parts", param=f"{param}.content"
            )
    return tuple(value)


def _completion_prompt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    raise RequestError(
        "prompt must be one string (a strategy answers one prompt per request)", param="prompt"
    )


def parse_request(body: Any, *, chat: bool, limits: RequestLimits | None = None) -> ChatRequest:
    """Read an OpenAI request body; raises :class:`RequestError` naming the bad field."""
    limits = limits or RequestLimits()
    if not isinstance(body, Mapping):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model must be a non-empty string", param="model")
    prompt: str | tuple[Mapping[str, Any], ...] = (
        _messages(body.get("messages")) if chat else _completion_prompt(body.get("prompt"))
    )
    n = body.get("n")
    if n is not None:
        n = _positive_int(n, "n")
    tokens_field = (
        "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    )
    requested_tokens = body.get(tokens_field)
    if requested_tokens is not None:
        requested_tokens = _positive_int(requested_tokens, tokens_field)
        if limits.max_tokens is not None and requested_tokens > limits.max_tokens:
            raise RequestError(
                f"{tokens_field} {requested_tokens} is over this server's cap of "
                f"{limits.max_tokens}",
                param=tokens_field,
            )
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise RequestError("stop must be a string or a list of strings", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(f"seed must be an integer, got {seed!r}", param="seed")
    logprobs: int | None = None
    wants_logprobs = False
    if chat:
        if body.get("logprobs") not in (None, True, False):
            raise RequestError("logprobs must be a boolean", param="logprobs")
        if body.get("logprobs"):
            wants_logprobs = True
            top = body.get("top_logprobs") or 0
            logprobs = _positive_int(top, "top_logprobs") if top else 0
    elif body.get("logprobs") is not None:
        value = body["logprobs"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 20:
            raise RequestError("logprobs must be an integer in [0, 20]", param="logprobs")
        wants_logprobs, logprobs = True, value
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream must be a boolean", param="stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, Mapping):
        raise RequestError("stream_options must be an object", param="stream_options")
    known = _CHAT_FIELDS if chat else _COMPLETION_FIELDS
    extra = {key: value for key, value in body.items() if key not in known}
    params = SamplingParams(
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 1e-9, 1.0),
        max_tokens=requested_tokens if requested_tokens is not None else limits.max_tokens,
        stop=(stop,) if isinstance(stop, str) else tuple(stop) if stop is not None else None,
        logprobs=logprobs,
        seed=seed,
        extra_body=extra,
    )
    return ChatRequest(
        chat=chat,
        model=model,
        prompt=prompt,
        n=n,
        params=params,
        stream=stream,
        include_usage=bool(stream_options.get("include_usage")),
        settings=parse_settings(body.get("ttscale")),
        logprobs=wants_logprobs,
    )


# -- building the parts --------------------------------------------------------------------------


# What registry.load found, by kind and name. Reading the entry points costs milliseconds of CPU
# (every installed distribution's metadata), which a server would pay on every request. A name
# once found keeps its object (its module stays imported anyway); an unknown name is looked up
# again each time, so a plugin installed while the server runs is still found.
_LOADED: dict[tuple[str, str], Any] = {}


def _load(kind: str, name: str) -> Any:
    key = (kind, name)
    found = _LOADED.get(key)
    if found is None:
        found = _LOADED[key] = load(kind, name)
    return found


def build_strategy(
    name: str, samples: int, k: int, params: SamplingParams, options: Mapping[str, Any]
) -> Strategy:
    """The registered strategy ``name``; a bad name or option is a :class:`RequestError`."""
    reserved = sorted({"samples", "k", "params"} & set(options))
    if reserved:
        raise RequestError(
            f"ttscale.{reserved[0]} is set by the request itself", param=f"ttscale.{reserved[0]}"
        )
    try:
        factory = _load("strategy", name)
        strategy: Strategy = factory(samples=samples, k=k, params=params, **options)
    except UnknownNameError as exc:
        raise RequestError(str(exc), param="ttscale.strategy") from exc
    except TypeError as exc:
        raise RequestError(
            f"strategy {name!r} cannot be built with {sorted(options)}: {exc}", param="ttscale"
        ) from exc
    except ConfigError as exc:
        unknown = getattr(exc, "unknown_options", None)
        if unknown:
            raise RequestError(
                f"unknown ttscale key(s) {', '.join(unknown)} for strategy {name!r} ({exc})",
                param=f"ttscale.{unknown[0]}",
            ) from exc
        raise RequestError(f"strategy {name!r}: {exc}", param="ttscale") from exc
    return strategy


def build_verifier(
    name: str, options: Mapping[str, Any], *, sampler: Sampler | None = None
) -> Verifier:
    """The registered verifier ``name`` built with ``options``.

    A verifier that takes a ``sampler`` (an LLM judge) and is given none asks the request's own
    upstream through ``sampler``, so its tokens land in the same usage.
    """
    try:
        factory = _load("verifier", name)
    except UnknownNameError as exc:
        raise RequestError(str(exc), param="ttscale.verifier") from exc
    except ConfigError as exc:
        raise RequestError(str(exc), param="ttscale.verifier") from exc
    options = dict(options)
    if sampler is not None and "sampler" not in options and _takes(factory, "sampler"):
        options["sampler"] = sampler
    try:
        verifier: Verifier = factory(**options)
    except TypeError as exc:
        raise RequestError(
            f"verifier {name!r} cannot be built with {sorted(options)}: {exc}",
            param="ttscale.verifier",
        ) from exc
    except TTScaleError as exc:
        raise RequestError(f"verifier {name!r}: {exc}", param="ttscale.verifier") from exc
    return verifier


def _takes(factory: Any, name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def budget_condition(budget: Mapping[str, float]) -> StopCondition | None:
    """The stop condition a budget mapping means: any one of its limits stops."""
    condition: StopCondition | None = None
    for key, limit in budget.items():
        one = BUDGET_LIMITS[key](int(limit) if key in _INTEGER_BUDGETS else limit)
        condition = one if condition is None else condition | one
    return condition


# -- running -------------------------------------------------------------------------------------


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
class ScaledAnswer:
    """A strategy's answer to one request, with everything needed to report it."""

    request: ChatRequest
    settings: ScaleSettings
    strategy: str
    samples: int
    k: int
    result: Result
    verifier_usage: Usage
    budget: Mapping[str, Any]
    wall_time_s: float
    id: str

    @property
    def usage(self) -> Usage:
        """Every token spent: the samples and the verifier's calls."""
        return self.result.usage + self.verifier_usage


def resolve(
    request: ChatRequest, settings: ScaleSettings, limits: RequestLimits
) -> tuple[int, int]:
    """The samples to draw and answers to return; checks them against ``limits``."""
    k = settings.k
    if request.n is not None and k is not None and request.n != k:
        raise RequestError(
            f"n ({request.n}) and ttscale.k ({k}) disagree; they mean the same thing", param="n"
        )
    k = k if k is not None else (request.n or 1)
    samples = settings.samples if settings.samples is not None else max(k, 8)
    if samples > limits.max_samples:
        raise RequestError(
            f"ttscale.samples {samples} is over this server's cap of {limits.max_samples}",
            param="ttscale.samples",
        )
    if k > limits.max_k:
        raise RequestError(f"k {k} is over this server's cap of {limits.max_k}", param="n")
    if k > samples:
        raise RequestError(
            f"k ({k}) answers need at least as many samples, got {samples}", param="ttscale.samples"
        )
    return samples, k


@dataclass(frozen=True)
class ScaledPlan:
    """A checked request with the strategy and verifier built for it alone."""

    request: ChatRequest
    settings: ScaleSettings
    strategy_name: str
    strategy: Strategy
    verifier: Verifier | None
    samples: int
    k: int


def plan_scaled(
    request: ChatRequest,
    settings: ScaleSettings,
    sampler: Sampler,
    *,
    limits: RequestLimits | None = None,
    default_strategy: str = "majority",
    verifier_factory: Callable[[str, Mapping[str, Any], Sampler], Verifier] | None = None,
) -> ScaledPlan:
    """Check ``request`` and build what answers it; every problem is a :class:`RequestError`.

    Nothing is drawn here, so a server can refuse a bad request before it starts a stream.
    """
    limits = limits or RequestLimits()
    samples, k = resolve(request, settings, limits)
    name = settings.strategy or default_strategy
    strategy = build_strategy(name, samples, k, request.params, settings.options)
    verifier: Verifier | None = None
    if settings.verifier is not None:
        # A verifier that asks a model (the judge) draws through the request's budget, which
        # exists only once run_scaled runs the plan: it gets a sampler that finds it then.
        asks = RequestBudgetSampler(sampler)
        if verifier_factory is not None:
            verifier = verifier_factory(settings.verifier, settings.verifier_options, asks)
        else:
            verifier = build_verifier(settings.verifier, settings.verifier_options, sampler=asks)
    return ScaledPlan(request, settings, name, strategy, verifier, samples, k)


# The budget of the request run_scaled is running in this context (tasks it starts inherit it).
_REQUEST_BUDGET: ContextVar[BudgetedSampler | None] = ContextVar(
    "ttscale_request_budget", default=None
)


class RequestBudgetSampler:
    """The sampler a request's verifier asks: the request's budget while :func:`run_scaled` runs.

    A plan is built before its budget (nothing may be drawn while a request is checked), and a
    plan may be rebuilt around the same verifier, so the verifier cannot be handed the budget
    itself. Through this sampler, the judge's calls meet the same limits as the samples and are
    counted in the same spend; outside a run there is no budget, and it asks ``sampler`` as is.
    """

    def __init__(self, sampler: Sampler, model: str | None = None) -> None:
        self.sampler = sampler
        self.model = model

    def _target(self) -> Sampler:
        budgeted = _REQUEST_BUDGET.get()
        target: Sampler = budgeted if budgeted is not None else self.sampler
        return target if self.model is None else with_model(target, self.model)

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        return await self._target().sample(prompt, n, params, start_index=start_index)

    def with_model(self, model: str) -> RequestBudgetSampler:
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
    budgeted = BudgetedSampler(sampler, limit=budget_condition(settings.budget))
    answer_id = uuid.uuid4().hex
    prompt = plan.request.prompt
    problem = Problem(
        id=answer_id,
        prompt=prompt if isinstance(prompt, str) else None,
        messages=None if isinstance(prompt, str) else prompt,
    )
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
            raise RequestError(f"strategy {plan.strategy_name!r}: {exc}", param="ttscale") from exc
        raise
    finally:
        _REQUEST_BUDGET.reset(token)
    budget = budgeted.to_dict()
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
    )


# -- the response --------------------------------------------------------------------------------


def _trace_step(result: Result, step: str) -> Mapping[str, Any]:
    for event in reversed(result.trace):
        if event.step == step:
            return event.data
    return _EMPTY


def metadata(answer: ScaledAnswer) -> dict[str, Any]:
    """The response's top-level ``ttscale`` field."""
    result = answer.result
    scores = [
        {"index": c.index, "value": s.value, "verdict": s.verdict}
        for c, s in zip(result.candidates, result.scores, strict=False)
        if s is not None
    ]
    stop = dict(_trace_step(result, "stop"))
    vote = dict(_trace_step(result, "vote"))
    return {
        "strategy": answer.strategy,
        "samples_requested": answer.samples,
        "samples_used": len(result.candidates),
        "k": answer.k,
        "answers": list(result.answers),
        "selected": [c.index for c in result.selected],
        "votes": vote.get("votes", {}),
        "scores": scores,
        "stop": stop.get("reason"),
        "usage": {
            "sampling": result.usage.to_dict(),
            "verifier": answer.verifier_usage.to_dict(),
        },
        "budget": {
            "limits": dict(answer.settings.budget),
            "spent": answer.budget.get("run", {}),
        },
        "verifier": answer.settings.verifier,
    }


def _usage_field(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _chat_logprobs(candidate: Candidate) -> dict[str, Any] | None:
    if candidate.logprobs is None:
        return None
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": list(t.token.encode()),
                "top_logprobs": [
                    {"token": a, "logprob": p, "bytes": list(a.encode())} for a, p in t.top
                ],
            }
            for t in candidate.logprobs
        ]
    }


def _completion_logprobs(candidate: Candidate) -> dict[str, Any] | None:
    if candidate.logprobs is None:
        return None
    return {
        "tokens": [t.token for t in candidate.logprobs],
        "token_logprobs": [t.logprob for t in candidate.logprobs],
        "top_logprobs": [dict(t.top) for t in candidate.logprobs],
        "text_offset": [],
    }


def _choice(answer: ScaledAnswer, position: int, candidate: Candidate) -> dict[str, Any]:
    finish = candidate.finish_reason or "stop"
    if answer.request.chat:
        return {
            "index": position,
            "message": {"role": "assistant", "content": candidate.text},
            "finish_reason": finish,
            "logprobs": _chat_logprobs(candidate) if answer.request.logprobs else None,
        }
    return {
        "index": position,
        "text": candidate.text,
        "finish_reason": finish,
        "logprobs": _completion_logprobs(candidate) if answer.request.logprobs else None,
    }


def to_response(answer: ScaledAnswer, model: str) -> dict[str, Any]:
    """The answer as an OpenAI ``chat.completion`` or ``text_completion`` object."""
    chat = answer.request.chat
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + answer.id,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_choice(answer, i, c) for i, c in enumerate(answer.result.selected)],
        "usage": _usage_field(answer.usage),
        "system_fingerprint": None,
        "ttscale": metadata(answer),
    }


def _pieces(text: str, size: int = 48) -> list[str]:
    # Content deltas of a few words each, split after whitespace so no word is cut in two.
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            end = space + 1 if space > start else end
        pieces.append(text[start:end])
        start = end
    return pieces


def stream_chunks(answer: ScaledAnswer, model: str) -> list[dict[str, Any]]:
    """The answer as the chunks of an OpenAI stream (without the ``[DONE]`` line).

    Per selected answer: a role delta (chat), content deltas, a finish reason; then, when the
    request's ``stream_options.include_usage`` asks, a chunk with empty choices and the usage. The
    last chunk carries the ``ttscale`` field.
    """
    chat = answer.request.chat
    base = {
        "id": ("chatcmpl-" if chat else "cmpl-") + answer.id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }
    chunks: list[dict[str, Any]] = []

    def choice(
        position: int, text: str | None, finish: str | None, role: bool = False
    ) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": position, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"index": position, "text": text or "", "finish_reason": finish, "logprobs": None}

    for position, candidate in enumerate(answer.result.selected):
        if chat:
            chunks.append({**base, "choices": [choice(position, "", None, role=True)]})
        for piece in _pieces(candidate.text):
            chunks.append({**base, "choices": [choice(position, piece, None)]})
        finish = candidate.finish_reason or "stop"
        chunks.append({**base, "choices": [choice(position, None, finish)]})
    if answer.request.include_usage:
        chunks.append({**base, "choices": [], "usage": _usage_field(answer.usage)})
    if chunks:
        chunks[-1] = {**chunks[-1], "ttscale": metadata(answer)}
    return chunks
