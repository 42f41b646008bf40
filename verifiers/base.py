"""Shared pieces of the verifiers: the score cache, verifier lookup and a per-loop bound.

Every verifier here follows :class:`ttscale.protocols.Verifier`: ``await score(problem,
candidates)`` returns one :class:`~ttscale.types.Score` per candidate, in order. Binary verifiers
set ``verdict`` and a ``reason``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ttscale.errors import ConfigError
from ttscale.protocols import Verifier, as_verifier, checked_scores
from ttscale.types import Candidate, Problem, Score

__all__ = [
    "CachedVerifier",
    "LoopBound",
    "candidate_key",
    "problem_key",
    "resolve_verifier",
]

log = logging.getLogger(__name__)


def problem_key(problem: Problem) -> str:
    """The problem's id plus a digest of what a verifier checks against.

    Two datasets may reuse an id for different problems; the digest keeps their scores apart.
    """
    digest = hashlib.sha256()
    for part in (problem.answer, problem.tests, problem.entry_point, problem.prompt):
        digest.update(b"\x00" if part is None else b"\x01" + part.encode())
    return f"{problem.id}:{digest.hexdigest()[:16]}"


def candidate_key(candidate: Candidate) -> str:
    return hashlib.sha256(candidate.text.encode()).hexdigest()


class CachedVerifier:
    """Scores each distinct (problem, candidate text) once, around any verifier.

    Duplicates within a batch are scored once; a candidate being scored by a concurrent call is
    awaited rather than scored again. ``max_entries`` bounds the cache (least recently used go).
    """

    def __init__(self, verifier: Verifier | Any, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ConfigError(f"max_entries must be >= 1, got {max_entries}")
        self.verifier = as_verifier(verifier)
        self.max_entries = max_entries
        self._scores: OrderedDict[tuple[str, str], Score] = OrderedDict()
        self._pending: dict[tuple[str, str], asyncio.Future[Score]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._scores)

    def clear(self) -> None:
        self._scores.clear()

    def _remember(self, key: tuple[str, str], score: Score) -> None:
        self._scores[key] = score
        self._scores.move_to_end(key)
        while len(self._scores) > self.max_entries:
            self._scores.popitem(last=False)

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        problem_id = problem_key(problem)
        keys = [(problem_id, candidate_key(candidate)) for candidate in candidates]
        to_score: dict[tuple[str, str], Candidate] = {}
        waiting: dict[tuple[str, str], asyncio.Future[Score]] = {}
        for key, candidate in zip(keys, candidates, strict=True):
            if key in self._scores:
                self.hits += 1
                self._scores.move_to_end(key)
            elif key in self._pending:
                self.hits += 1
                waiting[key] = self._pending[key]
            elif key not in to_score:
                self.misses += 1
                to_score[key] = candidate
        loop = asyncio.get_running_loop()
        owned = {key: loop.create_future() for key in to_score}
        self._pending.update(owned)
        try:
            if to_score:
                scores = checked_scores(
                    await self.verifier.score(problem, list(to_score.values())),
                    to_score,
                    self.verifier,
                )
                for key, score in zip(to_score, scores, strict=True):
                    self._remember(key, score)
                    owned[key].set_result(score)
        except BaseException as exc:
            for future in owned.values():
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # marks it retrieved: the error is raised here already
            raise
        finally:
            for key in owned:
                self._pending.pop(key, None)
        results: dict[tuple[str, str], Score] = {}
        for key, future in waiting.items():
            results[key] = await future
        found = [results[key] if key in results else self._scores[key] for key in keys]
        # What a score cost is counted once: at the first position of a score computed by this
        # call. Hits, and repeats of one text in a call, cost nothing.
        charged: set[tuple[str, str]] = set()
        out: list[Score] = []
        for key, score in zip(keys, found, strict=True):
            if score.usage is not None and (key not in owned or key in charged):
                score = dataclasses.replace(score, usage=None)
            charged.add(key)
            out.append(score)
        return out


def resolve_verifier(spec: Any, where: str) -> Verifier:
    """A verifier from an object, a function, or a registered name (built with no options)."""
    if isinstance(spec, str):
        from ttscale.registry import create  # at call time: the registry loads us by name

        built = create("verifier", spec)
        if not isinstance(built, Verifier):
            raise ConfigError(f"{where}: {spec!r} did not build a verifier")
        return built
    try:
        return as_verifier(spec)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


class LoopBound:
    """A concurrency bound shared by the calls of one event loop.

    A plain ``asyncio.Semaphore`` binds to the first loop that waits on it; a verifier used from
    several ``asyncio.run`` calls (the sync facade does that) needs one per loop.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigError(f"concurrency must be >= 1, got {limit}")
        self.limit = limit
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._per_loop = weakref.WeakKeyDictionary()

    def semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        found = self._per_loop.get(loop)
        if found is None:
            found = self._per_loop[loop] = asyncio.Semaphore(self.limit)
        return found
