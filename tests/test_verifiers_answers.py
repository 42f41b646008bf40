"""Math and exact-match verifiers, answer equivalence for voting, and the score cache."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ttscale.errors import DataError, VerifierError
from ttscale.registry import create
from ttscale.strategies.extract import AnswerEquivalence
from ttscale.strategies.selection import group_answers
from ttscale.types import Candidate, Problem, Score
from ttscale.verifiers.base import CachedVerifier, candidate_key, problem_key
from ttscale.verifiers.math_answers import (
    ExactMatchVerifier,
    MathVerifier,
    math_verify_available,
    reference_key,
)

needs_math_verify = pytest.mark.skipif(
    not math_verify_available(), reason="math-verify is not installed (pip install ttscale[math])"
)


def candidates(*texts: str) -> list[Candidate]:
    return [Candidate(text=text, index=i) for i, text in enumerate(texts)]


def score(verifier: object, problem: Problem, texts: Sequence[str]) -> list[Score]:
    return asyncio.run(verifier.score(problem, candidates(*texts)))  # type: ignore[attr-defined]


HALF = Problem(id="half", prompt="What is 1/2 as a decimal?", answer="\\frac{1}{2}")


@pytest.fixture(scope="module")
def math_verifier() -> Iterator[MathVerifier]:
    if not math_verify_available():
        pytest.skip("math-verify is not installed")
    with MathVerifier(backend="math_verify") as verifier:
        yield verifier


@needs_math_verify
def test_math_verify_judges_equivalent_forms(math_verifier: MathVerifier) -> None:
    texts = ["So the answer is \\boxed{0.5}.", "We get $\\frac{2}{4}$", "\\boxed{0.6}", "no idea"]
    scores = score(math_verifier, HALF, texts)
    assert [s.verdict for s in scores] == [True, True, False, False]
    assert scores[0].value == 1.0 and scores[2].value == 0.0
    assert "no answer found" in scores[3].reason
    assert all(s.details["backend"] == "math_verify" for s in scores)


@needs_math_verify
def test_math_equivalence_merges_vote_groups(math_verifier: MathVerifier) -> None:
    assert isinstance(math_verifier, AnswerEquivalence)
    assert math_verifier.equivalent("\\frac{1}{2}", "0.5")
    assert math_verifier.equivalent("0.5", "\\frac{1}{2}")  # symmetric
    assert not math_verifier.equivalent("0.5", "0.6")
    groups = group_answers(["1/2", "0.5", "\\frac{1}{2}", "3"], equivalence=math_verifier)
    assert sorted(len(group.members) for group in groups) == [1, 3]


def _pool_workers(others: frozenset[int] = frozenset()) -> list[int]:
    """Our child processes that are multiprocessing workers (spawned, so named spawn_main),
    leaving out ``others`` (the workers of verifiers other tests keep)."""
    workers = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"spawn_main" in command and int(entry) not in others:
            workers.append(int(entry))
    return workers


# Equal numbers that math-verify cannot compare within a second: only a timeout says "no".
SLOW_PAIR = ("9^{9^{9}}", "9^{387420489}")


@needs_math_verify
def test_equivalence_from_async_code_runs_in_a_worker_that_is_replaced_when_it_dies() -> None:
    others = frozenset(_pool_workers())

    async def go() -> None:
        with MathVerifier(backend="math_verify", workers=1) as verifier:
            await verifier.start()
            (worker,) = _pool_workers(others)
            assert worker != os.getpid()
            # The loop keeps running while the worker compares.
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            assert await verifier.equivalent_async("2^{10}", "1024")
            assert not await verifier.equivalent_async("2^{10}", "2^{3}")
            ticker.cancel()
            assert ticks > 0
            assert _pool_workers(others) == [worker]  # the same worker did both
            os.kill(worker, signal.SIGKILL)  # a worker of ours, by its pid
            assert await verifier.equivalent_async("2^{10}", "1024")
            (replacement,) = _pool_workers(others)
            assert replacement not in (worker, os.getpid())
            # The blocking form, from a thread, recovers the same way.
            os.kill(replacement, signal.SIGKILL)
            same = await asyncio.to_thread(verifier.equivalent, "1024", "2^{10}")
            assert same and _pool_workers(others) not in ([], [replacement])

    asyncio.run(go())


@needs_math_verify
def test_a_comparison_math_verify_cannot_finish_counts_as_different() -> None:
    others = frozenset(_pool_workers())

    async def go() -> None:
        with MathVerifier(backend="math_verify", timeout_s=1) as verifier:
            await verifier.start()
            (worker,) = _pool_workers(others)
            started = time.perf_counter()
            assert not await verifier.equivalent_async(*SLOW_PAIR)
            # math-verify's own alarms ended it (a second per verify, both ways): the worker
            # stays.
            assert 1.0 <= time.perf_counter() - started < 20
            assert _pool_workers(others) == [worker]

    asyncio.run(go())


@needs_math_verify
def test_a_worker_stuck_past_its_limit_is_killed_and_replaced() -> None:
    others = frozenset(_pool_workers())

    async def go() -> None:
        with MathVerifier(backend="math_verify", timeout_s=5, stuck_after_s=1.0) as verifier:
            await verifier.start()
            (worker,) = _pool_workers(others)
            started = time.perf_counter()
            assert not await verifier.equivalent_async(*SLOW_PAIR)
            assert time.perf_counter() - started < 5  # not math-verify's 5 s alarms
            assert worker not in _pool_workers(others)  # killed
            await verifier.start()  # a new worker, warm: what follows is the candidate's time
            scores = await verifier.score(HALF, candidates(f"\\boxed{{{SLOW_PAIR[0]}}}"))
            assert scores[0].verdict is False and "no answer within 1 s" in scores[0].reason

    asyncio.run(go())


@needs_math_verify
def test_scoring_and_comparing_at_once_start_one_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[concurrent.futures.ProcessPoolExecutor] = []

    class SlowToStart(concurrent.futures.ProcessPoolExecutor):
        # Starting a pool takes a while here, so both callers are inside _executor() together.
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            time.sleep(0.2)
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", SlowToStart)
    together = threading.Barrier(2)
    results: dict[str, Any] = {}

    def scoring() -> None:  # the verifier on the event loop
        together.wait()
        results["scores"] = score(verifier, HALF, ["\\boxed{0.5}", "\\boxed{0.6}"])

    def comparing() -> None:  # a strategy's comparison thread
        together.wait()
        results["same"] = verifier.equivalent("2^{10}", "1024")

    with MathVerifier(backend="math_verify", workers=1) as verifier:
        threads = [threading.Thread(target=scoring), threading.Thread(target=comparing)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert len(started) == 1
    assert [s.verdict for s in results["scores"]] == [True, False]
    assert results["same"] is True


def test_a_caller_that_saw_an_old_pool_fail_keeps_the_new_one() -> None:
    with MathVerifier(backend="math_verify", workers=1) as verifier:
        old = verifier._executor()
        verifier._discard_pool(old)  # the first caller to see it broken replaces it
        new = verifier._executor()
        verifier._discard_pool(old)  # a second caller saw the same old pool fail
        assert new is not old and verifier._executor() is new


@needs_math_verify
def test_references_are_read_as_latex(math_verifier: MathVerifier) -> None:
    # Read bare, "2^{10}" would be its first number, 2, and equal to "2^{3}" and to "\\boxed{2}".
    assert not math_verifier.equivalent("2^{10}", "2^{3}")
    assert math_verifier.equivalent("2^{10}", "1024")
    assert math_verifier.equivalent("3\\sqrt{2}", "\\sqrt{18}")
    power = Problem(id="power", prompt="What is 2^10?", answer="2^{10}")
    verdicts = [s.verdict for s in score(math_verifier, power, ["\\boxed{2}", "\\boxed{1024}"])]
    assert verdicts == [False, True]


def test_fallback_normaliser_needs_no_dependency() -> None:
    verifier = MathVerifier(backend="normalise")
    problem = Problem(id="gsm", prompt="How much?", answer="1000")
    scores = score(verifier, problem, ["#### 1,000", "The answer is 1000.0", "\\boxed{999}", "hm"])
    assert [s.verdict for s in scores] == [True, True, False, False]
    assert verifier.equivalent("1,000", "1000.0") and not verifier.equivalent("1", "2")
    assert isinstance(verifier, AnswerEquivalence)


def test_exact_match_and_registry() -> None:
    verifier = create("verifier", "exact_match")
    assert isinstance(verifier, ExactMatchVerifier)
    problem = Problem(id="q", prompt="Capital of France?", answer="Paris")
    scores = score(verifier, problem, ["The answer is Paris.", "The answer is Lyon."])
    assert [s.verdict for s in scores] == [True, False]
    assert "differs" in scores[1].reason
    choice = create("verifier", "exact_match", extractor="choice")
    mc = Problem(id="mc", prompt="Pick one", answer="B")
    assert [s.verdict for s in score(choice, mc, ["The answer is (B)", "(C)"])] == [True, False]
    assert reference_key("\\boxed{42}") == "42"


def test_a_problem_without_a_reference_is_a_data_error() -> None:
    with pytest.raises(DataError):
        score(ExactMatchVerifier(), Problem(id="x", prompt="p"), ["1"])


def test_math_is_registered() -> None:
    assert isinstance(create("verifier", "math", backend="normalise"), MathVerifier)


# -- the cache ------------------------------------------------------------------------------------


class CountingVerifier:
    """Scores by text length and counts what it was asked to score."""

    def __init__(self, delay: float = 0.0) -> None:
        self.seen: list[str] = []
        self.delay = delay

    async def score(self, problem: Problem, batch: Sequence[Candidate]) -> list[Score]:
        await asyncio.sleep(self.delay)
        self.seen.extend(candidate.text for candidate in batch)
        return [Score(float(len(candidate.text))) for candidate in batch]


def test_cache_scores_each_problem_candidate_pair_once() -> None:
    inner = CountingVerifier()
    cached = CachedVerifier(inner)
    first = score(cached, HALF, ["a", "bb", "a"])
    second = score(cached, HALF, ["bb", "ccc"])
    assert [s.value for s in first] == [1.0, 2.0, 1.0]
    assert [s.value for s in second] == [2.0, 3.0]
    assert inner.seen == ["a", "bb", "ccc"]
    other = Problem(id="half", prompt="What is 1/2 as a decimal?", answer="0.5")
    score(cached, other, ["a"])  # same id, different reference: scored anew
    assert inner.seen == ["a", "bb", "ccc", "a"]
    assert problem_key(HALF) != problem_key(other)
    assert candidate_key(Candidate("a", 0)) == candidate_key(Candidate("a", 5))


def test_cache_shares_work_between_concurrent_calls_and_evicts() -> None:
    inner = CountingVerifier(delay=0.05)
    cached = CachedVerifier(inner, max_entries=2)

    async def go() -> list[list[Score]]:
        return list(
            await asyncio.gather(
                cached.score(HALF, candidates("x", "y")), cached.score(HALF, candidates("x"))
            )
        )

    results = asyncio.run(go())
    assert [s.value for s in results[1]] == [1.0]
    assert sorted(inner.seen) == ["x", "y"]
    score(cached, HALF, ["zz"])
    assert len(cached) == 2  # the oldest went


def test_cache_passes_errors_on_and_remembers_nothing() -> None:
    class Failing:
        async def score(self, problem: Problem, batch: Sequence[Candidate]) -> list[Score]:
            raise VerifierError("down")

    cached = CachedVerifier(Failing())
    with pytest.raises(VerifierError):
        score(cached, HALF, ["a"])
    assert len(cached) == 0
