"""``ttscale serve``: an OpenAI-compatible proxy that answers with a strategy.

The unmodified ``openai`` client talks to it. A request is scaled when it names a preset as its
model, carries a ``ttscale`` body field or ``X-TTScale-*`` headers, or the server has a default
strategy; any other request passes through to the upstream untouched, streaming included. The
request settings are resolved by :func:`ttscale.settings.resolve_settings` (body, then headers,
then preset, then the server's default); the HTTP side (errors, metrics, streams) is
:mod:`ttscale.serving`.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models`` (the
presets and the upstream's models), ``GET /health`` and ``GET /metrics`` (Prometheus text).

Security: an optional key for the proxy itself (``Authorization: Bearer``), separate from the
upstream key, which is never echoed or logged; per-request caps on samples, answers and tokens
(:class:`~ttscale.settings.RequestLimits`), which every draw of a request meets at its budget
whatever the strategy; a body size limit (413); a limit on requests served at once, beyond which
the proxy answers 429 at once rather than queueing. Bad input is a 4xx naming the field, never a
5xx; a client that hangs up is counted as 499 and its sampling stopped.
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
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

from ttscale.budget import Spend
from ttscale.errors import ConfigError, DataError, RequestError, TTScaleError
from ttscale.registry import check_request
from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
from ttscale.samplers.upstream import UpstreamClients
from ttscale.scaling import ScaledPlan, UnfinishedDraws, plan_scaled, run_scaled
from ttscale.serving import (
    BodyAbandoned,
    BodyTooLarge,
    BodyTooSlow,
    HeldStream,
    Metrics,
    Slot,
    StreamSpend,
    error_for,
    error_response,
    read_body,
    relay,
    relayed_headers,
)
from ttscale.settings import (
    RequestLimits,
    ScaleSettings,
    header_name,
    parse_settings,
    resolve_settings,
    settings_from_headers,
)
from ttscale.wire import (
    ChatRequest,
    ScaledAnswer,
    capped_pass_through,
    decode_body,
    encode_answer,
    parse_request,
    stream_chunks,
    to_response,
    usage_count,
)

__all__ = [
    "BackgroundProxy",
    "Metrics",
    "Proxy",
    "ProxyConfig",
    "create_app",
    "endpoint_key_path",
    "load_presets",
    "parse_default_option",
    "parse_preset_option",
    "parse_settings_option",
]

log = logging.getLogger(__name__)

_EMPTY_PRESETS: Mapping[str, ScaleSettings] = MappingProxyType({})
_UNAUTHORISED = "missing or wrong proxy API key (Authorization: Bearer ...)"


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
    ``body_timeout_s`` bounds how long a request's body may take to arrive (408 after it): a
    client trickling bytes would otherwise hold its slot among the requests served at once.
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
    body_timeout_s: float = 30.0
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
        if not self.body_timeout_s > 0:
            raise ConfigError(f"body_timeout_s must be > 0, got {self.body_timeout_s}")
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
        except ConfigError as exc:
            raise DataError(str(exc), path=str(path), field=exc.param) from exc
    return presets


def parse_preset_option(text: str) -> tuple[str, ScaleSettings]:
    """``NAME=key=value,key=value`` from the command line (``maj16=strategy=majority,samples=16``).

    Values are read as JSON where they parse (numbers, booleans), else as text; a dotted key sets
    a key of an object (``sampling.temperature=0.7``, ``budget.tokens=20000``).
    """
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise ConfigError(f"--preset {text!r}: expected NAME=key=value,...")
    return name, parse_settings_option(
        rest, f"preset {name}", label=f"--preset {name}", allow_model=True
    )


def parse_default_option(text: str) -> ScaleSettings:
    """``--default-strategy NAME,key=value,...``: the server's default settings, written as a
    preset's (``majority,samples=8,sampling.temperature=0.7``)."""
    name, _, rest = text.partition(",")
    if "=" in name:
        name, rest = "", text
    settings = parse_settings_option(rest, "default", label="--default-strategy")
    return settings.over(ScaleSettings(strategy=name)) if name else settings


def parse_settings_option(
    text: str, where: str, *, label: str | None = None, allow_model: bool = False
) -> ScaleSettings:
    """Settings written ``key=value,key=value`` (a preset's, or ``--default-strategy``'s);
    errors name ``where`` (``param``) after ``label``."""
    label = label or where
    raw: dict[str, Any] = {}
    for pair in filter(None, text.split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"{label}: {pair!r} is not key=value")
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value.strip()
        *parents, last = key.strip().split(".")
        target = raw
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{label}: {key.strip()!r} sets a key of {parent!r}, a value")
        target[last] = parsed
    try:
        return parse_settings(raw, where, allow_model=allow_model)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}", param=exc.param) from exc


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
        first = header_name(path[0])
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


@dataclass(frozen=True)
class _Scaled:
    """A scaled request, checked and planned: what answering it needs."""

    plan: ScaledPlan
    sampler: OpenAISampler
    model: str


class Proxy:
    """The proxy's state: upstream clients, samplers per upstream model, metrics.

    Per-request state lives in the handlers' locals and in what :func:`plan_scaled` builds;
    what is shared here is read-only after start, or counters updated between awaits.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        # The upstream clients, shared by everything sent upstream: the samplers' requests and
        # pass-through requests (sent on their connection pools directly), balanced together.
        self.upstream_clients = UpstreamClients.create(
            base_url=config.base_url,
            api_key=config.api_key,
            max_retries=config.max_retries,
            timeout=config.timeout_s,
            shards=max(1, math.ceil(config.upstream_concurrency / 8)),
            with_pools=True,
        )
        # The openai clients are made on first use (importing openai is most of a start-up).
        base = self.upstream_clients.base_url.rstrip("/")
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
        # What the server sets for any verifier that has it; a request may not.
        self._server_options = {"allow_code_execution": config.allow_code_execution}
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
        await self.upstream_clients.aclose()

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
                client=self.upstream_clients,
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

    # -- generation endpoints ----------------------------------------------------------------

    async def generate(self, request: Request, chat: bool) -> Response:
        endpoint = "chat" if chat else "completions"
        started = time.perf_counter()
        metrics = self.metrics
        if not self.authorised(request):
            metrics.rejected["auth"] = metrics.rejected.get("auth", 0) + 1
            return error_response(401, _UNAUTHORISED)
        if metrics.in_flight >= self.config.max_concurrent_requests:
            metrics.rejected["busy"] = metrics.rejected.get("busy", 0) + 1
            return error_response(
                429,
                f"the proxy is serving {metrics.in_flight} requests, its limit; retry shortly",
            )
        slot = Slot(metrics, endpoint, started)
        try:
            slot.mode, response = await self._generate(request, chat)
            slot.status = response.status_code
            if isinstance(response, HeldStream):
                # A stream's work runs after this returns, while the body is sent: the slot and
                # the latency clock pass to the response, which releases them when it ends.
                response.slot = slot
            return response
        finally:
            if slot.owner is None:
                slot.release()

    async def _generate(self, request: Request, chat: bool) -> tuple[str, Response]:
        try:
            raw = await read_body(request, self.config.max_body_bytes, self.config.body_timeout_s)
        except BodyTooLarge:
            return "rejected", error_response(
                413,
                "the request body is over this server's limit of "
                f"{self.config.max_body_bytes} bytes",
            )
        except BodyTooSlow:
            return "rejected", error_response(
                408, f"the request body did not arrive within {self.config.body_timeout_s:g} s"
            )
        except BodyAbandoned:
            return "rejected", error_response(499, "the client closed the request while sending it")
        try:
            body = decode_body(raw)
            header_settings = settings_from_headers(request.headers)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise RequestError("model must be a non-empty string", param="model")
            preset = self.config.presets.get(model)
            if (
                preset is None
                and "ttscale" not in body
                and header_settings.empty
                and self.config.default.strategy is None
            ):
                raw = capped_pass_through(raw, body, chat, self.config.limits)
                return "passthrough", await self._pass_through(body, raw, chat)
            scaled = self._plan(body, chat, header_settings, preset)
        except TTScaleError as exc:
            return "rejected", error_for(exc)
        if scaled.plan.request.stream:
            return "scaled", HeldStream(
                self._stream_scaled(scaled),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return "scaled", await self._answer(request, scaled)

    def _plan(
        self,
        body: Mapping[str, Any],
        chat: bool,
        header_settings: ScaleSettings,
        preset: ScaleSettings | None,
    ) -> _Scaled:
        """Check a scaled request and build what answers it; nothing is drawn."""
        parsed = parse_request(body, chat=chat, limits=self.config.limits)
        settings = resolve_settings(parsed.settings, header_settings, preset, self.config.default)
        strategy = settings.strategy or self.config.default_strategy
        for source, where in ((parsed.settings, "ttscale"), (header_settings, "X-TTScale")):
            check_request(strategy, source.options, where=where)
            if source.verifier is not None:
                check_request(
                    source.verifier,
                    source.verifier_options,
                    where=f"{where}.verifier",
                    kind="verifier",
                )
            if not self.config.allow_request_endpoints:
                _refuse_endpoints(source, header=where != "ttscale")
        upstream_model = settings.model or (
            self.config.model if preset is not None else parsed.model
        )
        if upstream_model is None:
            raise RequestError(
                f"preset {parsed.model!r} names no upstream model and the server has no --model",
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
            server_options=self._server_options,
        )
        return _Scaled(plan, sampler, parsed.model)

    async def _answer(self, request: Request, scaled: _Scaled) -> Response:
        """Run a scaled request; a client that hangs up first stops it and is counted as 499."""
        task = asyncio.create_task(
            run_scaled(scaled.plan, scaled.sampler, unfinished=self.unfinished)
        )
        gone = asyncio.create_task(_hung_up(request))
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not task.done():
                # The client went away (or this handler was cancelled): stop drawing for it.
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if task.cancelled():
            return error_response(499, "the client closed the request before its answer")
        failure = task.exception()
        if failure is not None:
            if not isinstance(failure, Exception):
                raise failure
            return error_for(failure)
        answer = task.result()
        self._count(answer)
        return Response(
            encode_answer(to_response(answer, scaled.model)), media_type="application/json"
        )

    def _count(self, answer: ScaledAnswer) -> None:
        usage = answer.usage
        self.metrics.spend(usage.samples, usage.prompt_tokens, usage.completion_tokens)

    def _count_spend(self, spent: Spend) -> None:
        self.metrics.spend(spent.samples, spent.prompt_tokens, spent.completion_tokens)

    async def _stream_scaled(self, scaled: _Scaled) -> AsyncGenerator[bytes, None]:
        task = asyncio.create_task(
            run_scaled(scaled.plan, scaled.sampler, unfinished=self.unfinished)
        )
        try:
            # SSE comments keep idle-timeout proxies and clients from dropping the connection
            # while the samples are drawn; clients ignore them.
            yield b": ttscale sampling\n\n"
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.config.keep_alive_s)
                if done:
                    break
                yield b": keep-alive\n\n"
            failure = task.exception()
            if failure is not None:
                if not isinstance(failure, Exception):
                    raise failure
                yield b"data: " + bytes(error_for(failure).body) + b"\n\n"
                yield b"data: [DONE]\n\n"
                return
            answer = task.result()
            self._count(answer)
            for chunk in stream_chunks(answer, scaled.model):
                yield b"data: " + encode_answer(chunk) + b"\n\n"
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
        clients = self.upstream_clients
        shard = clients.acquire()
        handed_over = False
        try:
            upstream = await self._send_upstream(shard, chat, raw)
            if isinstance(upstream, JSONResponse):
                return upstream
            headers = relayed_headers(upstream.headers)
            if body.get("stream") and upstream.status_code < 400:
                handed_over = True  # the stream's end gives the pool back
                spend = StreamSpend(upstream.headers)
                return HeldStream(
                    relay(upstream, spend),
                    status_code=upstream.status_code,
                    headers=headers,
                    cleanup=functools.partial(self._end_relay, shard, upstream, spend),
                )
            try:
                content = await upstream.aread()
            except httpx2.TransportError as exc:
                log.warning("upstream failed: %s", exc)
                return error_response(502, f"the upstream model server failed: {exc}")
            finally:
                await upstream.aclose()
        finally:
            if not handed_over:
                clients.release(shard)
        if upstream.status_code < 400:
            self._count_passthrough(content)
        return Response(content, status_code=upstream.status_code, headers=headers)

    async def _end_relay(self, shard: int, upstream: httpx2.Response, spend: StreamSpend) -> None:
        self.upstream_clients.release(shard)
        await upstream.aclose()
        # What the stream said it cost (its usage, when the client asked for one) is counted as
        # a whole answer's is; a stream cut short counts what it said before it was.
        spend.close()
        self.metrics.spend(
            len(spend.finished),
            usage_count(spend.usage, "prompt_tokens"),
            usage_count(spend.usage, "completion_tokens"),
        )

    async def _send_upstream(
        self, shard: int, chat: bool, raw: bytes
    ) -> httpx2.Response | JSONResponse:
        request = httpx2.Request(
            "POST", self._urls[chat], headers=self._upstream_headers, content=raw
        )
        pool = self.upstream_clients.pools[shard]
        for attempt in range(self.config.max_retries + 1):
            try:
                return await pool.send(request, stream=True)
            except httpx2.ConnectError as exc:
                # Nothing reached the upstream: safe to try again, as the openai client would.
                if attempt == self.config.max_retries:
                    log.warning("upstream unreachable: %s", exc)
                    return error_response(502, f"could not reach the upstream model server: {exc}")
                await asyncio.sleep(min(0.5 * 2**attempt, 8.0))
            except httpx2.TransportError as exc:
                log.warning("upstream failed: %s", exc)
                return error_response(502, f"the upstream model server failed: {exc}")
        raise AssertionError("unreachable")

    def _count_passthrough(self, content: bytes) -> None:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            reply = json.loads(content)
            usage = reply.get("usage")
            self.metrics.spend(
                len(reply.get("choices") or ()),
                usage_count(usage, "prompt_tokens"),
                usage_count(usage, "completion_tokens"),
            )

    async def models(self, request: Request) -> Response:
        if not self.authorised(request):
            return error_response(401, _UNAUTHORISED)
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
        import openai

        try:
            upstream = self.upstream_clients.clients[0]
            listing: Any = await upstream.get("/models", cast_to=object)
            for model in (listing or {}).get("data", []):
                if isinstance(model, dict) and model.get("id") not in self.config.presets:
                    data.append(model)
        except (openai.APIError, AttributeError) as exc:
            log.warning("could not list the upstream's models: %s", exc)
        return JSONResponse({"object": "list", "data": data})


async def _hung_up(request: Request) -> None:
    """Return once the client has closed its connection (the body was read before)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _with_counting_logprobs(request: ChatRequest) -> ChatRequest:
    return dataclasses.replace(request, params=request.params.replace(logprobs=0))


def create_app(config: ProxyConfig) -> Starlette:
    """The proxy as an ASGI app (run it with uvicorn, or ``ttscale serve``); the
    :class:`Proxy` is ``app.state.proxy``."""
    proxy = Proxy(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
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
            return error_response(401, _UNAUTHORISED)
        return Response(proxy.metrics.render(), media_type="text/plain; version=0.0.4")

    async def no_route(request: Request, exc: Exception) -> Response:
        # Unknown paths and methods get an error in OpenAI's shape too, not the framework's.
        status = getattr(exc, "status_code", 404)
        what = "path" if status == 404 else f"method {request.method} for"
        return error_response(status, f"no such endpoint: {what} {request.url.path}")

    # Plain Starlette routes: FastAPI's per-route request handling (dependency solving, body
    # validation) cost a tenth of a pass-through's CPU, and importing it (with pydantic) most of
    # a start-up; these handlers validate the OpenAI body themselves to name the failing field
    # in OpenAI's error shape. No docs routes: the proxy's surface is the OpenAI API alone.
    app = Starlette(
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
    app.router.redirect_slashes = False  # /v1/chat/completions/ is a 404 in OpenAI's shape
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
