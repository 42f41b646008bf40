"""Process reward: score a solution step by step, then aggregate the step scores.

A :class:`StepScorer` scores every step of one candidate (given the steps before it). The
aggregations are pure functions: ``last`` (the final step's score, as outcome-like PRM use
does), ``min`` (a chain is as good as its weakest step), ``product`` (steps as independent
chances of being right) and ``mean``.

:class:`ProcessRewardVerifier` splits each candidate into steps (by a separator, blank lines by
default, or a function), scores them, and aggregates. :class:`PrefixStepScorer` turns any
verifier (a reward model, a judge) into a step scorer by scoring each prefix of the solution.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from ttscale.errors import ConfigError, VerifierError
from ttscale.protocols import Verifier
from ttscale.registry import resolve_config
from ttscale.types import Candidate, Problem, Score
from ttscale.verifiers.base import resolve_verifier

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "PrefixStepScorer",
    "ProcessRewardConfig",
    "ProcessRewardVerifier",
    "StepScorer",
    "aggregate_last",
    "aggregate_mean",
    "aggregate_min",
    "aggregate_product",
    "aggregate_steps",
    "checked_step_scores",
    "split_steps",
]

Aggregation = Literal["last", "min", "product", "prod", "mean"]


def aggregate_last(scores: Sequence[float]) -> float:
    return float(scores[-1])


def aggregate_min(scores: Sequence[float]) -> float:
    return float(min(scores))


def aggregate_product(scores: Sequence[float]) -> float:
    return float(math.prod(scores))


def aggregate_mean(scores: Sequence[float]) -> float:
    return float(sum(scores) / len(scores))


AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "last": aggregate_last,
    "min": aggregate_min,
    "product": aggregate_product,
    "prod": aggregate_product,  # search-and-learn's name for it
    "mean": aggregate_mean,
}


def checked_step_scores(scores: Any, steps: int, who: str = "the step scorer") -> list[float]:
    """A step scorer's answer for ``steps`` steps as floats, one a step; else a VerifierError
    saying what came back. A wrong count would put one step's score on another, and a NaN
    aggregates differently by where it stands (``min`` skips it or keeps it), so both are
    refused rather than read."""
    try:
        values = list(scores)
    except TypeError as exc:
        raise VerifierError(f"{who} returned {scores!r}, not a list of step scores") from exc
    if len(values) != steps:
        raise VerifierError(f"{who} returned {len(values)} scores for {steps} steps")
    checked = []
    for position, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise VerifierError(f"{who} returned {value!r} for step {position + 1}, not a number")
        if math.isnan(value):
            raise VerifierError(f"{who} returned NaN for step {position + 1}")
        checked.append(float(value))
    return checked


def aggregate_steps(scores: Sequence[float], how: str = "min") -> float:
    """Aggregate step scores (pure). An empty list is an error: no steps, nothing to judge."""
    if not scores:
        raise VerifierError("cannot aggregate the scores of zero steps")
    try:
        return AGGREGATIONS[how](scores)
    except KeyError:
        raise ConfigError(
            f"unknown aggregation {how!r}; known: {', '.join(sorted(AGGREGATIONS))}"
        ) from None


def split_steps(text: str, separator: str = r"\n\s*\n") -> list[str]:
    """The non-empty steps of a solution, split on a regular expression (pure)."""
    return [step.strip() for step in re.split(separator, text) if step.strip()]


@runtime_checkable
class StepScorer(Protocol):
    """Scores each step of one solution; ``steps[i]`` is judged with ``steps[:i]`` before it."""

    async def score_steps(self, problem: Problem, steps: Sequence[str]) -> list[float]: ...


class PrefixStepScorer:
    """A step scorer from any verifier: step i's score is the verifier's score of steps[:i+1]."""

    def __init__(self, verifier: Verifier | Any, joiner: str = "\n\n") -> None:
        self.verifier = resolve_verifier(verifier, "PrefixStepScorer")
        self.joiner = joiner

    async def score_steps(self, problem: Problem, steps: Sequence[str]) -> list[float]:
        prefixes = [
            Candidate(text=self.joiner.join(steps[: end + 1]), index=end)
            for end in range(len(steps))
        ]
        return [score.number for score in await self.verifier.score(problem, prefixes)]


@dataclass(frozen=True)
class ProcessRewardConfig:
    """Settings of a :class:`ProcessRewardVerifier`."""

    aggregation: Aggregation = "min"
    separator: str = r"\n\s*\n"
    empty_value: float = 0.0

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown aggregation {self.aggregation!r}")
        re.compile(self.separator)


class ProcessRewardVerifier:
    """Splits candidates into steps, scores the steps, aggregates. See the module docstring."""

    def __init__(
        self,
        step_scorer: StepScorer | Verifier | Any,
        config: ProcessRewardConfig | None = None,
        *,
        splitter: Callable[[str], list[str]] | None = None,
        **options: Any,
    ) -> None:
        config = resolve_config(ProcessRewardConfig, config, options, "ProcessRewardVerifier")
        self.config = config
        # A plain function may mean a step scorer or a verifier: told apart, or refused.
        from ttscale.verifiers.process_reward_models import resolve_step_scorer  # imports us

        self.step_scorer: StepScorer = resolve_step_scorer(step_scorer, "ProcessRewardVerifier")
        self.splitter = splitter or (lambda text: split_steps(text, config.separator))

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        scores = []
        for candidate in candidates:
            steps = self.splitter(candidate.text)
            if not steps:
                scores.append(Score(self.config.empty_value, reason="the candidate has no steps"))
                continue
            raw = await self.step_scorer.score_steps(problem, steps)
            step_scores = checked_step_scores(raw, len(steps))
            value = aggregate_steps(step_scores, self.config.aggregation)
            weakest = min(range(len(step_scores)), key=step_scores.__getitem__)
            reason = (
                f"{self.config.aggregation} of {len(steps)} step scores = {value:.4g}; "
                f"weakest step {weakest + 1} ({step_scores[weakest]:.4g})"
            )
            scores.append(Score(value, reason=reason, details={"step_scores": step_scores}))
        return scores
