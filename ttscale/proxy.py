"""``ttscale serve``: an OpenAI-compatible proxy that answers with a strategy.

The unmodified ``openai`` client talks to it. A request is scaled when it names a preset as its
model, carries a ``ttscale`` body field or ``X-TTScale-*`` headers, or the server has a default
strategy; any other request passes through to the upstream untouched, streaming included. The
request settings are read as :mod:`ttscale.scaling` describes (body, then headers, then preset,
then the server's default).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models`` (the
presets and the upstream's models), ``GET /health`` and ``GET /metrics`` (Prometheus text).

Security: an optional key for the proxy itself (``Authorization: Bearer``), separate from the
upstream key, which is never echoed or logged; per-request caps on samples, answers and tokens
(:class:`~ttscale.scaling.RequestLimits`); a body size limit (413); a limit on requests served at
once, beyond which the proxy answers 429 at once rather than queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import json
import logging
import math
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio
import httpx2
import openai
from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

from ttscale.budget import Spend
from ttscale.errors import ConfigError, DataError, RequestError, SamplerError, UpstreamError
from ttscale.protocols import Sampler
from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
from ttscale.scaling import (
    ChatRequest,
    RequestLimits,
    ScaledAnswer,
    ScaleSettings,
    UnfinishedDraws,
    build_verifier,
    parse_request,
    parse_settings,
    plan_scaled,
    run_scaled,
    settings_from_headers,
    stream_chunks,
    to_response,
)
from ttscale.strategies.graphs import BUILTIN_GRAPHS

__all__ = [
    "BackgroundProxy",
    "Metrics",
    "Proxy",
    "ProxyConfig",
    "create_app",
    "load_presets",
    "parse_preset_option",
]

log = logging.getLogger(__name__)

_EMPTY_PRESETS: Mapping[str, ScaleSettings] = MappingProxyType({})
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class ProxyConfig:
    """Settings of the proxy.

    ``model`` is the upstream model presets use when they name none. ``api_key`` is the upstream's
    key, ``proxy_key`` the one clients must present. ``default`` holds the server's default
    settings: with a ``strategy`` there, every request is scaled. ``count_with_logprobs`` asks the
    upstream for logprobs to count tokens exactly (llama.cpp under-reports usage for ``n > 1``).
    ``allow_request_endpoints`` lets requests name servers and keys in their settings (a graph
    spec's ``models.X.base_url``, a served reward model's ``base_url``); off, they get a 400, as
    the proxy would otherwise send its requests, and any key, wherever a client pointed it.
    ``drain_timeout_s`` bounds how long closing waits for draws that requests left in flight (a
    client hung up mid-sampling) to end and be counted, before the upstream client is closed.
    """

    base_url: str
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    proxy_key: str | None = field(default=None, repr=False)
    presets: Mapping[str, ScaleSettings] = field(default_factory=lambda: _EMPTY_PRESETS)
    default: ScaleSettings = field(default_factory=ScaleSettings)
    default_strategy: str = "majority"
    limits: RequestLimits = field(default_factory=RequestLimits)
    max_body_bytes: int = 1 << 20
    max_concurrent_requests: int = 256
    upstream_concurrency: int = 64
    keep_alive_s: float = 5.0
    allow_code_execution: bool = False
    allow_request_endpoints: bool = False
    count_with_logprobs: bool = False
    max_retries: int = 2
    timeout_s: float = 600.0
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.base_url:
            raise ConfigError("the proxy needs an upstream base URL")
        if self.drain_timeout_s < 0:
            raise ConfigError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        for name in ("max_body_bytes", "max_concurrent_requests", "upstream_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.keep_alive_s <= 0:
            raise ConfigError(f"keep_alive_s must be > 0, got {self.keep_alive_s}")
        object.__setattr__(self, "presets", MappingProxyType(dict(self.presets)))


# -- presets -------------------------------------------------------------------------------------


def load_presets(path: Path) -> dict[str, ScaleSettings]:
    """Presets from a TOML (``[presets.NAME]`` tables) or JSON (``{"NAME": {...}}``) file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read the presets file: {exc}", path=str(path)) from exc
    try:
        raw: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise DataError(
            f"not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}", path=str(path)
        ) from exc
    table = raw.get("presets", raw) if isinstance(raw, dict) else None
    if not isinstance(table, dict):
        raise DataError("expected a table of presets", path=str(path), field="presets")
    presets: dict[str, ScaleSettings] = {}
    for name, settings in table.items():
        try:
            presets[name] = parse_settings(settings, f"presets.{name}", allow_model=True)
        except RequestError as exc:
            raise DataError(str(exc), path=str(path), field=exc.param) from exc
    return presets


def parse_preset_option(text: str) -> tuple[str, ScaleSettings]:
    """``NAME=key=value,key=value`` from the command line (``maj16=strategy=majority,samples=16``).

    Values are read as JSON where they parse (numbers, booleans), else as text.
    """
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise ConfigError(f"--preset {text!r}: expected NAME=key=value,...")
    raw: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--preset {name}: {pair!r} is not key=value")
        try:
            raw[key.strip()] = json.loads(value)
        except ValueError:
            raw[key.strip()] = value.strip()
    try:
        return name, parse_settings(raw, f"preset {name}", allow_model=True)
    except RequestError as exc:
        raise ConfigError(f"--preset {name}: {exc}") from exc


# -- metrics -------------------------------------------------------------------------------------


class Metrics:
    """Counters and a latency histogram, rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.samples = 0
        self.tokens = {"prompt": 0, "completion": 0}
        self.rejected: dict[str, int] = {}
        self.in_flight = 0
        self.latency_counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe(self, endpoint: str, mode: str, status: int, seconds: float) -> None:
        key = (endpoint, mode, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency_sum += seconds
        for position, bound in enumerate(_LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_counts[position] += 1
                break
        else:
            self.latency_counts[-1] += 1

    def spend(self, samples: int, prompt_tokens: int, completion_tokens: int) -> None:
        self.samples += samples
        self.tokens["prompt"] += prompt_tokens
        self.tokens["completion"] += completion_tokens

    def render(self) -> str:
        lines = [
            "# HELP ttscale_requests_total Requests answered, by endpoint, mode and status.",
            "# TYPE ttscale_requests_total counter",
        ]
        for (endpoint, mode, status), count in sorted(self.requests.items()):
            lines.append(
                f'ttscale_requests_total{{endpoint="{endpoint}",mode="{mode}",'
                f'status="{status}"}} {count}'
            )
        lines += [
            "# HELP ttscale_samples_total Samples drawn from the upstream for scaled requests.",
            "# TYPE ttscale_samples_total counter",
            f"ttscale_samples_total {self.samples}",
            "# HELP ttscale_tokens_total Tokens the upstream reported, by kind.",
            "# TYPE ttscale_tokens_total counter",
        ]
        for kind, count in self.tokens.items():
            lines.append(f'ttscale_tokens_total{{kind="{kind}"}} {count}')
        lines += [
            "# HELP ttscale_rejected_total Requests refused before any work, by reason.",
            "# TYPE ttscale_rejected_total counter",
        ]
        for reason, count in sorted(self.rejected.items()):
            lines.append(f'ttscale_rejected_total{{reason="{reason}"}} {count}')
        lines += [
            "# HELP ttscale_in_flight Requests being served now.",
            "# TYPE ttscale_in_flight gauge",
            f"ttscale_in_flight {self.in_flight}",
            "# HELP ttscale_request_latency_seconds Time to answer a request.",
            "# TYPE ttscale_request_latency_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip(_LATENCY_BUCKETS, self.latency_counts, strict=False):
            cumulative += count
            lines.append(f'ttscale_request_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
        total = cumulative + self.latency_counts[-1]
        lines += [
            f'ttscale_request_latency_seconds_bucket{{le="+Inf"}} {total}',
            f"ttscale_request_latency_seconds_sum {self.latency_sum:.6f}",
            f"ttscale_request_latency_seconds_count {total}",
        ]
        return "\n".join(lines) + "\n"


# -- errors --------------------------------------------------------------------------------------


def _error(
    status: int, message: str, *, param: str | None = None, kind: str | None = None
) -> JSONResponse:
    """An error in OpenAI's format."""
    default_kind = {
        401: "authentication_error",
        413: "invalid_request_error",
        429: "rate_limit_exceeded",
    }.get(status, "invalid_request_error" if status < 500 else "upstream_error")
    return JSONResponse(
        {
            "error": {
                "message": message,
                "type": kind or default_kind,
                "param": param,
                "code": None,
            }
        },
        status_code=status,
    )


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


# -- request settings that name a server ---------------------------------------------------------

# Settings keys that would point the proxy's own requests (or its keys) at a place of the client's
# choosing: a graph spec's models, a served reward model, any sampler options nested in them.
ENDPOINT_KEYS = frozenset({"base_url", "api_key", "api_key_env"})


def endpoint_key_path(settings: ScaleSettings) -> tuple[str, ...] | None:
    """Where ``settings`` name a server or a key (``("spec", "models", "big", "base_url")``)."""

    def walk(value: Any, path: tuple[str, ...]) -> tuple[str, ...] | None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                here = (*path, str(key))
                if str(key) in ENDPOINT_KEYS and item not in (None, ""):  # null names nothing
                    return here
                found = walk(item, here)
                if found is not None:
                    return found
        elif isinstance(value, list | tuple):
            for position, item in enumerate(value):
                found = walk(item, (*path[:-1], f"{path[-1]}[{position}]"))
                if found is not None:
                    return found
        return None

    return walk(settings.options, ()) or walk(settings.verifier_options, ("verifier",))


def _refuse_endpoints(settings: ScaleSettings, *, header: bool) -> None:
    path = endpoint_key_path(settings)
    if path is None:
        return
    if header:
        # X-TTScale-Spec: {...} -> "X-TTScale-Spec.models.big.base_url"
        first = "X-TTScale-" + "-".join(part.capitalize() for part in path[0].split("_"))
        param = ".".join((first, *path[1:]))
    else:
        param = ".".join(("ttscale", *path))
    raise RequestError(
        f"{param}: a request may not name a server or a key; the proxy would send its requests "
        "there. Name such models in presets, or let requests do it (ProxyConfig "
        "allow_request_endpoints)",
        param=param,
    )


# -- the proxy -----------------------------------------------------------------------------------


class Proxy:
    """The proxy's state: upstream clients, samplers per upstream model, metrics.

    Per-request state lives in the handlers' locals and in what :func:`plan_scaled` builds;
    what is shared here is read-only after start, or counters updated between awaits.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        # The upstream clients, shared by everything sent upstream: the samplers' requests (on
        # the openai clients) and pass-through requests (sent on their connection pools
        # directly). Several, as OpenAISampler makes them for itself: httpcore's pool looks at
        # every one of its connections on each request, so one pool for 64 requests in flight
        # costs more CPU per request than all the rest of a pass-through.
        shards = max(1, math.ceil(config.upstream_concurrency / 8))
        self._pools = [
            openai.DefaultAsyncHttpxClient(timeout=httpx2.Timeout(config.timeout_s, connect=5.0))
            for _ in range(shards)
        ]
        self._clients = [
            openai.AsyncOpenAI(
                base_url=config.base_url,
                api_key=config.api_key or "not-needed",
                max_retries=config.max_retries,
                timeout=config.timeout_s,
                http_client=pool,
            )
            for pool in self._pools
        ]
        self._pool_in_flight = [0] * shards
        self.upstream = self._clients[0]
        base = str(self.upstream.base_url).rstrip("/")
        self._urls = {
            True: httpx2.URL(base + "/chat/completions"),
            False: httpx2.URL(base + "/completions"),
        }
        # Identity: a relayed stream's bytes go to the client as they came, so they must not be
        # compressed (and decoding a whole answer costs CPU for nothing).
        self._upstream_headers = {
            "Authorization": f"Bearer {config.api_key or 'not-needed'}",
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
        }
        self._samplers: dict[tuple[str, bool], OpenAISampler] = {}
        self._proxy_key = config.proxy_key.encode() if config.proxy_key else None
        # Requests that ended without an answer (hung up, failed) still spent what their draws
        # cost, those in flight included: the metrics count it once they have ended.
        self.unfinished = UnfinishedDraws(on_spent=self._count_spend)

    async def aclose(self) -> None:
        # Closing the client under draws still in flight would fail them uncounted, though the
        # upstream bills them; a stuck upstream may hold shutdown only so long.
        if not await self.unfinished.drain(self.config.drain_timeout_s):
            log.warning(
                "closing with draws of %d ended request(s) still in flight after %.3g s; "
                "their usage is not in the metrics",
                len(self.unfinished),
                self.config.drain_timeout_s,
            )
        for sampler in self._samplers.values():
            await sampler.aclose()
        for client in self._clients:
            await client.close()
        for pool in self._pools:
            await pool.aclose()

    def sampler(self, model: str, chat: bool) -> OpenAISampler:
        key = (model, chat)
        sampler = self._samplers.get(key)
        if sampler is None:
            # On the proxy's own upstream clients: every model and API shares their connection
            # pools (with pass-through requests too) and what one sampler learnt of the
            # endpoint's n (OpenAISampler keeps that memory per client), so a model asked for
            # the first time does not pay for a rejected n > 1 again.
            sampler = self._samplers[key] = OpenAISampler(
                OpenAISamplerConfig(
                    model=model,
                    base_url=self.config.base_url,
                    api_key_env=None,
                    endpoint="chat" if chat else "completions",
                    concurrency=self.config.upstream_concurrency,
                    max_retries=self.config.max_retries,
                    timeout=self.config.timeout_s,
                ),
                client=self._clients,
            )
        return sampler

    def authorised(self, request: Request) -> bool:
        if self._proxy_key is None:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._proxy_key
        )

    def verifier_factory(self, name: str, options: Mapping[str, Any], sampler: Sampler) -> Any:
        options = dict(options)
        if name == "unit_tests":
            if options.pop("allow_code_execution", None) is not None:
                raise RequestError(
                    "allow_code_execution is the server's to set (ttscale serve "
                    "--allow-code-execution), not a request's",
                    param="ttscale.verifier",
                )
            options["allow_code_execution"] = self.config.allow_code_execution
        return build_verifier(name, options, sampler=sampler)

    # -- generation endpoints ----------------------------------------------------------------

    async def generate(self, request: Request, chat: bool) -> Response:
        endpoint = "chat" if chat else "completions"
        started = time.perf_counter()
        metrics = self.metrics
        if not self.authorised(request):
            metrics.rejected["auth"] = metrics.rejected.get("auth", 0) + 1
            return _error(401, "missing or wrong proxy API key (Authorization: Bearer ...)")
        if metrics.in_flight >= self.config.max_concurrent_requests:
            metrics.rejected["busy"] = metrics.rejected.get("busy", 0) + 1
            return _error(
                429,
                f"the proxy is serving {metrics.in_flight} requests, its limit; retry shortly",
            )
        slot = _Slot(metrics, endpoint, started)
        try:
            slot.mode, response = await self._generate(request, chat)
            slot.status = response.status_code
            if isinstance(response, _HeldStream):
                # A stream's work runs after this returns, while the body is sent: the slot and
                # the latency clock pass to the response, which releases them when it ends.
                response.slot = slot
            return response
        finally:
            if slot.owner is None:
                slot.release()

    async def _generate(self, request: Request, chat: bool) -> tuple[str, Response]:
        try:
            raw = await _read_body(request, self.config.max_body_bytes)
        except _BodyTooLarge:
            return "rejected", _error(
                413,
                "the request body is over this server's limit of "
                f"{self.config.max_body_bytes} bytes",
            )
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return "rejected", _error(400, f"the request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return "rejected", _error(400, "the request body must be a JSON object")
        try:
            header_settings = settings_from_headers(request.headers)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise RequestError("model must be a non-empty string", param="model")
            preset = self.config.presets.get(model) if isinstance(model, str) else None
            if (
                preset is None
                and "ttscale" not in body
                and header_settings.empty
                and self.config.default.strategy is None
            ):
                return "passthrough", await self._pass_through(body, raw, chat)
            parsed = parse_request(body, chat=chat, limits=self.config.limits)
            for source, header in ((parsed.settings, False), (header_settings, True)):
                spec = source.options.get("spec")
                if isinstance(spec, str) and spec not in BUILTIN_GRAPHS:
                    # A path would read the server's files; requests send specs inline.
                    raise RequestError(
                        "a graph spec in a request must be an inline object; name spec files "
                        "in presets",
                        param="ttscale.spec",
                    )
                if not self.config.allow_request_endpoints:
                    _refuse_endpoints(source, header=header)
            settings = parsed.settings.over(header_settings)
            if preset is not None:
                settings = settings.over(preset)
            settings = settings.over(self.config.default)
            upstream_model = settings.model or (
                self.config.model if preset is not None else parsed.model
            )
            if upstream_model is None:
                raise RequestError(
                    f"preset {parsed.model!r} names no upstream model and the server has no "
                    "--model",
                    param="model",
                )
            if self.config.count_with_logprobs and parsed.params.logprobs is None:
                parsed = _with_counting_logprobs(parsed)
            sampler = self.sampler(upstream_model, chat)
            plan = plan_scaled(
                parsed,
                settings,
                sampler,
                limits=self.config.limits,
                default_strategy=self.config.default_strategy,
                verifier_factory=self.verifier_factory,
            )
        except RequestError as exc:
            return "rejected", _error(exc.status, str(exc), param=exc.param)
        if parsed.stream:
            return "scaled", _HeldStream(
                self._stream_scaled(plan, sampler, parsed.model),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            answer = await run_scaled(plan, sampler, unfinished=self.unfinished)
        except RequestError as exc:
            return "scaled", _error(exc.status, str(exc), param=exc.param)
        except (SamplerError, ConfigError) as exc:
            return "scaled", self._failure(exc)
        self._count(answer)
        return "scaled", JSONResponse(to_response(answer, parsed.model))

    def _failure(self, exc: Exception) -> JSONResponse:
        if isinstance(exc, UpstreamError):
            log.warning("upstream failed: %s", exc)
            return _error(502, f"the upstream model server failed: {exc}")
        if isinstance(exc, SamplerError):
            log.warning("sampling failed: %s", exc)
            return _error(502, f"sampling failed: {exc}")
        return _error(400, str(exc))

    def _count(self, answer: ScaledAnswer) -> None:
        usage = answer.usage
        self.metrics.spend(usage.samples, usage.prompt_tokens, usage.completion_tokens)

    def _count_spend(self, spent: Spend) -> None:
        self.metrics.spend(spent.samples, spent.prompt_tokens, spent.completion_tokens)

    async def _stream_scaled(
        self, plan: Any, sampler: OpenAISampler, model: str
    ) -> AsyncGenerator[bytes, None]:
        task = asyncio.create_task(run_scaled(plan, sampler, unfinished=self.unfinished))
        try:
            # SSE comments keep idle-timeout proxies and clients from dropping the connection
            # while the samples are drawn; clients ignore them.
            yield b": ttscale sampling\n\n"
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.config.keep_alive_s)
                if done:
                    break
                yield b": keep-alive\n\n"
            try:
                answer = task.result()
            except (RequestError, SamplerError, ConfigError) as exc:
                failure = json.loads(bytes(self._failure(exc).body))
                yield b"data: " + json.dumps(failure).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
                return
            self._count(answer)
            for chunk in stream_chunks(answer, model):
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            if not task.done():
                # The client went away: stop drawing for it.
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _pass_through(self, body: dict[str, Any], raw: bytes, chat: bool) -> Response:
        # The client's bytes go upstream as they came, on the upstream clients' connection pools
        # but around the openai client's request building (options, headers, URL, JSON
        # encoding), which costs more CPU than the rest of a pass-through together. The
        # upstream's answer, errors included, comes back as it was sent (the client's own
        # retries see a 429 or a 5xx); only a connection that could not be made is retried.
        shard = min(range(len(self._pools)), key=self._pool_in_flight.__getitem__)
        self._pool_in_flight[shard] += 1
        handed_over = False
        try:
            upstream = await self._send_upstream(shard, chat, raw)
            if isinstance(upstream, JSONResponse):
                return upstream
            headers = _relayed_headers(upstream.headers)
            if body.get("stream") and upstream.status_code < 400:
                handed_over = True  # the stream's end gives the pool back
                return _HeldStream(
                    _relay(upstream),
                    status_code=upstream.status_code,
                    headers=headers,
                    cleanup=functools.partial(self._end_relay, shard, upstream),
                )
            try:
                content = await upstream.aread()
            except httpx2.TransportError as exc:
                log.warning("upstream failed: %s", exc)
                return _error(502, f"the upstream model server failed: {exc}")
            finally:
                await upstream.aclose()
        finally:
            if not handed_over:
                self._pool_in_flight[shard] -= 1
        if upstream.status_code < 400:
            self._count_passthrough(content)
        return Response(content, status_code=upstream.status_code, headers=headers)

    async def _end_relay(self, shard: int, upstream: httpx2.Response) -> None:
        self._pool_in_flight[shard] -= 1
        await upstream.aclose()

    async def _send_upstream(
        self, shard: int, chat: bool, raw: bytes
    ) -> httpx2.Response | JSONResponse:
        request = httpx2.Request(
            "POST", self._urls[chat], headers=self._upstream_headers, content=raw
        )
        for attempt in range(self.config.max_retries + 1):
            try:
                return await self._pools[shard].send(request, stream=True)
            except httpx2.ConnectError as exc:
                # Nothing reached the upstream: safe to try again, as the openai client would.
                if attempt == self.config.max_retries:
                    log.warning("upstream unreachable: %s", exc)
                    return _error(502, f"could not reach the upstream model server: {exc}")
                await asyncio.sleep(min(0.5 * 2**attempt, 8.0))
            except httpx2.TransportError as exc:
                log.warning("upstream failed: %s", exc)
                return _error(502, f"the upstream model server failed: {exc}")
        raise AssertionError("unreachable")

    def _count_passthrough(self, content: bytes) -> None:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            reply = json.loads(content)
            usage = reply.get("usage") or {}
            self.metrics.spend(
                len(reply.get("choices") or ()),
                int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", 0)),
            )

    async def models(self, request: Request) -> Response:
        if not self.authorised(request):
            return _error(401, "missing or wrong proxy API key (Authorization: Bearer ...)")
        data: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "ttscale",
                "ttscale": {"preset": preset.to_dict()},
            }
            for name, preset in sorted(self.config.presets.items())
        ]
        try:
            listing: Any = await self.upstream.get("/models", cast_to=object)
            for model in (listing or {}).get("data", []):
                if isinstance(model, dict) and model.get("id") not in self.config.presets:
                    data.append(model)
        except (openai.APIError, AttributeError) as exc:
            log.warning("could not list the upstream's models: %s", exc)
        return JSONResponse({"object": "list", "data": data})


@dataclass
class _Slot:
    """One request's place among those served at once, and its latency clock.

    Held from admission until the answer is sent: for a stream that is when the last byte went
    out or the client hung up, not when the handler returned.
    """

    metrics: Metrics
    endpoint: str
    started: float
    mode: str = "error"
    status: int = 500
    owner: object | None = None
    released: bool = False

    def __post_init__(self) -> None:
        self.metrics.in_flight += 1

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.metrics.in_flight -= 1
        self.metrics.observe(
            self.endpoint, self.mode, self.status, time.perf_counter() - self.started
        )


class _HeldStream(StreamingResponse):
    """A streamed answer that holds its request's slot until the stream has ended.

    Ending covers every way out: the last chunk sent, the client gone (Starlette stops sending),
    or an error. The body iterator is closed then too, so that a scaled stream's sampling stops
    and a relayed upstream response is closed even if sending never started. A stream the client
    left before its end is counted with status 499 (nginx's "client closed request").
    """

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        *,
        cleanup: Callable[[], Awaitable[None]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(self._until_the_end(content), **options)
        self._content = content
        self._cleanup = cleanup
        self._slot: _Slot | None = None
        self._ended = False

    @property
    def slot(self) -> _Slot | None:
        return self._slot

    @slot.setter
    def slot(self, slot: _Slot) -> None:
        slot.owner = self
        self._slot = slot

    async def _until_the_end(self, content: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
        async for chunk in content:
            yield chunk
        self._ended = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Starlette returns normally when the client hangs up; a failure while streaming raises.
        hung_up = True
        try:
            await super().__call__(scope, receive, send)
        except Exception as exc:
            hung_up = isinstance(exc, ClientDisconnect | OSError)
            raise
        finally:
            if self._slot is not None:
                if not self._ended:
                    self._slot.status = 499 if hung_up else 500
                # First, and without awaiting: nothing below can keep the slot taken.
                self._slot.release()
            # Shielded: a cancelled request must still close what it opened.
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await self._content.aclose()
                if self._cleanup is not None:
                    with contextlib.suppress(Exception):
                        await self._cleanup()


# Headers that describe one hop, or the body as the proxy sends it again, not the answer.
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)


def _relayed_headers(headers: httpx2.Headers) -> dict[str, str]:
    """The upstream's headers a relayed answer keeps (content type, retry-after, request ids)."""
    kept = {name: value for name, value in headers.items() if name not in _HOP_HEADERS}
    kept.setdefault("content-type", "application/json")
    return kept


async def _relay(upstream: httpx2.Response) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        await upstream.aclose()


def _with_counting_logprobs(request: ChatRequest) -> ChatRequest:
    return dataclasses.replace(request, params=request.params.replace(logprobs=0))


def create_app(config: ProxyConfig) -> FastAPI:
    """The proxy as an ASGI app (run it with uvicorn, or ``ttscale serve``); the
    :class:`Proxy` is ``app.state.proxy``."""
    proxy = Proxy(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await proxy.aclose()

    async def chat_completions(request: Request) -> Response:
        return await proxy.generate(request, chat=True)

    async def completions(request: Request) -> Response:
        return await proxy.generate(request, chat=False)

    async def models(request: Request) -> Response:
        return await proxy.models(request)

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "in_flight": proxy.metrics.in_flight})

    async def metrics(request: Request) -> Response:
        if not proxy.authorised(request):
            return _error(401, "missing or wrong proxy API key (Authorization: Bearer ...)")
        return Response(proxy.metrics.render(), media_type="text/plain; version=0.0.4")

    async def no_route(request: Request, exc: Exception) -> Response:
        # Unknown paths and methods get an error in OpenAI's shape too, not the framework's.
        status = getattr(exc, "status_code", 404)
        what = "path" if status == 404 else f"method {request.method} for"
        return _error(status, f"no such endpoint: {what} {request.url.path}")

    # FastAPI serving plain Starlette routes: its per-route request handling (dependency solving,
    # body validation) cost a tenth of a pass-through's CPU, and these handlers validate the
    # OpenAI body themselves to name the failing field in OpenAI's error shape. No docs routes:
    # the proxy's surface is the OpenAI API and nothing else.
    app = FastAPI(
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        exception_handlers={404: no_route, 405: no_route},
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.proxy = proxy
    return app


class BackgroundProxy:
    """The proxy served by uvicorn on a daemon thread: for tests, notebooks and benchmarks.

    ``with BackgroundProxy(config) as proxy: OpenAI(base_url=proxy.base_url, ...)``. Port 0 takes a
    free port; :attr:`base_url` ends in ``/v1``.
    """

    def __init__(self, config: ProxyConfig, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket

        import uvicorn

        self.app = create_app(config)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app, log_level="warning", access_log=False, lifespan="on", backlog=2048
            )
        )
        self._thread: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def proxy(self) -> Proxy:
        proxy: Proxy = self.app.state.proxy
        return proxy

    def start(self) -> BackgroundProxy:
        import threading

        def run() -> None:
            self._server.run(sockets=[self._socket])

        self._thread = threading.Thread(target=run, name="ttscale-proxy", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("the proxy did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._thread = None
        self._socket.close()

    def __enter__(self) -> BackgroundProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
