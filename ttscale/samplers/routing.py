"""A pool's routing: plain functions over frozen snapshots of its endpoints' load and health.

:class:`~ttscale.samplers.pool.PoolSampler` keeps one :class:`EndpointState` per endpoint and
replaces it through these functions as chunks are sent (:func:`chunk_dispatched`), come back
(:func:`chunk_finished`, :func:`chunk_released`) and endpoints are probed (:func:`probe_due`,
:func:`probe_started`, :func:`probe_finished`, :func:`reopen`); :func:`pick_endpoint` chooses
where the next chunk goes and :func:`split_runs` cuts a call's indices into chunks. None of them
needs an event loop or a server, so each routing rule is tested alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ttscale.errors import ConfigError

__all__ = [
    "SLOWER",
    "EndpointState",
    "all_down",
    "chunk_dispatched",
    "chunk_finished",
    "chunk_released",
    "pick_endpoint",
    "probe_due",
    "probe_finished",
    "probe_started",
    "reopen",
    "split_runs",
]

SLOWER = 2.0
"""An endpoint whose smoothed chunk time is over this many times the fastest's loses ties."""
_LATENCY_WEIGHT = 0.3  # of the newest chunk time in an endpoint's moving average


@dataclass(frozen=True)
class EndpointState:
    """A snapshot of one endpoint's load and health; the pool's stats are these.

    ``outstanding`` counts chunks in flight, ``requests`` chunks sent, ``samples`` samples
    received, ``failures`` chunks that failed through the endpoint's fault. A down endpoint
    (``healthy`` false) is not used before ``down_until`` (``time.monotonic()``) and a probe.
    ``latency`` is the moving average of the seconds its delivered chunks took (None before the
    first).
    """

    name: str
    concurrency: int
    outstanding: int = 0
    requests: int = 0
    samples: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    healthy: bool = True
    down_until: float = 0.0
    probing: bool = False
    probes: int = 0
    latency: float | None = None


def split_runs(indices: Iterable[int], max_n: int) -> list[tuple[int, int]]:
    """Sorted indices as chunks ``(start, count)`` of consecutive indices, at most ``max_n`` long.

    A run of consecutive indices is cut every ``max_n`` from its own start, as ``OpenAISampler``
    cuts a call, so that re-sending a chunk's missing indices keeps their chunk starts (and seeds)
    when the whole chunk is missing.
    """
    if max_n < 1:
        raise ConfigError(f"max_n must be >= 1, got {max_n}")
    runs: list[tuple[int, int]] = []
    for index in sorted(set(indices)):
        if runs and runs[-1][0] + runs[-1][1] == index and runs[-1][1] < max_n:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


def pick_endpoint(states: Sequence[EndpointState]) -> int | None:
    """The endpoint for the next chunk: healthy, below its bound, fewest outstanding; or None.

    Ties go to an endpoint not markedly slower than the fastest (see :data:`SLOWER`), then to more
    room, then to fewer requests sent, then to the first.
    """
    open_ = [
        position
        for position, state in enumerate(states)
        if state.healthy and state.outstanding < state.concurrency
    ]
    if not open_:
        return None
    known = [state.latency for state in states if state.latency is not None and state.healthy]
    fastest = min(known) if known else None

    def slower(state: EndpointState) -> bool:
        return (
            fastest is not None and state.latency is not None and state.latency > SLOWER * fastest
        )

    return min(
        open_,
        key=lambda position: (
            states[position].outstanding,
            slower(states[position]),
            states[position].outstanding / states[position].concurrency,
            states[position].requests,
            position,
        ),
    )


def chunk_dispatched(state: EndpointState) -> EndpointState:
    return dataclasses.replace(
        state, outstanding=state.outstanding + 1, requests=state.requests + 1
    )


def chunk_finished(
    state: EndpointState,
    *,
    samples: int,
    failed: bool,
    now: float,
    threshold: int,
    cooldown: float,
    seconds: float | None = None,
) -> EndpointState:
    """A chunk came back with ``samples`` samples after ``seconds``; ``failed`` when it failed
    by the endpoint. A delivered chunk's time moves the endpoint's smoothed latency."""
    outstanding = max(state.outstanding - 1, 0)
    if not failed:
        latency = state.latency
        if seconds is not None:
            latency = (
                seconds
                if latency is None
                else (1 - _LATENCY_WEIGHT) * latency + _LATENCY_WEIGHT * seconds
            )
        return dataclasses.replace(
            state,
            outstanding=outstanding,
            samples=state.samples + samples,
            consecutive_failures=0,
            latency=latency,
        )
    consecutive = state.consecutive_failures + 1
    down = not state.healthy or consecutive >= threshold
    return dataclasses.replace(
        state,
        outstanding=outstanding,
        samples=state.samples + samples,
        failures=state.failures + 1,
        consecutive_failures=consecutive,
        healthy=not down,
        down_until=max(state.down_until, now + cooldown) if down else state.down_until,
    )


def chunk_released(state: EndpointState) -> EndpointState:
    """A chunk was cancelled: that says nothing of the endpoint."""
    return dataclasses.replace(state, outstanding=max(state.outstanding - 1, 0))


def probe_due(state: EndpointState, now: float) -> bool:
    """Whether a down endpoint's cool-down is over and no probe of it is under way."""
    return not state.healthy and not state.probing and now >= state.down_until


def probe_started(state: EndpointState) -> EndpointState:
    return dataclasses.replace(state, probing=True, probes=state.probes + 1)


def probe_finished(
    state: EndpointState, *, ok: bool, now: float, threshold: int, cooldown: float
) -> EndpointState:
    """A probe answered (``ok``) or not: an answer brings the endpoint back at once."""
    if ok:
        return dataclasses.replace(state, probing=False, healthy=True, consecutive_failures=0)
    consecutive = state.consecutive_failures + 1
    down = not state.healthy or consecutive >= threshold
    return dataclasses.replace(
        state,
        probing=False,
        consecutive_failures=consecutive,
        healthy=not down,
        down_until=now + cooldown if down else state.down_until,
    )


def reopen(state: EndpointState, threshold: int) -> EndpointState:
    """Bring back an endpoint that cannot be probed, on trial: its next failure takes it out."""
    return dataclasses.replace(state, healthy=True, consecutive_failures=threshold - 1)


def all_down(states: Sequence[EndpointState], now: float) -> bool:
    """No endpoint is healthy, being probed, or due for a probe."""
    return not any(state.healthy or state.probing or probe_due(state, now) for state in states)
