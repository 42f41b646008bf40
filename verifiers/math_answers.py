"""Checking final answers against a reference: ``math`` (math-verify) and ``exact_match``.

:class:`MathVerifier` uses `math-verify` (the ``[math]`` extra) in a process pool: its timeouts
use ``signal.alarm``, which only works in a main thread, and a pool's workers run it in theirs.
A batch of candidates goes to one worker, which parses the reference once (and keeps the last
references parsed). Without math-verify (or with ``backend="normalise"``) it falls back to
:mod:`ttscale.strategies.extract`'s normalisation, with no dependency.

Both are also :class:`~ttscale.strategies.extract.AnswerEquivalence` objects: ``equivalent(a, b)``
lets majority voting merge answer groups that mean the same (``"\\frac{1}{2}"`` and ``"0.5"``).

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ttscale.errors import ConfigError, DataError, VerifierError
from ttscale.registry import build_config
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
    # A bare reference ("\frac{1}{2}", "x+1") may parse to nothing; math delimiters or a box
    # usually fix that, and they are tried in order of least change.
    for text in (reference, f"${reference}$", f"\\boxed{{{reference}}}"):
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


# -- the verifiers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MathConfig:
    """Settings of a :class:`MathVerifier`.

    ``timeout_s`` bounds math-verify's parse and verify of one answer (whole seconds, as its
    alarms take); a batch that takes longer than ``timeout_s`` per candidate plus slack is given
    up and the pool replaced. ``extractor`` is used by the fallback normaliser only.
    """

    backend: MathBackend = "auto"
    workers: int = 1
    timeout_s: int = 5
    extractor: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "math_verify", "normalise"):
            raise ConfigError(f"backend must be auto, math_verify or normalise: {self.backend!r}")
        if self.backend == "math_verify" and not math_verify_available():
            raise ConfigError(
                "backend 'math_verify' needs math-verify: pip install 'ttscale[math]'"
            )
        if self.workers < 1 or self.timeout_s < 1:
            raise ConfigError("workers and timeout_s must be >= 1")
        get_extractor(self.extractor)


class MathVerifier:
    """Is a candidate's final answer mathematically equal to ``problem.answer``? See the module."""

    def __init__(self, config: MathConfig | None = None, **options: Any) -> None:
        if config is None:
            config = build_config(MathConfig, options, "MathVerifier")
        elif options:
            raise ConfigError("pass either a config or keyword options to MathVerifier")
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

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the caller's process may have threads (an event loop, a client).
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.config.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_warm_up,
            )
        return self._pool

    def _discard_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # A worker stuck in a parse that ignored its alarm would otherwise live on.
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker processes (they are started again when needed)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        if problem.answer is None:
            raise DataError(f"problem {problem.id!r} has no reference answer", field="answer")
        if not candidates:
            return []
        if self.backend == "normalise":
            return [self._score_normalised(problem.answer, c.text) for c in candidates]
        texts = [candidate.text for candidate in candidates]
        future = self._executor().submit(
            _verify_batch, problem.answer, texts, self.config.timeout_s
        )
        # The first call also starts a worker and imports sympy in it: a few seconds of slack.
        limit = self.config.timeout_s * (2 * len(texts) + 1) + 30
        try:
            results = await asyncio.wait_for(asyncio.wrap_future(future), timeout=limit)
        except asyncio.TimeoutError:
            self._discard_pool()
            reason = f"math-verify gave no answer within {limit} s"
            return [Score(0.0, verdict=False, reason=reason) for _ in candidates]
        except concurrent.futures.process.BrokenProcessPool as exc:
            self._discard_pool()
            raise VerifierError(f"math-verify's worker process died: {exc}") from exc
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
        """Whether two answers mean the same (majority voting merges their groups)."""
        if normalised_equal(reference_key(a), reference_key(b)):
            return True  # cheap and certain: no need to ask sympy
        if self.backend == "normalise":
            return False
        future = self._executor().submit(_equivalent, a, b, self.config.timeout_s)
        try:
            return future.result(timeout=self.config.timeout_s * 4 + 30)
        except concurrent.futures.TimeoutError:
            self._discard_pool()
            return False


@dataclass(frozen=True)
class ExactMatchConfig:
    """Settings of an :class:`ExactMatchVerifier`: how to extract the candidate's answer."""

    extractor: str = "auto"

    def __post_init__(self) -> None:
        get_extractor(self.extractor)


class ExactMatchVerifier:
    """The candidate's extracted, normalised answer equals the normalised reference."""

    def __init__(self, config: ExactMatchConfig | None = None, **options: Any) -> None:
        if config is None:
            config = build_config(ExactMatchConfig, options, "ExactMatchVerifier")
        elif options:
            raise ConfigError("pass either a config or keyword options to ExactMatchVerifier")
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
