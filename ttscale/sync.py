"""Synchronous facades over the async core, for scripts and notebooks.

Like httpx's ``Client``/``AsyncClient`` twins: the async object does the work, and its sync twin
runs each call on one long-lived :class:`~ttscale.portal.Portal`. Hand the async object to the
facade and use it only through the facade from then on: its connection pool and concurrency bound
live on the portal's loop.
"""

from __future__ import annotations

from collections.abc import Sequence

from ttscale.portal import Portal, default_portal
from ttscale.protocols import Sampler, Strategy, Verifier
from ttscale.types import Candidate, Problem, Prompt, Result, SampleBatch, SamplingParams, Score

__all__ = ["SyncSampler", "SyncStrategy", "SyncVerifier"]


class SyncSampler:
    """Blocking twin of any :class:`~ttscale.protocols.Sampler`."""

    def __init__(self, sampler: Sampler, *, portal: Portal | None = None) -> None:
        self.sampler = sampler
        self._portal = portal or default_portal()

    def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        return self._portal.call(self.sampler.sample, prompt, n, params, start_index=start_index)

    def close(self) -> None:
        aclose = getattr(self.sampler, "aclose", None)
        if aclose is not None:
            self._portal.call(aclose)

    def __enter__(self) -> SyncSampler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SyncVerifier:
    """Blocking twin of any :class:`~ttscale.protocols.Verifier`."""

    def __init__(self, verifier: Verifier, *, portal: Portal | None = None) -> None:
        self.verifier = verifier
        self._portal = portal or default_portal()

    def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        return self._portal.call(self.verifier.score, problem, candidates)


class SyncStrategy:
    """Blocking twin of any :class:`~ttscale.protocols.Strategy`, bound to a sampler."""

    def __init__(
        self,
        strategy: Strategy,
        sampler: Sampler,
        verifier: Verifier | None = None,
        *,
        portal: Portal | None = None,
    ) -> None:
        self.strategy = strategy
        self.sampler = sampler
        self.verifier = verifier
        self._portal = portal or default_portal()

    def run(self, problem: Problem) -> Result:
        return self._portal.call(self.strategy.run, problem, self.sampler, self.verifier)
