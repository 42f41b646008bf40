"""Math and exact-match verifiers, answer equivalence for voting, and the score cache."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

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
