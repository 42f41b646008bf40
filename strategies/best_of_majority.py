"""Best-of-Majority (Di et al. 2025): keep frequent-enough answers, then pick by verifier score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ttscale.errors import ConfigError
from ttscale.protocols import Sampler, Verifier
from ttscale.strategies.base import (
    ProblemRun,
    StrategyConfig,
    resolve_config,
    score_values,
    votes_summary,
)
from ttscale.strategies.selection import (
    GroupScore,
    best_member,
    group_answers,
    select_best_of_majority,
    survival_threshold,
    vote_counts,
)
from ttscale.types import Problem, Result

__all__ = ["BestOfMajority", "BestOfMajorityConfig"]


@dataclass(frozen=True)
class BestOfMajorityConfig(StrategyConfig):
    """Options of :class:`BestOfMajority`.

    An answer survives when its frequency among the N samples is at least ``alpha`` (a fraction in
    [0, 1]) or, with ``min_count``, when it has at least that many samples; give one of the two.
    Surviving groups are ranked by the ``group_score`` ("max" or "mean") of their members' scores.
    ``alpha = 0`` (the default) is best-of-N over distinct answers. Answer groups the verifier
    finds equal (when it has ``equivalent(a, b)``) are merged before counting, unless
    ``equivalence`` is configured.
    """

    alpha: float = 0.0
    min_count: int | None = None
    group_score: GroupScore = "max"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be a fraction in [0, 1], got {self.alpha!r}")
        if self.min_count is not None:
            if self.alpha != 0.0:
                raise ConfigError("give alpha (a fraction) or min_count (a count), not both")
            if self.min_count < 0:
                raise ConfigError(f"min_count must be >= 0, got {self.min_count!r}")
        if self.group_score not in ("max", "mean"):
            raise ConfigError(f"group_score must be 'max' or 'mean', got {self.group_score!r}")


class BestOfMajority:
    """Best-of-Majority for pass@k: the top k surviving answer groups by group score."""

    name = "best_of_majority"

    def __init__(self, config: BestOfMajorityConfig | None = None, **options: Any) -> None:
        self.config = resolve_config(BestOfMajorityConfig, config, options, "best_of_majority")

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result:
        if verifier is None:
            raise ConfigError("best_of_majority needs a verifier to score its candidates")
        config = self.config
        run = ProblemRun(problem, sampler, config, self.name)
        await run.draw(config.samples)
        scores = await run.score(verifier)
        values = score_values(scores)
        equivalence = await run.equivalence(config.equivalence, verifier)
        indices = run.indices
        groups, fell_back = select_best_of_majority(
            run.answers,
            values,
            config.k,
            alpha=config.alpha,
            min_count=config.min_count,
            group_score=config.group_score,
            indices=indices,
            equivalence=equivalence,
        )
        everything = group_answers(run.answers, indices=indices, equivalence=equivalence)
        run.event(
            "vote",
            votes=votes_summary(vote_counts(everything)),
            threshold=survival_threshold(len(run.answers), config.alpha, config.min_count),
            fallback_to_mode=fell_back,
        )
        run.event("stop", reason="budget", samples=len(run.candidates))
        picked = [best_member(group.members, values, indices) for group in groups]
        return run.result(picked, scores)
