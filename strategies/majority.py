"""Majority vote (self-consistency), optionally weighted by verifier scores."""

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
from ttscale.strategies.selection import best_member, group_answers, select_majority, vote_counts
from ttscale.types import Problem, Result, Score

__all__ = ["Majority", "MajorityConfig"]


@dataclass(frozen=True)
class MajorityConfig(StrategyConfig):
    """Options of :class:`Majority`.

    ``weighted``: each vote counts its verifier score instead of 1 (needs a verifier). Without it
    the verifier, if one is given, does not score: plain self-consistency needs no scores. Either
    way a verifier that can compare answers (``equivalent(a, b)``, as the math verifier can) merges
    the groups of answers it finds equal, unless ``equivalence`` is configured.
    """

    weighted: bool = False


class Majority:
    """The most frequent answer wins; top-k answer groups for pass@k.

    Each selected group is represented by its best-scored member when there are scores, else by its
    earliest sample. Candidates without an extractable answer do not vote.
    """

    name = "majority"

    def __init__(self, config: MajorityConfig | None = None, **options: Any) -> None:
        self.config = resolve_config(MajorityConfig, config, options, "majority")

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result:
        config = self.config
        if config.weighted and verifier is None:
            raise ConfigError("majority with weighted=True needs a verifier")
        run = ProblemRun(problem, sampler, config, self.name)
        await run.draw(config.samples)
        scores: list[Score] | None = None
        values: list[float] | None = None
        if config.weighted and verifier is not None:
            scores = await run.score(verifier)
            values = score_values(scores)
        equivalence = await run.equivalence(config.equivalence, verifier)
        indices = run.indices
        groups = select_majority(
            run.answers,
            config.k,
            weights=values,
            indices=indices,
            equivalence=equivalence,
        )
        everything = group_answers(run.answers, indices=indices, equivalence=equivalence)
        run.event("vote", votes=votes_summary(vote_counts(everything)), weighted=config.weighted)
        run.event("stop", reason="budget", samples=len(run.candidates))
        picked = [best_member(group.members, values, indices) for group in groups]
        return run.result(picked, scores)
