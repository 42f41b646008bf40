"""A plain function where a step scorer or a verifier is accepted (ProcessRewardVerifier, a
search's reward): a step scorer ``(problem, steps)`` and a verifier function ``(problem,
candidates)`` have the same shape; they are told apart by the second parameter, or refused with
an error naming both wrappers. Before, a step-scorer function given to ProcessRewardVerifier was
silently called with Candidate objects (its scores were of their reprs)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from ttscale.errors import ConfigError
from ttscale.protocols import as_verifier
from ttscale.registry import create
from ttscale.strategies.beam_search import BeamSearch
from ttscale.testing.step_env import StepEnvironment
from ttscale.types import Candidate, Problem
from ttscale.verifiers.process_reward import (
    PrefixStepScorer,
    ProcessRewardVerifier,
    split_steps,
)
from ttscale.verifiers.process_reward_models import as_step_scorer, function_kind

ENV = StepEnvironment.uniform(6, depth=3, p_step=0.6, false_positive=0.3, false_negative=0.3)


def _solutions(problem: Problem, count: int = 6) -> list[str]:
    batch = asyncio.run(ENV.sampler(base_seed=5).sample(problem.input, count))
    return [c.text for c in batch.candidates]


def _scores(verifier: Any, problem: Problem, texts: Sequence[str]) -> list[list[float]]:
    candidates = [Candidate(text=t, index=i) for i, t in enumerate(texts)]
    scores = asyncio.run(verifier.score(problem, candidates))
    return [list(s.details["step_scores"]) for s in scores]


def test_the_kind_of_a_plain_function_is_read_from_its_second_parameter() -> None:
    def typed_steps(problem: Problem, items: Sequence[str]) -> list[float]:
        return [1.0] * len(items)

    def typed_candidates(problem: Problem, items: Sequence[Candidate]) -> list[float]:
        return [1.0] * len(items)

    assert function_kind(typed_steps) == "steps"
    assert function_kind(typed_candidates) == "candidates"
    assert function_kind(lambda problem, steps: []) == "steps"
    assert function_kind(lambda problem, candidates: []) == "candidates"
    assert function_kind(lambda problem, batch: []) == "candidates"
    assert function_kind(lambda a, b: []) is None
    assert function_kind(lambda only: []) is None
    assert function_kind(ENV.prm) == "steps"  # a bound method: (problem, steps: Sequence[str])


def test_a_step_scorer_function_given_to_the_verifier_scores_steps() -> None:
    problem = ENV.problems()[0]
    texts = _solutions(problem)
    expected = [ENV.prm(problem, split_steps(t)) for t in texts]
    assert _scores(ProcessRewardVerifier(ENV.prm), problem, texts) == expected
    assert (
        _scores(
            ProcessRewardVerifier(lambda problem, steps: ENV.prm(problem, steps)), problem, texts
        )
        == expected
    )
    built = create("verifier", "process_reward", step_scorer=ENV.prm, aggregation="last")
    assert _scores(built, problem, texts) == expected
    # Control: the same function taken as a verifier (what happened before) scores wrongly.
    trap = ProcessRewardVerifier(PrefixStepScorer(as_verifier(ENV.prm)))
    assert _scores(trap, problem, texts) != expected


def test_a_verifier_function_given_to_the_verifier_scores_each_prefix() -> None:
    problem = ENV.problems()[1]
    texts = _solutions(problem)

    def last_step(problem: Problem, candidates: Sequence[Candidate]) -> list[float]:
        return [ENV.prm(problem, split_steps(c.text))[-1] for c in candidates]

    expected = [ENV.prm(problem, split_steps(t)) for t in texts]
    verifier = ProcessRewardVerifier(last_step)
    assert isinstance(verifier.step_scorer, PrefixStepScorer)
    assert _scores(verifier, problem, texts) == expected


def test_a_function_that_cannot_be_placed_is_refused_naming_both_wrappers() -> None:
    with pytest.raises(ConfigError, match="ProcessRewardVerifier") as caught:
        ProcessRewardVerifier(lambda a, b: [0.5])
    assert "as_step_scorer(" in str(caught.value) and "as_verifier(" in str(caught.value)
    # Wrapped, either way, it is accepted.
    assert ProcessRewardVerifier(as_step_scorer(lambda a, b: [0.5])) is not None
    assert ProcessRewardVerifier(as_verifier(lambda a, b: [0.5])) is not None
    with pytest.raises(ConfigError, match="ProcessRewardVerifier"):
        ProcessRewardVerifier(42)


def test_a_search_reward_may_be_a_verifier_function() -> None:
    problem = ENV.problems()[2]

    def prefix_reward(problem: Problem, candidates: Sequence[Candidate]) -> list[float]:
        return [ENV.prm(problem, split_steps(c.text))[-1] for c in candidates]

    def run(reward: Any) -> Any:
        strategy = BeamSearch(samples=4, beam_width=2, reward=reward, max_steps=5)
        return asyncio.run(strategy.run(problem, ENV.sampler(base_seed=9)))

    by_steps, by_prefix = run(ENV.prm), run(prefix_reward)
    assert by_prefix.answers == by_steps.answers
    assert [s.value for s in by_prefix.scores] == [s.value for s in by_steps.scores]
