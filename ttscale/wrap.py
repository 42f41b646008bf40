"""Wrap an ``openai`` client so that its chat completions apply a strategy.

``wrap`` gives a client whose ``chat.completions.create`` applies a strategy when asked (by the
wrap's defaults or a call's ``extra_body={"ttscale": {...}}``, read exactly as the proxy reads
them) and returns a ``ChatCompletion`` with honest ``usage`` and the ``ttscale`` field::

    client = ttscale.wrap(OpenAI(base_url=..., api_key=...), strategy="majority", samples=8)
    reply = client.chat.completions.create(model="m", messages=[...], n=2)
    reply.choices        # the 2 answers majority selected
    reply.model_extra["ttscale"]["votes"]

Everything else on the client is the client's own. Sync wrappers run on one long-lived background
loop (:func:`ttscale.portal.default_portal`), so they also work inside a running event loop
(Jupyter). Scaling a plain generate function is :func:`ttscale.scale_function.scale` (also
importable from here).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ttscale.budget import BudgetedSampler, Condition
from ttscale.errors import ConfigError, TTScaleError
from ttscale.openai_errors import as_openai_error
from ttscale.portal import Portal, default_portal
from ttscale.protocols import Sampler, Strategy, Verifier, as_strategy, as_verifier
from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
from ttscale.scale_function import Scaled, scale
from ttscale.scaling import ScaledPlan, UnfinishedDraws, plan_scaled, run_scaled
from ttscale.settings import (
    RequestLimits,
    parse_settings,
    resolve_settings,
    settings_from_headers,
)
from ttscale.wire import parse_request, stream_chunks, to_response
from ttscale.wrap_responses import (
    AsyncChunks,
    AsyncResponseContext,
    AsyncStreamedResponse,
    RawResponse,
    ResponseContext,
    ScaledPayload,
    StreamedResponse,
    answer_response,
)

__all__ = ["Scaled", "ScaledAsyncOpenAI", "ScaledOpenAI", "scale", "wrap"]

log = logging.getLogger(__name__)


# Arguments of create() that are the client's request options, not body fields.
_REQUEST_OPTIONS = ("extra_headers", "extra_query", "extra_body", "timeout")


class _Scaler:
    """What both wrapped clients share: settings, samplers per model, the budget; async core."""

    def __init__(
        self,
        async_client: openai.AsyncOpenAI,
        *,
        strategy: str | Strategy | Callable[..., Any] | None,
        samples: int | None,
        k: int | None,
        verifier: str | Verifier | Callable[..., Any] | None,
        budget: Condition | Mapping[str, float] | None,
        limits: RequestLimits | None,
        strategy_options: Mapping[str, Any],
    ) -> None:
        self.async_client = async_client
        self.strategy_object = None if strategy is None or isinstance(strategy, str) else strategy
        self.verifier_object = None if verifier is None or isinstance(verifier, str) else verifier
        budget_map = budget if isinstance(budget, Mapping) else {}
        raw: dict[str, Any] = dict(strategy_options)
        if isinstance(strategy, str):
            raw["strategy"] = strategy
        if isinstance(verifier, str):
            raw["verifier"] = verifier
        if samples is not None:
            raw["samples"] = samples
        if k is not None:
            raw["k"] = k
        if budget_map:
            raw["budget"] = dict(budget_map)
        self.defaults = parse_settings(raw, "wrap()")
        # A budget given as a condition spans every call of the wrapped client.
        self.shared_budget = (
            budget if budget is not None and not isinstance(budget, Mapping) else None
        )
        # No caps by default; max_tokens None also means a call without max_tokens sends none
        # (a number here would be sent as every such call's max_tokens).
        self.limits = limits or RequestLimits(max_samples=1 << 20, max_tokens=None, max_k=1 << 20)
        self._samplers: dict[str, Sampler] = {}
        # The shared budget's first sampler; other models draw through its twins, under the same
        # tracker, so the budget spans every model's calls.
        self._budgeted: BudgetedSampler | None = None
        # Calls that ended without an answer (cancelled, failed) with draws still in flight.
        self.unfinished = UnfinishedDraws()

    @property
    def always(self) -> bool:
        """Whether every call is scaled (the wrap itself named a strategy or settings)."""
        return self.strategy_object is not None or not self.defaults.empty

    def sampler(self, model: str) -> Sampler:
        sampler = self._samplers.get(model)
        if sampler is None:
            sampler = OpenAISampler(
                OpenAISamplerConfig(model=model, api_key_env=None), client=self.async_client
            )
            if self.shared_budget is not None:
                if self._budgeted is None:
                    sampler = self._budgeted = BudgetedSampler(sampler, limit=self.shared_budget)
                else:
                    sampler = self._budgeted.with_model(model)
            self._samplers[model] = sampler
        return sampler

    async def aclose(self) -> None:
        """Close the client once the draws of cancelled calls have ended and been counted.

        Closing it under them would fail requests the server bills anyway; they end by the
        client's own timeout at the latest.
        """
        await self.unfinished.drain()
        if self._budgeted is not None:
            await self._budgeted.drain()
        await self.async_client.close()

    @staticmethod
    def body(kwargs: Mapping[str, Any]) -> dict[str, Any]:
        body = {
            key: value
            for key, value in kwargs.items()
            if key not in _REQUEST_OPTIONS and value is not openai.NOT_GIVEN
        }
        body.update(kwargs.get("extra_body") or {})
        return body

    def wants_scaling(self, kwargs: Mapping[str, Any]) -> bool:
        extra = kwargs.get("extra_body") or {}
        headers = kwargs.get("extra_headers") or {}
        named = any(str(name).lower().startswith("x-ttscale-") for name in headers)
        return self.always or "ttscale" in extra or named

    def plan(
        self, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> tuple[ScaledPlan, Sampler]:
        request = parse_request(body, chat=True, limits=self.limits)
        settings = resolve_settings(
            request.settings, settings_from_headers(headers or {}), default=self.defaults
        )
        sampler = self.sampler(request.model)
        plan = plan_scaled(request, settings, sampler, limits=self.limits)
        if self.strategy_object is not None and request.settings.strategy is None:
            plan = dataclasses.replace(
                plan,
                strategy_name=getattr(self.strategy_object, "name", "custom"),
                strategy=as_strategy(self.strategy_object),
            )
        if self.verifier_object is not None and request.settings.verifier is None:
            plan = dataclasses.replace(plan, verifier=as_verifier(self.verifier_object))
        return plan, sampler

    @property
    def url(self) -> str:
        """Where the plain client would send a chat completion (named by the errors raised)."""
        return str(self.async_client.base_url).rstrip("/") + "/chat/completions"

    async def payload(self, kwargs: Mapping[str, Any]) -> tuple[ScaledPayload, int, float]:
        """A scaled call's answer on the wire, with the samples drawn and the wall time.

        A request refused for what it asked raises the ``openai`` error the plain client would
        get for it from the proxy, which is also ttscale's error (:func:`as_openai_error`).
        """
        try:
            plan, sampler = self.plan(self.body(kwargs), kwargs.get("extra_headers"))
            answer = await run_scaled(plan, sampler, unfinished=self.unfinished)
        except TTScaleError as exc:
            error = as_openai_error(exc, self.url)
            if error is exc:
                raise
            raise error from exc
        model = plan.request.model
        payload: ScaledPayload = (
            stream_chunks(answer, model) if plan.request.stream else to_response(answer, model)
        )
        self.show_client_budget(payload)
        return payload, len(answer.result.candidates), answer.wall_time_s

    def show_client_budget(self, payload: ScaledPayload) -> None:
        """Add the client-wide budget to the answer's ``ttscale.budget``: its limits under
        ``limits.client`` (``"max_samples(64) | max_cost(5)"``) and every call's spend so far
        under ``client_spent``, beside the call's own."""
        if self._budgeted is None:
            return
        chunks = payload if isinstance(payload, list) else [payload]
        for chunk in chunks:
            budget = (chunk.get("ttscale") or {}).get("budget")
            if isinstance(budget, dict):
                budget["limits"] = {**budget.get("limits", {}), "client": repr(self.shared_budget)}
                budget["client_spent"] = self._budgeted.to_dict().get("run", {})

    async def create(self, kwargs: Mapping[str, Any]) -> ChatCompletion | list[ChatCompletionChunk]:
        payload, _, _ = await self.payload(kwargs)
        if isinstance(payload, list):
            return [ChatCompletionChunk.model_validate(chunk) for chunk in payload]
        return ChatCompletion.model_validate(payload)

    async def raw(self, kwargs: Mapping[str, Any], *, is_async: bool) -> RawResponse:
        payload, samples, elapsed = await self.payload(kwargs)
        http_response = answer_response(payload, self.url, samples)
        return RawResponse(payload, http_response, elapsed, is_async=is_async)

    async def streamed(
        self, kwargs: Mapping[str, Any]
    ) -> tuple[ScaledPayload, httpx2.Response, float]:
        payload, samples, elapsed = await self.payload(kwargs)
        return payload, answer_response(payload, self.url, samples), elapsed

    def refuse(self, call: str, kwargs: Mapping[str, Any]) -> None:
        """Refuse a call the wrap cannot scale when it is to be scaled (never skip silently)."""
        if self.wants_scaling(kwargs):
            raise ConfigError(
                f"{call} of a wrapped client cannot be scaled: only chat.completions.create() "
                "(and its with_raw_response / with_streaming_response) is. Call it on the plain "
                "client without ttscale settings, or through ttscale serve, which scales "
                "/v1/completions too",
                param="ttscale",
            )


class _Namespace:
    """One of the client's namespaces (``chat``, ``completions``, ...) with some parts replaced;
    the rest is the client's own."""

    def __init__(self, original: Any, **parts: Any) -> None:
        self._original = original
        self.__dict__.update(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _namespaces(
    client: Any,
    create: Callable[..., Any],
    raw: Callable[..., Any],
    streaming: Callable[..., Any],
    refuse: Callable[..., Any],
) -> tuple[_Namespace, _Namespace, _Namespace, _Namespace]:
    """``chat``, ``completions``, ``with_raw_response`` and ``with_streaming_response`` of a
    wrapped client: the scaled ``create`` wherever the client offers a chat completion's create;
    calls it cannot scale (``parse``, ``stream``, legacy completions) refuse when they are to be
    scaled."""
    completions = client.chat.completions

    def guarded(target: Any, method: str, call: str) -> Callable[..., Any]:
        original = getattr(target, method)

        def checked(*args: Any, **kwargs: Any) -> Any:
            refuse(call, kwargs)
            return original(*args, **kwargs)

        return checked

    def legacy(accessor: Any) -> _Namespace:
        return _Namespace(accessor, create=guarded(accessor, "create", "completions.create()"))

    text = client.completions
    text_completions = _Namespace(
        text,
        create=guarded(text, "create", "completions.create()"),
        with_raw_response=legacy(text.with_raw_response),
        with_streaming_response=legacy(text.with_streaming_response),
    )

    raw_completions = _Namespace(completions.with_raw_response, create=raw)
    streaming_completions = _Namespace(completions.with_streaming_response, create=streaming)
    chat = _Namespace(
        client.chat,
        completions=_Namespace(
            completions,
            create=create,
            with_raw_response=raw_completions,
            with_streaming_response=streaming_completions,
            parse=guarded(completions, "parse", "chat.completions.parse()"),
            stream=guarded(completions, "stream", "chat.completions.stream()"),
        ),
    )

    def top(accessor: Any, scaled: _Namespace) -> _Namespace:
        chat = _Namespace(accessor.chat, completions=scaled)
        return _Namespace(accessor, chat=chat, completions=legacy(accessor.completions))

    return (
        chat,
        text_completions,
        top(client.with_raw_response, raw_completions),
        top(client.with_streaming_response, streaming_completions),
    )


def _async_twin(
    client: openai.OpenAI, http_client: httpx2.AsyncClient | None
) -> openai.AsyncOpenAI:
    """An ``AsyncOpenAI`` with ``client``'s settings, for scaled calls on the portal's loop.

    Carried over: key, organization, project, base URL, timeout, retries and the headers and query
    parameters given as ``default_headers`` / ``default_query``. A sync ``http_client`` cannot
    serve async calls, so its transport settings (proxies, TLS, mounts) are not; ``http_client``
    here (an ``httpx2.AsyncClient``) takes their place, else openai's default async one is used.
    """
    # openai keeps the caller's default_headers/default_query in these attributes and its own
    # copy() reads them; the public default_headers also hold the sync client's own headers.
    headers = dict(getattr(client, "_custom_headers", None) or {})
    query = dict(getattr(client, "_custom_query", None) or {})
    default_wrapper = getattr(openai._base_client, "SyncHttpxClientWrapper", None)
    custom = default_wrapper is not None and not isinstance(
        getattr(client, "_client", None), default_wrapper
    )
    if custom and http_client is None:
        log.warning(
            "wrap(): the client's own http_client cannot make the async calls scaled calls use; "
            "they go through openai's default transport (its proxies and TLS settings do not "
            "apply). Pass wrap(..., http_client=httpx2.AsyncClient(...)) to choose it."
        )
    return openai.AsyncOpenAI(
        api_key=client.api_key,
        organization=client.organization,
        project=client.project,
        base_url=client.base_url,
        timeout=client.timeout,
        max_retries=client.max_retries,
        default_headers=headers or None,
        default_query=query or None,
        http_client=http_client,
    )


def _check_copyable(scaler: _Scaler) -> None:
    # A copy gets its own scaler: a budget spanning every call of the client would not span both.
    if scaler.shared_budget is not None:
        raise ConfigError(
            "with_options()/copy() of a wrapped client with a client-wide budget would start a "
            "second budget; wrap the copy instead: ttscale.wrap(client.with_options(...), "
            "budget=...)",
            param="budget",
        )


class ScaledOpenAI:
    """A sync ``openai.OpenAI`` whose chat completions apply a strategy; see :func:`wrap`."""

    def __init__(
        self,
        client: openai.OpenAI,
        scaler_options: dict[str, Any],
        portal: Portal,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self._client = client
        self._portal = portal
        self._options = scaler_options
        self._http_client = http_client
        # Sampling runs on the portal's loop, through an async twin of the client's settings.
        self._scaler = _Scaler(_async_twin(client, http_client), **scaler_options)
        namespaces = _namespaces(
            client, self._create, self._raw_create, self._streaming_create, self._scaler.refuse
        )
        self.chat, self.completions, self.with_raw_response, self.with_streaming_response = (
            namespaces
        )

    def with_options(self, **options: Any) -> ScaledOpenAI:
        """The client's ``with_options(...)`` (alias ``copy``), wrapped with the same settings."""
        _check_copyable(self._scaler)
        copied = self._client.with_options(**options)
        return ScaledOpenAI(copied, self._options, self._portal, self._http_client)

    copy = with_options

    def _create(self, **kwargs: Any) -> Any:
        if not self._scaler.wants_scaling(kwargs):
            return self._client.chat.completions.create(**kwargs)
        reply = self._portal.call(self._scaler.create, kwargs)
        return iter(reply) if isinstance(reply, list) else reply

    def _raw_create(self, **kwargs: Any) -> Any:
        if not self._scaler.wants_scaling(kwargs):
            return self._client.chat.completions.with_raw_response.create(**kwargs)
        return self._portal.call(functools.partial(self._scaler.raw, kwargs, is_async=False))

    def _streaming_create(self, **kwargs: Any) -> Any:
        if not self._scaler.wants_scaling(kwargs):
            return self._client.chat.completions.with_streaming_response.create(**kwargs)

        def call() -> StreamedResponse:
            return StreamedResponse(*self._portal.call(self._scaler.streamed, kwargs))

        return ResponseContext(call)

    def close(self) -> None:
        self._portal.call(self._scaler.aclose)
        self._client.close()

    def __enter__(self) -> ScaledOpenAI:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class ScaledAsyncOpenAI:
    """An ``openai.AsyncOpenAI`` whose chat completions apply a strategy; see :func:`wrap`."""

    def __init__(self, client: openai.AsyncOpenAI, scaler_options: dict[str, Any]) -> None:
        self._client = client
        self._options = scaler_options
        self._scaler = _Scaler(client, **scaler_options)
        namespaces = _namespaces(
            client, self._create, self._raw_create, self._streaming_create, self._scaler.refuse
        )
        self.chat, self.completions, self.with_raw_response, self.with_streaming_response = (
            namespaces
        )

    def with_options(self, **options: Any) -> ScaledAsyncOpenAI:
        """The client's ``with_options(...)`` (alias ``copy``), wrapped with the same settings."""
        _check_copyable(self._scaler)
        return ScaledAsyncOpenAI(self._client.with_options(**options), self._options)

    copy = with_options

    async def _create(self, **kwargs: Any) -> Any:
        if not self._scaler.wants_scaling(kwargs):
            return await self._client.chat.completions.create(**kwargs)
        reply = await self._scaler.create(kwargs)
        return AsyncChunks(reply) if isinstance(reply, list) else reply

    async def _raw_create(self, **kwargs: Any) -> Any:
        if not self._scaler.wants_scaling(kwargs):
            return await self._client.chat.completions.with_raw_response.create(**kwargs)
        return await self._scaler.raw(kwargs, is_async=True)

    def _streaming_create(self, **kwargs: Any) -> Any:
        if not self._scaler.wants_scaling(kwargs):
            return self._client.chat.completions.with_streaming_response.create(**kwargs)

        async def call() -> AsyncStreamedResponse:
            return AsyncStreamedResponse(*await self._scaler.streamed(kwargs))

        return AsyncResponseContext(call)

    async def close(self) -> None:
        await self._scaler.aclose()  # the scaler's client is this client

    async def __aenter__(self) -> ScaledAsyncOpenAI:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def wrap(
    client: openai.OpenAI | openai.AsyncOpenAI,
    *,
    strategy: str | Strategy | Callable[..., Any] | None = None,
    samples: int | None = None,
    k: int | None = None,
    verifier: str | Verifier | Callable[..., Any] | None = None,
    budget: Condition | Mapping[str, float] | None = None,
    limits: RequestLimits | None = None,
    portal: Portal | None = None,
    http_client: httpx2.AsyncClient | None = None,
    **strategy_options: Any,
) -> Any:
    """A client like ``client`` whose ``chat.completions.create`` applies a strategy.

    With no settings here, only calls that carry ``extra_body={"ttscale": {...}}`` are scaled;
    with any, every call is (and a call's ``ttscale`` keys still win). ``budget`` as a stop
    condition (``max_cost(5.0)``) spans every call of this client; as a mapping it applies to each
    call, like the ``budget`` key. ``limits`` caps what a call may ask for (default: no caps).
    Returns a :class:`ScaledOpenAI` or :class:`ScaledAsyncOpenAI`.

    A sync client's scaled calls run on a background loop through an ``AsyncOpenAI`` with the
    client's settings (key, base URL, timeout, retries, ``default_headers``, ``default_query``).
    Its ``http_client`` cannot serve them: give ``http_client`` here (an ``httpx2.AsyncClient``,
    closed with the wrapped client) for proxies or TLS settings; otherwise openai's default async
    transport is used, with a warning if the client had a custom one. An ``AsyncOpenAI`` is used
    as it is.
    """
    options: dict[str, Any] = {
        "strategy": strategy,
        "samples": samples,
        "k": k,
        "verifier": verifier,
        "budget": budget,
        "limits": limits,
        "strategy_options": strategy_options,
    }
    if isinstance(client, openai.AsyncOpenAI):
        if http_client is not None:
            raise ConfigError(
                "wrap(http_client=...) is for a sync OpenAI client; an AsyncOpenAI's scaled "
                "calls use its own http_client"
            )
        return ScaledAsyncOpenAI(client, options)
    if isinstance(client, openai.OpenAI):
        return ScaledOpenAI(client, options, portal or default_portal(), http_client)
    raise ConfigError(f"wrap() takes an openai.OpenAI or openai.AsyncOpenAI, got {client!r}")
