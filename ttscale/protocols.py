"""The three extension points: Sampler, Strategy and Verifier.

Each is a small Protocol. A plain function is accepted wherever a protocol is (as tenacity takes a
plain callable for its stop and wait policies): :func:`as_sampler`, :func:`as_strategy` and
:func:`as_verifier` adapt a function, sync or async, to the protocol.

A sampler may also offer two optional abilities, found by :func:`with_model` and
:func:`can_watch`: asking another model, and streaming samples that a :class:`TokenWatcher` stops
early (``sample_watched``, which the OpenAI sampler and the budget offer). A sampler reports
each response's samples as they arrive to whoever listens (:func:`arrivals`, :func:`deliver`).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence, Sized
from typing import Any, Protocol, runtime_checkable

from ttscale.errors import ConfigError, VerifierError
from ttscale.types import (
    Candidate,
    Problem,
    Prompt,
    Result,
    SampleBatch,
    SamplingParams,
    Score,
    TokenLogprob,
)

__all__ = [
    "EARLY_STOP",
    "AdmissionCheck",
    "ArrivalSink",
    "Sampler",
    "Strategy",
    "TokenWatcher",
    "Verifier",
    "WrappedSampler",
    "arrivals",
    "as_sampler",
    "as_strategy",
    "as_verifier",
    "can_watch",
    "check_admission",
    "check_draw",
    "checked_scores",
    "deliver",
    "draw_from",
    "with_model",
]


@runtime_checkable
class Sampler(Protocol):
    """Draws candidates for a prompt.

    ``start_index`` is the index of the first sample of this call within the problem's draw: a
    strategy that samples in batches passes it so that every sample gets a distinct derived seed.
    """

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch: ...


@runtime_checkable
class Verifier(Protocol):
    """Scores a batch of candidates for one problem; higher is better."""

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]: ...


@runtime_checkable
class Strategy(Protocol):
    """Turns a problem into a result, drawing candidates through a sampler."""

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result: ...


EARLY_STOP = "early_stop"
"""The ``finish_reason`` of a sample whose stream was closed because its watcher said stop."""


class TokenWatcher(Protocol):
    """Reads one streamed sample token by token; :meth:`feed` returns True to stop it there."""

    def feed(self, token: TokenLogprob) -> bool: ...


def can_watch(sampler: object) -> bool:
    """Whether ``sampler`` can stream samples and stop each where its watcher says.

    Such a sampler has ``sample_watched(prompt, n, params, *, start_index, watcher)``, where
    ``watcher(index)`` makes each sample's :class:`TokenWatcher`, and a true ``watches``;
    wrappers (the budget) pass both through, so theirs is true only when the sampler's is.
    """
    return callable(getattr(sampler, "sample_watched", None)) and bool(
        getattr(sampler, "watches", False)
    )


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class _FunctionSampler:
    def __init__(self, function: Callable[..., SampleBatch | Awaitable[SampleBatch]]) -> None:
        self.function = function

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        batch = await _maybe_await(self.function(prompt, n, params, start_index=start_index))
        if not isinstance(batch, SampleBatch):
            raise ConfigError(
                f"sampler function {self.function!r} returned {type(batch).__name__}, "
                "expected a SampleBatch"
            )
        return batch


class _FunctionVerifier:
    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        raw = await _maybe_await(self.function(problem, candidates))
        scores = [item if isinstance(item, Score) else Score(float(item)) for item in raw]
        return checked_scores(scores, candidates, f"verifier function {self.function!r}")


class _FunctionStrategy:
    def __init__(self, function: Callable[..., Result | Awaitable[Result]]) -> None:
        self.function = function

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result:
        result = await _maybe_await(self.function(problem, sampler, verifier))
        if not isinstance(result, Result):
            raise ConfigError(
                f"strategy function {self.function!r} returned {type(result).__name__}, "
                "expected a Result"
            )
        return result


def as_sampler(obj: Sampler | Callable[..., Any]) -> Sampler:
    """Return ``obj`` if it is a Sampler, else wrap a function.

    The function is called as ``function(prompt, n, params, start_index=...)``, sync or async, and
    returns a :class:`SampleBatch`.
    """
    if isinstance(obj, Sampler):
        return obj
    if callable(obj):
        return _FunctionSampler(obj)
    raise ConfigError(f"{obj!r} is neither a Sampler nor a function")


def as_verifier(obj: Verifier | Callable[..., Any]) -> Verifier:
    """Return ``obj`` if it is a Verifier; wrap a function ``(problem, candidates) -> scores``.

    The function may be sync or async and may return floats or :class:`Score` objects.
    """
    if isinstance(obj, Verifier):
        return obj
    if callable(obj):
        return _FunctionVerifier(obj)
    raise ConfigError(f"{obj!r} is neither a Verifier nor a function")


def as_strategy(obj: Strategy | Callable[..., Any]) -> Strategy:
    """Return ``obj`` if it is a Strategy; wrap a function ``(problem, sampler, verifier)``."""
    if isinstance(obj, Strategy):
        return obj
    if callable(obj):
        return _FunctionStrategy(obj)
    raise ConfigError(f"{obj!r} is neither a Strategy nor a function")


def with_model(sampler: Sampler, model: str) -> Sampler:
    """``sampler`` asking ``model`` instead: for strategies that use several models (graphs).

    A sampler that can offers ``with_model(name)``; the OpenAI sampler shares its clients and
    concurrency bound with the twin, and wrappers (budgets, journals) pass the call through.
    """
    method = getattr(sampler, "with_model", None)
    if method is None:
        raise ConfigError(
            f"{type(sampler).__name__} cannot switch models; give the strategy a sampler per "
            f"model (for {model!r})"
        )
    twin: Sampler = method(model)
    return twin


async def draw_from(
    sampler: Sampler,
    prompt: Prompt,
    n: int,
    params: SamplingParams | None,
    *,
    start_index: int,
    watcher: Callable[[int], TokenWatcher] | None,
) -> SampleBatch:
    """``sampler.sample(...)``, or ``sampler.sample_watched(...)`` when a watcher is given."""
    if watcher is None:
        return await sampler.sample(prompt, n, params, start_index=start_index)
    batch: SampleBatch = await sampler.sample_watched(  # type: ignore[attr-defined]
        prompt, n, params, start_index=start_index, watcher=watcher
    )
    return batch


class WrappedSampler:
    """A sampler around another that passes everything through: subclasses override only what
    they change.

    ``sample`` and ``sample_watched`` both go through :meth:`forward` (``watcher`` None for a
    plain draw), ``watches`` is the inner sampler's, and ``with_model`` is :meth:`rewrap` around
    the inner sampler's twin. A wrapper that changes prompts, counts draws or keeps them
    overrides :meth:`forward`; one with state that must not be shared with its twins overrides
    :meth:`rewrap`.
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    @property
    def watches(self) -> bool:
        """Whether the sampler inside streams samples that watchers stop early (DeepConf)."""
        return can_watch(self.sampler)

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        return await self.forward(prompt, n, params, start_index=start_index, watcher=None)

    async def sample_watched(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
        watcher: Callable[[int], TokenWatcher],
    ) -> SampleBatch:
        return await self.forward(prompt, n, params, start_index=start_index, watcher=watcher)

    async def forward(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None,
        *,
        start_index: int,
        watcher: Callable[[int], TokenWatcher] | None,
    ) -> SampleBatch:
        """One draw: by default the inner sampler's (:func:`draw_from`)."""
        return await draw_from(
            self.sampler, prompt, n, params, start_index=start_index, watcher=watcher
        )

    def with_model(self, model: str) -> Sampler:
        """This wrapper around the inner sampler asking ``model``."""
        return self.rewrap(with_model(self.sampler, model))

    def rewrap(self, sampler: Sampler) -> Sampler:
        """This wrapper around ``sampler`` instead: by default a shallow copy (other state is
        shared with the original)."""
        twin = copy.copy(self)
        twin.sampler = sampler
        return twin


def checked_scores(scores: Sequence[Score], candidates: Sized, verifier: object) -> list[Score]:
    """``scores`` as a list if there is one per candidate, else a :class:`VerifierError` naming
    ``verifier`` (a name, or the verifier, named by its type)."""
    if len(scores) != len(candidates):
        name = verifier if isinstance(verifier, str) else type(verifier).__name__
        raise VerifierError(
            f"{name} returned {len(scores)} scores for {len(candidates)} candidates"
        )
    return list(scores)


def check_draw(n: int, start_index: int) -> None:
    """The checks every sampler makes of a ``sample`` call's count and first index."""
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    if start_index < 0:
        raise ConfigError(f"start_index must be >= 0, got {start_index}")


# -- arrivals: each response's samples as they come in, before the draw call returns ------------

ArrivalSink = Callable[[SampleBatch], None]
"""Told of each response's samples (with that response's usage) the moment they arrive."""

AdmissionCheck = Callable[[], None]
"""Asked just before each request goes out; raises to keep it from going out."""

_ARRIVALS: contextvars.ContextVar[ArrivalSink | None] = contextvars.ContextVar(
    "ttscale_arrivals", default=None
)
_ADMISSION: contextvars.ContextVar[tuple[AdmissionCheck, ...]] = contextvars.ContextVar(
    "ttscale_admission", default=()
)


@contextlib.contextmanager
def arrivals(sink: ArrivalSink, *, admit: AdmissionCheck | None = None) -> Iterator[None]:
    """Within the block (and the tasks it starts), a sampler that can reports every response's
    samples to ``sink`` as they arrive; a sink already set is told too, after ``sink``.

    This is how a store keeps each sample the moment it is paid for, not when the whole draw
    call returns: a process killed mid-draw loses only the responses still on the wire.
    ``admit``, if given, is asked before each request is sent (:func:`check_admission`), after
    the request has waited its turn: a store that can no longer write refuses there, so a draw
    that was queued when the store failed buys nothing it could not keep.
    """
    outer = _ARRIVALS.get()

    def both(batch: SampleBatch) -> None:
        sink(batch)
        if outer is not None:
            outer(batch)

    token = _ARRIVALS.set(both)
    checks = _ADMISSION.set(_ADMISSION.get() + ((admit,) if admit is not None else ()))
    try:
        yield
    finally:
        _ADMISSION.reset(checks)
        _ARRIVALS.reset(token)


def check_admission() -> None:
    """Called by a sampler just before it sends a request (after its rate and concurrency
    limits let it go): raises the error of any listener that must not be sent more samples."""
    for admit in _ADMISSION.get():
        admit()


def deliver(batch: SampleBatch) -> None:
    """Called by a sampler for each response it receives (see :func:`arrivals`); a sink's error
    is logged, never raised into the sampler's bookkeeping."""
    sink = _ARRIVALS.get()
    if sink is None or not batch.candidates:
        return
    try:
        sink(batch)
    except Exception:  # the sink keeps its own error for its draw call to raise
        logging.getLogger(__name__).debug("arrival sink failed", exc_info=True)
