"""First-to-ahead-by-k voting with red flags (MAKER, Meyerson et al. 2025).

Votes are drawn until one answer leads every other by ``margin``. Red-flagged samples (too long,
truncated, no parseable answer, or caught by a custom predicate) are discarded, never repaired, and
another is drawn in their place. Each round draws exactly the fewest votes that could settle the
race (``margin`` minus the current lead), so no answer can reach the margin part way through a
round and the outcome is that of drawing one vote at a time. ``samples`` caps the total draws,
red-flagged ones included; at the cap the current leader is returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ttscale.errors import ConfigError
from ttscale.protocols import Sampler, Verifier
from ttscale.strategies.base import ProblemRun, StrategyConfig, resolve_config, votes_summary
from ttscale.strategies.selection import (
    AnswerGroup,
    best_member,
    group_answers,
    select_majority,
    vote_counts,
)
from ttscale.strategies.stopping import first_to_ahead_by_k, lead, votes_needed_for_lead
from ttscale.types import Candidate, Problem, Result

__all__ = ["AheadByK", "AheadByKConfig", "red_flag_reason"]

RedFlag = Callable[[Candidate], bool]


@dataclass(frozen=True)
class AheadByKConfig(StrategyConfig):
    """Options of :class:`AheadByK`.

    ``margin`` is MAKER's k. ``max_response_tokens`` flags longer completions; ``flag_truncated``
    flags completions cut off by the length limit; ``flag_unparseable`` flags those the extractor
    finds no answer in; ``red_flag`` is a custom predicate (True = discard). ``samples`` (default
    64) caps the total draws.
    """

    samples: int = 64
    margin: int = 3
    max_response_tokens: int | None = None
    flag_truncated: bool = True
    flag_unparseable: bool = True
    red_flag: RedFlag | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.margin < 1:
            raise ConfigError(f"margin must be >= 1, got {self.margin!r}")
        if self.max_response_tokens is not None and self.max_response_tokens < 1:
            raise ConfigError(f"max_response_tokens must be >= 1, got {self.max_response_tokens!r}")
        if self.red_flag is not None and not callable(self.red_flag):
            raise ConfigError(f"red_flag must be a function of a candidate, got {self.red_flag!r}")


def red_flag_reason(candidate: Candidate, answer: str | None, config: AheadByKConfig) -> str | None:
    """Why a sample is discarded, or None when it may vote."""
    limit = config.max_response_tokens
    if limit is not None and candidate.completion_tokens > limit:
        return "too_long"
    if config.flag_truncated and candidate.finish_reason == "length":
        return "truncated"
    if answer is None and config.flag_unparseable:
        return "unparseable"
    if config.red_flag is not None and config.red_flag(candidate):
        return "custom"
    return None


def _group_names(groups: Sequence[AnswerGroup], count: int) -> list[str | None]:
    """Each vote's group name, in draw order; None for red-flagged (non-voting) samples."""
    names: list[str | None] = [None] * count
    for group in groups:
        for position in group.members:
            names[position] = group.answer
    return names


class AheadByK:
    """The first answer to lead by ``margin`` votes wins."""

    name = "ahead_by_k"

    def __init__(self, config: AheadByKConfig | None = None, **options: Any) -> None:
        self.config = resolve_config(AheadByKConfig, config, options, "ahead_by_k")

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result:
        """Run on ``problem``. The verifier is not used: votes decide."""
        config = self.config
        run = ProblemRun(problem, sampler, config, self.name)
        votes: list[str | None] = []  # per candidate: its answer, or None when red-flagged
        flags: dict[str, int] = {}
        counts: list[int] = []
        reason = "max_draws"
        while run.next_index < config.samples:
            count = min(
                votes_needed_for_lead(counts, config.margin), config.samples - run.next_index
            )
            new = await run.draw(count)
            if not run.can_draw:
                reason = "budget"
                break
            for candidate, answer in zip(new, run.answers[len(votes) :], strict=True):
                why = red_flag_reason(candidate, answer, config)
                if why is not None:
                    flags[why] = flags.get(why, 0) + 1
                votes.append(None if why is not None else answer)
            groups = group_answers(votes, equivalence=config.equivalence)
            counts = [group.count for group in groups]
            # The rule itself is stopping.first_to_ahead_by_k, read over the votes as group names
            # (so that equivalent answers vote together); the rounds above only decide how many
            # votes to draw before asking it again.
            if first_to_ahead_by_k(_group_names(groups, len(votes)), config.margin) is not None:
                reason = "ahead_by_k"
                break
        indices = run.indices
        everything = group_answers(votes, indices=indices, equivalence=config.equivalence)
        run.event("vote", votes=votes_summary(vote_counts(everything)), red_flags=flags)
        run.event(
            "stop",
            reason=reason,
            samples=len(run.candidates),
            lead=lead(group.count for group in everything),
            margin=config.margin,
        )
        groups = select_majority(votes, config.k, indices=indices, equivalence=config.equivalence)
        return run.result([best_member(group.members, None, indices) for group in groups])
