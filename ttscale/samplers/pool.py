"""One model served by several endpoints: routing, failover and health checks.

:class:`PoolSampler` is a :class:`~ttscale.protocols.Sampler` over a pool of endpoints that serve
the same model (several vLLM replicas, a few llama.cpp servers). Each endpoint is an
:class:`~ttscale.samplers.openai_sampler.OpenAISampler` built from a base URL, or any Sampler given
ready-made.

What it guarantees:

- A call is split into chunks of at most ``max_n`` consecutive sample indices, exactly as one
  ``OpenAISampler`` would split it, so a sample's seed (derived from the base seed and the index
  of its chunk's first sample) does not depend on which endpoint drew it, nor on how many there are.
- Each chunk goes to the healthy endpoint with the fewest outstanding chunks, never past an
  endpoint's own concurrency bound. Ties go first to an endpoint that is not markedly slower
  (smoothed chunk time over ``SLOWER`` times the fastest endpoint's), then to the one with more
  room, then to the one with fewer requests: a slow endpoint keeps getting work while it has
  fewer chunks in flight than the others, but not when the pool is idle, where the request count
  alone would send every lone request to it for being the one that finished the fewest.
- When an endpoint fails (a ``SamplerError`` or any other error short of a bad request), the
  samples it did deliver (the error's ``partial``) are kept, the endpoint counts a failure (and
  after ``failure_threshold`` failures in a row is taken out for ``cooldown`` seconds), and only
  the missing indices are sent elsewhere, with the same indices and so the same seeds. Every
  sample arrives exactly once; usage is the sum of what every endpoint reported, failed requests
  included, and nothing is counted twice.
- An endpoint whose cool-down is over is probed (``GET {base_url}/models``) before it is used
  again; ``health_check_interval`` adds a background probe of every endpoint.
- When every endpoint is down, the call raises :class:`EndpointsDown` (a ``SamplerError``)
  carrying every sample that did arrive, once the chunks still in flight have finished.
- A bad request (a 400/413/422 answer, or a ``ConfigError``) would fail on any endpoint: it is
  raised as it is, with the samples that arrived as its ``partial``, and marks no endpoint down.
- :meth:`PoolSampler.with_model` gives the pool asking another model name of the same endpoints
  (for multi-model strategies such as graphs). The two share each endpoint's state: its health (a
  server that is down is down whatever model it is asked for), its outstanding chunks and so its
  concurrency bound (one server's capacity, shared by every model it serves), its health checks.

The routing decisions are plain functions over frozen :class:`EndpointState` snapshots
(:func:`split_runs`, :func:`pick_endpoint`, :func:`chunk_finished`, :func:`probe_due`, ...), so
they can be tested without an event loop; they are :mod:`ttscale.samplers.routing` (re-exported
here).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx2

from ttscale.errors import ConfigError, SamplerError, UpstreamError
from ttscale.protocols import Sampler, check_draw, with_model
from ttscale.registry import resolve_config
from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig, merge_params
from ttscale.samplers.routing import (
    EndpointState,
    all_down,
    chunk_dispatched,
    chunk_finished,
    chunk_released,
    pick_endpoint,
    probe_due,
    probe_finished,
    probe_started,
    reopen,
    split_runs,
)
from ttscale.seeds import random_base_seed
from ttscale.types import Candidate, Pricing, Prompt, SampleBatch, SamplingParams, Usage

__all__ = ["EndpointsDown", "PoolConfig", "PoolEndpoint", "PoolSampler"]

log = logging.getLogger(__name__)

Api = Literal["chat", "completions"]
NMode = Literal["auto", "always", "never"]

# Answers that any endpoint would give to the same request: failing over cannot help.
_REQUEST_ERROR_STATUSES = frozenset({400, 413, 422})


class EndpointsDown(SamplerError):
    """Every endpoint of a :class:`PoolSampler` is down; ``partial`` holds what did arrive."""


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolEndpoint:
    """One endpoint of a pool, when it needs more than a URL.

    ``target`` is a base URL (``http://host:8000/v1``) or a ready Sampler. ``concurrency`` bounds
    the chunks in flight to it (default: the pool's). ``probe_url`` is what a health check GETs;
    by default ``{base_url}/models`` for a URL or an ``OpenAISampler``, and none for other
    samplers, which are simply tried again after their cool-down.
    """

    target: str | Sampler
    concurrency: int | None = None
    name: str | None = None
    probe_url: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.target, str):
            if not self.target.strip():
                raise ConfigError("a pool endpoint URL cannot be empty")
        elif not isinstance(self.target, Sampler):
            raise ConfigError(f"pool endpoint {self.target!r} is neither a URL nor a Sampler")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"endpoint concurrency must be >= 1, got {self.concurrency}")


@dataclass(frozen=True)
class PoolConfig:
    """Settings of a :class:`PoolSampler`.

    ``endpoints`` holds base URLs, ready Samplers or :class:`PoolEndpoint` entries (a string of
    comma-separated URLs is accepted too). ``model`` is needed when any endpoint is a URL.
    ``concurrency`` is the default bound of chunks in flight per endpoint (a chunk is one request
    when the server honours ``n``). A call is split into chunks of ``max_n`` samples.
    After ``failure_threshold`` failures in a row an endpoint is down for ``cooldown`` seconds, then
    probed; ``health_check_interval`` (seconds) also probes every endpoint in the background.
    ``max_failovers`` bounds how many times one call re-sends chunks before giving up.

    The remaining settings (``api`` is ``OpenAISamplerConfig.endpoint``) configure the
    ``OpenAISampler`` built for each URL. ``params`` are the pool's sampling settings: a call's
    params override them field by field (what the call leaves None, the pool's settings fill),
    and the result goes to every endpoint, ready-made samplers included, so that every endpoint
    draws with the same settings and the same base seed.
    """

    endpoints: tuple[str | Sampler | PoolEndpoint, ...]
    model: str | None = None
    concurrency: int = 16
    max_n: int = 16
    failure_threshold: int = 1
    cooldown: float = 30.0
    health_check_interval: float | None = None
    probe_timeout: float = 5.0
    max_failovers: int = 16
    api: Api = "chat"
    n_mode: NMode = "auto"
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = "OPENAI_API_KEY"
    max_retries: int = 2
    timeout: float = 600.0
    pricing: Pricing | None = None
    params: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        endpoints: Any = self.endpoints
        if isinstance(endpoints, str):
            endpoints = [url for url in endpoints.replace(",", " ").split() if url]
        object.__setattr__(self, "endpoints", tuple(endpoints))
        if not self.endpoints:
            raise ConfigError("a pool needs at least one endpoint")
        for entry in self.endpoints:
            if not isinstance(entry, (str, PoolEndpoint)) and not isinstance(entry, Sampler):
                raise ConfigError(f"pool endpoint {entry!r} is neither a URL nor a Sampler")
        has_url = any(
            isinstance(entry, str)
            or (isinstance(entry, PoolEndpoint) and isinstance(entry.target, str))
            for entry in self.endpoints
        )
        if has_url and not self.model:
            raise ConfigError("a pool with endpoint URLs needs a model name")
        for name in ("concurrency", "max_n", "failure_threshold"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cooldown < 0 or self.max_failovers < 0 or self.max_retries < 0:
            raise ConfigError("cooldown, max_failovers and max_retries must be >= 0")
        if self.probe_timeout <= 0 or self.timeout <= 0:
            raise ConfigError("probe_timeout and timeout must be > 0")
        if self.health_check_interval is not None and self.health_check_interval <= 0:
            raise ConfigError(
                f"health_check_interval must be > 0, got {self.health_check_interval}"
            )
        if self.api not in ("chat", "completions"):
            raise ConfigError(f"api must be 'chat' or 'completions', got {self.api!r}")


# -- the sampler --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    sampler: Sampler
    owned: bool
    probe_url: str | None


@dataclass
class _Shared:
    """What a pool shares with its other-model twins (:meth:`PoolSampler.with_model`): the
    endpoints' state and the machinery that watches it. Loop-bound parts are made on first use."""

    states: list[EndpointState]
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    health_task: asyncio.Task[None] | None = None
    probe_client: httpx2.AsyncClient | None = None
    closed: bool = False


@dataclass(frozen=True)
class _Outcome:
    """What one chunk brought back; a chunk task never raises an ``Exception``."""

    batch: SampleBatch | None
    error: Exception | None = None
    endpoint_failure: bool = False


@dataclass
class _Call:
    """One call's draw over the pool: the chunks waiting to be sent (``queue``), those in flight
    (task -> endpoint position and chunk), what arrived, and the error that ends it (``fatal``)."""

    queue: deque[tuple[int, int]]
    running: dict[asyncio.Task[_Outcome], tuple[int, tuple[int, int]]] = field(default_factory=dict)
    received: dict[int, Candidate] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    failovers: int = 0
    fatal: BaseException | None = None
    started: float = field(default_factory=time.perf_counter)

    def keep(self, run: tuple[int, int], batch: SampleBatch) -> None:
        """Keep a chunk's samples of its own indices that did not arrive before; add its usage."""
        for candidate in batch.candidates:
            if run[0] <= candidate.index < run[0] + run[1] and candidate.index not in self.received:
                self.received[candidate.index] = candidate
        self.usage = self.usage + batch.usage.replace(wall_time_s=0.0)

    def missing(self, run: tuple[int, int]) -> list[int]:
        return [index for index in range(run[0], run[0] + run[1]) if index not in self.received]

    def batch(self) -> SampleBatch:
        candidates = tuple(self.received[index] for index in sorted(self.received))
        wall_time = time.perf_counter() - self.started
        return SampleBatch(candidates, self.usage.replace(wall_time_s=wall_time))

    def result(self) -> SampleBatch:
        """What arrived; or, when the call ended in an error, that error carrying it."""
        fatal = self.fatal
        if fatal is None:
            return self.batch()
        if isinstance(fatal, SamplerError):
            fatal.partial = self.batch()
            raise fatal
        raise SamplerError(f"sampling failed: {fatal}", partial=self.batch()) from fatal


async def _cancel(tasks: Collection[asyncio.Task[_Outcome]]) -> None:
    """Stop the chunks in flight; their slots are freed as they end."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


def _is_request_error(exc: BaseException) -> bool:
    if isinstance(exc, ConfigError):
        return True
    return isinstance(exc, UpstreamError) and exc.status_code in _REQUEST_ERROR_STATUSES


def _models_url(base_url: str | None) -> str | None:
    return f"{base_url.rstrip('/')}/models" if base_url else None


class PoolSampler:
    """Draws from the same model on several endpoints. See the module docstring."""

    def __init__(self, config: PoolConfig | None = None, **options: Any) -> None:
        config = resolve_config(PoolConfig, config, options, "PoolSampler")
        self.config = config
        entries = [
            entry if isinstance(entry, PoolEndpoint) else PoolEndpoint(entry)
            for entry in config.endpoints
        ]
        self.base_seed = self._choose_base_seed(config, entries)
        self.params = config.params.replace(seed=self.base_seed)
        api_key = config.api_key
        if api_key is None and config.api_key_env:
            api_key = os.environ.get(config.api_key_env)
        self._api_key = api_key
        self._members: list[_Member] = []
        states: list[EndpointState] = []
        for position, entry in enumerate(entries):
            concurrency = entry.concurrency or config.concurrency
            if isinstance(entry.target, str):
                assert config.model is not None  # PoolConfig checks it
                sampler: Sampler = OpenAISampler(
                    OpenAISamplerConfig(
                        model=config.model,
                        base_url=entry.target,
                        api_key=api_key,
                        api_key_env=None,
                        endpoint=config.api,
                        max_n=config.max_n,
                        n_mode=config.n_mode,
                        concurrency=concurrency,
                        max_retries=config.max_retries,
                        timeout=config.timeout,
                        pricing=config.pricing,
                        params=self.params,
                    )
                )
                owned = True
                probe_url = entry.probe_url or _models_url(entry.target)
                name = entry.name or entry.target
            else:
                sampler = entry.target
                owned = False
                base_url = sampler.config.base_url if isinstance(sampler, OpenAISampler) else None
                probe_url = entry.probe_url or _models_url(base_url)
                name = entry.name or base_url or f"{type(sampler).__name__}#{position}"
            self._members.append(_Member(sampler, owned, probe_url))
            states.append(EndpointState(name=name, concurrency=concurrency))
        self._shared = _Shared(states)
        self._owner = True  # False for a with_model twin: the original closes what is shared

    @staticmethod
    def _choose_base_seed(config: PoolConfig, entries: Sequence[PoolEndpoint]) -> int:
        """The configured seed, else the one seed all ready-made samplers share, else a new one."""
        if config.params.seed is not None:
            return config.params.seed
        seeds = {getattr(entry.target, "base_seed", None) for entry in entries}
        if len(seeds) == 1:
            (seed,) = seeds
            if isinstance(seed, int) and not isinstance(seed, bool):
                return seed
        seed = random_base_seed()
        log.info("PoolSampler: no base seed given; drew %d", seed)
        return seed

    @property
    def _states(self) -> list[EndpointState]:
        # The list itself is shared with twins; entries are replaced, never the list.
        return self._shared.states

    def with_model(self, model: str) -> PoolSampler:
        """This pool asking ``model``: the same endpoints, each through its sampler's own
        ``with_model`` (an ``OpenAISampler`` twin shares its clients and concurrency bound).

        The twin shares every endpoint's state with this pool (module docstring) and owns
        nothing: closing it closes nothing, closing this pool closes what both use.
        """
        members = []
        for member, state in zip(self._members, self._states, strict=True):
            try:
                twin_sampler = with_model(member.sampler, model)
            except ConfigError as exc:
                raise ConfigError(f"pool endpoint {state.name}: {exc}") from exc
            members.append(_Member(twin_sampler, owned=False, probe_url=member.probe_url))
        twin = copy.copy(self)
        twin.config = dataclasses.replace(self.config, model=model)
        twin._members = members
        twin._owner = False
        return twin

    # -- stats and lifecycle ----------------------------------------------------------------

    @property
    def stats(self) -> tuple[EndpointState, ...]:
        """A snapshot of every endpoint: outstanding, requests, samples, failures, health."""
        return tuple(self._states)

    @property
    def samplers(self) -> tuple[Sampler, ...]:
        return tuple(member.sampler for member in self._members)

    async def aclose(self) -> None:
        if not self._owner:
            return  # a twin: what it uses is shared with the pool it came from, which closes it
        shared = self._shared
        shared.closed = True
        tasks = list(shared.background)
        if shared.health_task is not None:
            tasks.append(shared.health_task)
            shared.health_task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if shared.probe_client is not None:
            await shared.probe_client.aclose()
            shared.probe_client = None
        for member in self._members:
            aclose = getattr(member.sampler, "aclose", None)
            if member.owned and aclose is not None:
                await aclose()

    async def __aenter__(self) -> PoolSampler:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- waking waiting calls ---------------------------------------------------------------

    def _notify(self) -> None:
        # Calls of twins wait here too: a slot freed by one model's chunk is open to the other's.
        waiters, self._shared.waiters = self._shared.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _waiter(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._shared.waiters.append(waiter)
        return waiter

    # -- health -----------------------------------------------------------------------------

    def _client(self) -> httpx2.AsyncClient:
        if self._shared.probe_client is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._shared.probe_client = httpx2.AsyncClient(
                timeout=self.config.probe_timeout, headers=headers
            )
        return self._shared.probe_client

    async def _probe(self, position: int) -> bool:
        url = self._members[position].probe_url
        assert url is not None
        try:
            response = await self._client().get(url)
            ok = 200 <= response.status_code < 300
            if not ok:
                log.info("probe of %s answered %d", url, response.status_code)
        except (httpx2.HTTPError, OSError) as exc:
            log.info("probe of %s failed: %s", url, exc)
            ok = False
        self._states[position] = probe_finished(
            self._states[position],
            ok=ok,
            now=time.monotonic(),
            threshold=self.config.failure_threshold,
            cooldown=self.config.cooldown,
        )
        if ok:
            log.info("endpoint %s is back", self._states[position].name)
        self._notify()
        return ok

    def _start_due_probes(self) -> None:
        """Probe (in the background) every down endpoint whose cool-down is over."""
        now = time.monotonic()
        for position, state in enumerate(self._states):
            if not probe_due(state, now):
                continue
            if self._members[position].probe_url is None:
                self._states[position] = reopen(state, self.config.failure_threshold)
                continue
            self._states[position] = probe_started(state)
            task = asyncio.create_task(self._probe(position))
            self._shared.background.add(task)
            task.add_done_callback(self._shared.background.discard)

    async def check_health(self) -> tuple[EndpointState, ...]:
        """Probe every endpoint that can be probed now, down or not, and return the stats."""
        positions = [
            position
            for position, state in enumerate(self._states)
            if self._members[position].probe_url is not None and not state.probing
        ]
        for position in positions:
            self._states[position] = probe_started(self._states[position])
        await asyncio.gather(*(self._probe(position) for position in positions))
        return self.stats

    async def _health_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_health()
            except Exception:  # a health check must never take the pool down
                log.exception("background health check failed")

    def _ensure_health_loop(self) -> None:
        interval = self.config.health_check_interval
        shared = self._shared
        if interval is None or shared.closed:
            return
        if shared.health_task is None or shared.health_task.done():
            shared.health_task = asyncio.create_task(self._health_loop(interval))

    # -- drawing ----------------------------------------------------------------------------

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        """Draw samples ``start_index .. start_index + n - 1`` of ``prompt`` over the pool."""
        check_draw(n, start_index)
        # A call's params override the pool's field by field (its seed is the base seed), so
        # every endpoint, ready-made samplers included, draws with the same complete settings.
        params = merge_params(self.params, params)
        self._ensure_health_loop()
        call = _Call(deque(split_runs(range(start_index, start_index + n), self.config.max_n)))
        try:
            while call.queue or call.running:
                if not self._send(call, prompt, params):
                    break
                await self._wait(call)
                for task in [task for task in call.running if task.done()]:
                    self._collect(call, task)
        except BaseException:
            # Cancelled (or worse): stop the chunks in flight.
            await _cancel(call.running)
            raise
        return call.result()

    def _send(self, call: _Call, prompt: Prompt, params: SamplingParams) -> bool:
        """Send the call's waiting chunks where there is room; False when the call is over (an
        error ended it and nothing is in flight)."""
        if call.fatal is None:
            self._start_due_probes()
            while call.queue:
                position = pick_endpoint(self._states)
                if position is None:
                    break
                run = call.queue.popleft()
                call.running[self._dispatch(position, prompt, params, run)] = (position, run)
            if call.queue and not call.running and all_down(self._states, time.monotonic()):
                call.fatal = EndpointsDown(
                    f"all {len(self._states)} endpoints of the pool are down; "
                    f"{sum(count for _, count in call.queue)} sample(s) not drawn"
                )
        if call.fatal is not None:
            call.queue.clear()
            return bool(call.running)
        return True

    async def _wait(self, call: _Call) -> None:
        """Wake when a chunk of this call ends, or when any slot or endpoint state changes."""
        waiter = self._waiter()
        try:
            waiting: list[asyncio.Future[Any]] = [*call.running, waiter]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    def _collect(self, call: _Call, task: asyncio.Task[_Outcome]) -> None:
        """Take in a finished chunk: keep its samples; a bad request ends the call, and the
        indices an endpoint failed to deliver are sent again (:meth:`_fail_over`)."""
        position, run = call.running.pop(task)
        outcome = task.result()
        if outcome.batch is not None:
            call.keep(run, outcome.batch)
        error = outcome.error
        if error is not None and not outcome.endpoint_failure:
            call.fatal = call.fatal or error
            return
        missing = call.missing(run)
        if missing and call.fatal is None:
            self._fail_over(call, self._states[position].name, error, missing)

    def _fail_over(
        self, call: _Call, name: str, error: Exception | None, missing: Sequence[int]
    ) -> None:
        """Queue ``missing`` again, with their own indices; past ``max_failovers``, give up."""
        call.failovers += 1
        if call.failovers > self.config.max_failovers:
            call.fatal = SamplerError(
                f"gave up after {self.config.max_failovers} failover(s); last, "
                f"{name}: {error or 'samples missing'}"
            )
            if error is not None:
                call.fatal.__cause__ = error
            return
        log.warning(
            "endpoint %s %s; re-sending %d sample(s) with their own indices",
            name,
            f"failed: {error}" if error is not None else "delivered too few samples",
            len(missing),
        )
        call.queue.extend(split_runs(missing, self.config.max_n))

    def _dispatch(
        self, position: int, prompt: Prompt, params: SamplingParams, run: tuple[int, int]
    ) -> asyncio.Task[_Outcome]:
        self._states[position] = chunk_dispatched(self._states[position])
        sampler = self._members[position].sampler
        task = asyncio.create_task(self._chunk(sampler, prompt, params, run))
        sent = time.monotonic()
        # The slot is freed by a done callback: it runs even for a task cancelled before it began.
        task.add_done_callback(lambda done: self._chunk_done(position, done, sent))
        return task

    @staticmethod
    async def _chunk(
        sampler: Sampler, prompt: Prompt, params: SamplingParams, run: tuple[int, int]
    ) -> _Outcome:
        start, count = run
        try:
            return _Outcome(await sampler.sample(prompt, count, params, start_index=start))
        except Exception as exc:
            partial = exc.partial if isinstance(exc, SamplerError) else None
            if not isinstance(partial, SampleBatch):
                # Nothing says what the failure spent: count the request that failed.
                partial = SampleBatch((), Usage(failed_requests=1))
            return _Outcome(partial, exc, endpoint_failure=not _is_request_error(exc))

    def _chunk_done(self, position: int, task: asyncio.Task[_Outcome], sent: float) -> None:
        state = self._states[position]
        if task.cancelled() or task.exception() is not None:
            self._states[position] = chunk_released(state)
        else:
            outcome = task.result()
            failed = outcome.endpoint_failure
            now = time.monotonic()
            self._states[position] = chunk_finished(
                state,
                samples=len(outcome.batch.candidates) if outcome.batch is not None else 0,
                failed=failed,
                now=now,
                threshold=self.config.failure_threshold,
                cooldown=self.config.cooldown,
                seconds=None if outcome.error is not None else now - sent,
            )
            if failed and state.healthy and not self._states[position].healthy:
                log.warning(
                    "endpoint %s is down for %.0f s after %d failure(s) in a row",
                    state.name,
                    self.config.cooldown,
                    self._states[position].consecutive_failures,
                )
        self._notify()
