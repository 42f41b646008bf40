"""Checking final answers against a reference: ``math`` (math-verify) and ``exact_match``.

:class:`MathVerifier` uses `math-verify` (the ``[math]`` extra) in a process pool: its timeouts
use ``signal.alarm``, which only works in a main thread, and a pool's workers run it in theirs.
A batch of candidates goes to one worker, which parses the reference once (and keeps the last
references parsed). Without math-verify (or with ``backend="normalise"``) it falls back to
:mod:`ttscale.strategies.extract`'s normalisation, with no dependency.

Both are also :class:`~ttscale.strategies.extract.AnswerEquivalence` objects: ``equivalent(a, b)``
lets majority voting merge answer groups that mean the same (``"\\frac{1}{2}"`` and ``"0.5"``).
The math verifier's ``equivalent`` blocks its caller while a worker compares (the strategies call
it from a thread); async code awaits ``equivalent_async(a, b)``. A worker that dies is replaced
and the call tried once more.

:class:`ExactMatchVerifier` compares the extracted, normalised answer with the normalised
reference: the default for datasets with an ``answer`` field.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib.util
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ttscale.errors import ConfigError, DataError, VerifierError
from ttscale.registry import resolve_config
from ttscale.strategies.extract import Extractor, get_extractor, last_boxed, normalize_answer
from ttscale.types import Candidate, Problem, Score

__all__ = [
    "ExactMatchConfig",
    "ExactMatchVerifier",
    "MathConfig",
    "MathVerifier",
    "math_verify_available",
    "normalised_equal",
    "reference_key",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

MathBackend = Literal["auto", "math_verify", "normalise"]


def math_verify_available() -> bool:
    return importlib.util.find_spec("math_verify") is not None


def reference_key(reference: str) -> str:
    """The normalised reference: the content of its ``\\boxed{}`` when it has one (pure)."""
    boxed = last_boxed(reference)
    return normalize_answer(boxed if boxed is not None else reference)


def normalised_equal(a: str | None, b: str | None) -> bool:
    """Equality of two normalised answers, ignoring case (``"B"`` is choice ``"b"``) (pure)."""
    return a is not None and b is not None and a.casefold() == b.casefold()


# -- worker side: runs in the pool's processes -------------------------------------------------


def _math_verify() -> Any:
    # Imported by name: math-verify is optional and ships no type information.
    return importlib.import_module("math_verify")


@functools.lru_cache(maxsize=256)
def _parse_reference(reference: str, timeout_s: int) -> list[Any]:
    parse = _math_verify().parse
    # A reference is read as LaTeX first: bare, math-verify reads only plain numbers and
    # expressions, and takes "2^{10}" or "3\sqrt{2}" for their first number and "x+1" for
    # nothing. Bare comes second (plain text that is not LaTeX), then a box.
    for text in (f"${reference}$", reference, f"\\boxed{{{reference}}}"):
        parsed = parse(text, parsing_timeout=timeout_s)
        if parsed:
            return list(parsed)
    return []


def _verify_batch(
    reference: str, texts: Sequence[str], timeout_s: int
) -> list[tuple[bool, str, str]]:
    """(correct, what was extracted, reason) per text; the reference is parsed once."""
    math_verify = _math_verify()
    gold = _parse_reference(reference, timeout_s)
    if not gold:
        return [(False, "", f"math-verify could not parse the reference {reference!r}")] * len(
            texts
        )
    results = []
    for text in texts:
        answer = math_verify.parse(text, parsing_timeout=timeout_s)
        extracted = str(answer[-1]) if answer else ""
        if not answer:
            results.append((False, "", "no answer found in the candidate"))
            continue
        correct = bool(math_verify.verify(gold, answer, timeout_seconds=timeout_s))
        reason = "equivalent to" if correct else "differs from"
        results.append((correct, extracted, f"{extracted!r} {reason} the reference {reference!r}"))
    return results


def _equivalent(a: str, b: str, timeout_s: int) -> bool:
    verify = _math_verify().verify
    first, second = _parse_reference(a, timeout_s), _parse_reference(b, timeout_s)
    if not first or not second:
        return False
    # verify() treats its first argument as the gold answer; equivalence must be symmetric.
    return bool(
        verify(first, second, timeout_seconds=timeout_s)
        or verify(second, first, timeout_seconds=timeout_s)
    )


def _warm_up() -> None:
    _math_verify()  # imports sympy once per worker, not on the first call


def _ready() -> int:
    return os.getpid()


# -- the verifiers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MathConfig:
    """Settings of a :class:`MathVerifier`.

    ``timeout_s`` bounds math-verify's parse and verify of one answer (whole seconds, as its
    alarms take). A call whose worker gives no answer within ``stuck_after_s`` is given up and
    the pool replaced (an alarm cannot interrupt C code); by default that is what math-verify's
    own timeouts add up to for the call, plus 30 s for starting a worker and importing sympy.
    ``extractor`` is used by the fallback normaliser only.
    """

    backend: MathBackend = "auto"
    workers: int = 1
    timeout_s: int = 5
    extractor: str = "auto"
    stuck_after_s: float | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "math_verify", "normalise"):
            raise ConfigError(f"backend must be auto, math_verify or normalise: {self.backend!r}")
        if self.backend == "math_verify" and not math_verify_available():
            raise ConfigError(
                "backend 'math_verify' needs math-verify: pip install 'ttscale[math]'"
            )
        if self.workers < 1 or self.timeout_s < 1:
            raise ConfigError("workers and timeout_s must be >= 1")
        if self.stuck_after_s is not None and self.stuck_after_s <= 0:
            raise ConfigError(f"stuck_after_s must be > 0, got {self.stuck_after_s}")
        get_extractor(self.extractor)


class MathVerifier:
    """Is a candidate's final answer mathematically equal to ``problem.answer``? See the module."""

    # It grades against the problem's reference answer, which a chat request has none of.
    needs_reference = True

    def __init__(self, config: MathConfig | None = None, **options: Any) -> None:
        config = resolve_config(MathConfig, config, options, "MathVerifier")
        self.config = config
        use_math_verify = config.backend == "math_verify" or (
            config.backend == "auto" and math_verify_available()
        )
        self.backend: Literal["math_verify", "normalise"] = (
            "math_verify" if use_math_verify else "normalise"
        )
        if config.backend == "auto" and not use_math_verify:
            log.info("math-verify is not installed; MathVerifier compares normalised answers")
        self._extractor: Extractor = get_extractor(config.extractor)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        # score() on the loop and equivalent() on a strategy's comparison thread reach the pool
        # at once: without the lock both could start a pool (one of them never shut down), or
        # one caller replace the pool the other has just started.
        self._pool_lock = threading.Lock()
        self._warned_blocking = False

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                # spawn, not fork: the caller's process may have threads (an event loop, a
                # client).
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=self.config.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_warm_up,
                )
            return self._pool

    def _discard_pool(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        """Stop ``pool`` (broken, or with a worker stuck); forget it if it is still the current
        one. A caller that saw an old pool fail must not discard the new one another started."""
        with self._pool_lock:
            if self._pool is pool:
                self._pool = None
        # A worker stuck in a parse that ignored its alarm would otherwise live on.
        # (None once the pool is shut down: a second caller may discard the same broken pool.)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker processes (they are started again when needed)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _limit(self, calls: int) -> float:
        """Seconds before a call making ``calls`` math-verify calls is presumed stuck."""
        if self.config.stuck_after_s is not None:
            return self.config.stuck_after_s
        return self.config.timeout_s * calls + 30

    async def _in_pool(self, function: Callable[..., T], *args: Any, limit: float) -> T:
        """``function(*args)`` in a worker, off the event loop.

        A pool broken by a dead worker (killed, or crashed on an earlier input) is replaced and
        the call tried once more; a worker stuck past ``limit`` is killed and its pool replaced,
        and :class:`_Stuck` raised.
        """
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            pool = self._executor()
            try:
                pending = loop.run_in_executor(pool, function, *args)
                return await asyncio.wait_for(pending, timeout=limit)
            except asyncio.TimeoutError:
                self._discard_pool(pool)
                raise _Stuck(limit) from None
            except BrokenProcessPool as exc:
                self._discard_pool(pool)
                if attempt == 2:
                    raise VerifierError(f"math-verify's worker process died: {exc}") from exc
                log.warning("math-verify's worker process died (%s); starting a new one", exc)
        raise AssertionError("unreachable")

    def _in_pool_blocking(self, function: Callable[..., T], *args: Any, limit: float) -> T:
        """:meth:`_in_pool` for a caller on a plain thread: blocks it while a worker answers."""
        for attempt in (1, 2):
            pool = self._executor()
            try:
                return pool.submit(function, *args).result(timeout=limit)
            except concurrent.futures.TimeoutError:
                self._discard_pool(pool)
                raise _Stuck(limit) from None
            except BrokenProcessPool as exc:
                self._discard_pool(pool)
                if attempt == 2:
                    raise VerifierError(f"math-verify's worker process died: {exc}") from exc
                log.warning("math-verify's worker process died (%s); starting a new one", exc)
        raise AssertionError("unreachable")

    async def start(self) -> None:
        """Start the worker pool and wait until a worker has imported math-verify.

        Optional: the first call does it otherwise. Nothing to do for the normalising backend.
        """
        if self.backend == "math_verify":
            await self._in_pool(_ready, limit=max(self._limit(1), 120.0))

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        if problem.answer is None:
            raise DataError(f"problem {problem.id!r} has no reference answer", field="answer")
        if not candidates:
            return []
        if self.backend == "normalise":
            return [self._score_normalised(problem.answer, c.text) for c in candidates]
        texts = [candidate.text for candidate in candidates]
        try:
            results = await self._in_pool(
                _verify_batch,
                problem.answer,
                texts,
                self.config.timeout_s,
                limit=self._limit(2 * len(texts) + 1),
            )
        except _Stuck as stuck:
            reason = f"math-verify gave no answer within {stuck.limit:g} s"
            return [Score(0.0, verdict=False, reason=reason) for _ in candidates]
        return [
            Score(
                1.0 if correct else 0.0,
                verdict=correct,
                reason=reason,
                details={"extracted": extracted, "backend": "math_verify"},
            )
            for correct, extracted, reason in results
        ]

    def _score_normalised(self, reference: str, text: str) -> Score:
        expected = reference_key(reference)
        answer = self._extractor(text)
        correct = normalised_equal(answer, expected)
        if answer is None:
            reason = "no answer found in the candidate"
        else:
            relation = "equals" if correct else "differs from"
            reason = f"{answer!r} {relation} the reference {expected!r}"
        details = {"extracted": answer, "backend": "normalise"}
        return Score(1.0 if correct else 0.0, verdict=correct, reason=reason, details=details)

    def equivalent(self, a: str, b: str) -> bool:
        """Whether two answers mean the same (majority voting merges their groups).

        Blocks until a worker answers: call it from a thread (the strategies do), or await
        :meth:`equivalent_async` on an event loop. A comparison that times out, in math-verify
        or stuck in its worker, counts as "not the same".
        """
        if normalised_equal(reference_key(a), reference_key(b)):
            return True  # cheap and certain: no need to ask sympy
        if self.backend == "normalise":
            return False
        if _on_event_loop() and not self._warned_blocking:
            self._warned_blocking = True
            log.warning(
                "MathVerifier.equivalent() blocks the event loop it was called on while a worker "
                "compares; await equivalent_async() there instead"
            )
        try:
            return self._in_pool_blocking(
                _equivalent, a, b, self.config.timeout_s, limit=self._limit(4)
            )
        except _Stuck:
            return False

    async def equivalent_async(self, a: str, b: str) -> bool:
        """:meth:`equivalent` for async code: the comparison runs in a worker, the loop runs on."""
        if normalised_equal(reference_key(a), reference_key(b)):
            return True
        if self.backend == "normalise":
            return False
        try:
            return await self._in_pool(
                _equivalent, a, b, self.config.timeout_s, limit=self._limit(4)
            )
        except _Stuck:
            return False


class _Stuck(Exception):
    """A worker gave no answer in time; it was killed and its pool replaced."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        super().__init__(f"no answer within {limit:g} s")


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@dataclass(frozen=True)
class ExactMatchConfig:
    """Settings of an :class:`ExactMatchVerifier`: how to extract the candidate's answer."""

    extractor: str = "auto"

    def __post_init__(self) -> None:
        get_extractor(self.extractor)


class ExactMatchVerifier:
    """The candidate's extracted, normalised answer equals the normalised reference."""

    # It grades against the problem's reference answer, which a chat request has none of.
    needs_reference = True

    def __init__(self, config: ExactMatchConfig | None = None, **options: Any) -> None:
        config = resolve_config(ExactMatchConfig, config, options, "ExactMatchVerifier")
        self.config = config
        self._extractor = get_extractor(config.extractor)

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        if problem.answer is None:
            raise DataError(f"problem {problem.id!r} has no reference answer", field="answer")
        expected = reference_key(problem.answer)
        scores = []
        for candidate in candidates:
            answer = self._extractor(candidate.text)
            correct = normalised_equal(answer, expected)
            if answer is None:
                reason = "no answer found in the candidate"
            else:
                reason = f"{answer!r} {'equals' if correct else 'differs from'} {expected!r}"
            scores.append(
                Score(
                    1.0 if correct else 0.0,
                    verdict=correct,
                    reason=reason,
                    details={"extracted": answer, "expected": expected},
                )
            )
        return scores

    def equivalent(self, a: str, b: str) -> bool:
        return normalised_equal(reference_key(a), reference_key(b))
