"""Sampling policies: which :class:`SamplingParams` each sample index is drawn with.

A policy maps a sample index to an override of the sampler's own settings: ``None`` draws with the
sampler's settings as they are; a :class:`SamplingParams` replaces the fields it sets (those not
``None``) and leaves the rest to the sampler, so a policy that only sets the temperature keeps the
sampler's ``max_tokens``, ``stop`` and the like.

:func:`draw` turns a run of indices into sampler calls: consecutive indices with equal params share
one ``sample`` call, each call passing its ``start_index``, so every sample keeps its own index (and
so its derived seed) however the run is split.

- :class:`FixedSampling`: the same params for every sample (what a plain ``SamplingParams`` means).
- :class:`HedgedSampling`: the first ``greedy`` samples at temperature 0, the rest at
  ``temperature`` ("When Life Gives You Samples", Cohere 2025).
- :class:`TemperatureSchedule`: an explicit temperature per index, the last one repeating.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ttscale.errors import BudgetExhausted, ConfigError, SamplerError
from ttscale.protocols import Sampler, TokenWatcher
from ttscale.types import Candidate, Prompt, SampleBatch, SamplingParams, Usage

__all__ = [
    "FixedSampling",
    "HedgedSampling",
    "PolicySpec",
    "SamplingPolicy",
    "TemperatureSchedule",
    "as_policy",
    "draw",
    "plan_calls",
]


@runtime_checkable
class SamplingPolicy(Protocol):
    """Maps a sample index to its override of the sampler's settings (``None``: none)."""

    def params_for(self, index: int) -> SamplingParams | None: ...


PolicySpec = SamplingParams | SamplingPolicy | Callable[[int], SamplingParams | None] | None
"""What a strategy's ``params`` option accepts."""


@dataclass(frozen=True)
class FixedSampling:
    """The same params for every index (``None``: the sampler's own settings)."""

    params: SamplingParams | None = None

    def params_for(self, index: int) -> SamplingParams | None:
        # None, not an empty SamplingParams: samplers read None as "use your own settings", and
        # an empty override would be taken by some as "no settings at all".
        return self.params


@dataclass(frozen=True)
class HedgedSampling:
    """``greedy`` samples at temperature 0 first, then the rest at ``temperature``.

    ``base`` holds further overrides of the sampler's settings; by default only the temperature is
    overridden and everything else is the sampler's.
    """

    temperature: float = 0.8
    greedy: int = 1
    base: SamplingParams | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"HedgedSampling.temperature must be >= 0, got {self.temperature}")
        if self.greedy < 0:
            raise ConfigError(f"HedgedSampling.greedy must be >= 0, got {self.greedy}")

    def params_for(self, index: int) -> SamplingParams:
        base = self.base if self.base is not None else SamplingParams()
        return base.replace(temperature=0.0 if index < self.greedy else self.temperature)


@dataclass(frozen=True)
class TemperatureSchedule:
    """Sample ``i`` at ``temperatures[i]``; indices past the end repeat the last temperature.

    Like :class:`HedgedSampling`, only the temperature (and what ``base`` sets) is overridden.
    """

    temperatures: tuple[float, ...]
    base: SamplingParams | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))
        if not self.temperatures:
            raise ConfigError("TemperatureSchedule.temperatures must not be empty")
        if any(t < 0 for t in self.temperatures):
            raise ConfigError("TemperatureSchedule.temperatures must all be >= 0")

    def params_for(self, index: int) -> SamplingParams:
        temperature = self.temperatures[min(index, len(self.temperatures) - 1)]
        base = self.base if self.base is not None else SamplingParams()
        return base.replace(temperature=temperature)


@dataclass(frozen=True)
class _FunctionPolicy:
    function: Callable[[int], SamplingParams | None]

    def params_for(self, index: int) -> SamplingParams | None:
        params = self.function(index)
        if params is not None and not isinstance(params, SamplingParams):
            raise ConfigError(
                f"sampling policy {self.function!r} returned {type(params).__name__} for index "
                f"{index}, expected SamplingParams or None"
            )
        return params


def as_policy(spec: PolicySpec) -> SamplingPolicy:
    """A policy from params, a policy, a function ``index -> SamplingParams``, or None."""
    if spec is None or isinstance(spec, SamplingParams):
        return FixedSampling(spec)
    if isinstance(spec, SamplingPolicy):
        return spec
    if callable(spec):
        return _FunctionPolicy(spec)
    raise ConfigError(f"params: expected SamplingParams or a sampling policy, got {spec!r}")


def plan_calls(
    policy: SamplingPolicy, start_index: int, count: int
) -> list[tuple[SamplingParams | None, int, int]]:
    """Split indices ``start_index .. start_index + count - 1`` into runs of equal params.

    Returns ``(params, start_index, n)`` per sampler call, in index order.
    """
    calls: list[tuple[SamplingParams | None, int, int]] = []
    for index in range(start_index, start_index + count):
        params = policy.params_for(index)
        if calls and calls[-1][0] == params:
            previous_params, previous_start, previous_n = calls[-1]
            calls[-1] = (previous_params, previous_start, previous_n + 1)
        else:
            calls.append((params, index, 1))
    return calls


def _merge(batches: Sequence[SampleBatch], wall_time_s: float) -> SampleBatch:
    candidates: list[Candidate] = sorted(
        (candidate for batch in batches for candidate in batch.candidates),
        key=lambda candidate: candidate.index,
    )
    usage = Usage.total([batch.usage for batch in batches]).replace(wall_time_s=wall_time_s)
    return SampleBatch(tuple(candidates), usage)


async def draw(
    sampler: Sampler,
    prompt: Prompt,
    policy: SamplingPolicy,
    start_index: int,
    count: int,
    watcher: Callable[[int], TokenWatcher] | None = None,
) -> SampleBatch:
    """Draw samples ``start_index .. start_index + count - 1``, one sampler call per params run.

    With ``watcher`` the calls are the sampler's ``sample_watched`` (streamed samples, each
    stopped where its watcher says; see :func:`~ttscale.protocols.can_watch`).

    The calls run concurrently; the merged batch's wall time is that of the whole draw (concurrent
    calls' wall times are not summed). If a call fails, the samples the others (and the failed
    call's partial batch) delivered travel on the raised :class:`SamplerError` as ``partial``.
    """
    if count <= 0:
        return SampleBatch((), Usage())
    calls = plan_calls(policy, start_index, count)
    started = time.perf_counter()
    if watcher is None:
        calls_made = [
            sampler.sample(prompt, n, params, start_index=start) for params, start, n in calls
        ]
    else:
        streaming: Any = sampler  # can_watch() was checked by the strategy that passed a watcher
        calls_made = [
            streaming.sample_watched(prompt, n, params, start_index=start, watcher=watcher)
            for params, start, n in calls
        ]
    outcomes = await asyncio.gather(*calls_made, return_exceptions=True)
    elapsed = time.perf_counter() - started
    delivered = [outcome for outcome in outcomes if isinstance(outcome, SampleBatch)]
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if not failures:
        return _merge(delivered, elapsed)
    failure = failures[0]
    if all(isinstance(f, BudgetExhausted) for f in failures):
        # A budget refused some calls: like a trimmed draw, return what the others delivered.
        if delivered:
            return _merge(delivered, elapsed)
        raise failure
    if isinstance(failure, SamplerError):
        if isinstance(failure.partial, SampleBatch):
            delivered.append(failure.partial)
        failure.partial = _merge(delivered, elapsed)
        raise failure
    if isinstance(failure, Exception):
        raise SamplerError(
            f"sampling failed: {failure}", partial=_merge(delivered, elapsed)
        ) from failure
    raise failure
