"""Adaptive sampling for majority vote: draw small batches until a stopping rule is confident.

Rules: ``"beta"`` is Adaptive-Consistency's Beta rule (stop when P(p_top > 1/2) >= ``threshold``
under Beta(a + 1, b + 1), a and b the votes of the two leading answers); ``"esc"`` is ESC's rule
(stop at the first batch, a window of ``batch_size`` samples, that is unanimous). The strategy looks
after every batch and never asks for more than the next batch, so it stops paying when it stops;
``samples`` caps the total.

Defaults follow the papers: the Beta rule at 0.95 with at most 40 samples, drawn one at a time
(Aggarwal et al. 2023; a batch of b can overshoot the stopping point by up to b - 1 samples), and
ESC's window of 5 (Li et al. 2024). Larger batches trade samples for fewer round trips.

What ESC answers when it stops at a unanimous window (``answer``): ``"majority"`` (the default)
votes over every sample drawn; ``"window"`` answers with the window's answer, as the ESC authors'
code does. The default stays the vote because the samples before the window are paid for and carry
information: the two differ only when an earlier answer has at least as many votes as the
window's (e.g. A A B | A A C | B B B), and the vote keeps results of earlier versions. Without a
unanimous window both vote over everything drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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
from ttscale.strategies.stopping import beta_rule_stops, unanimous
from ttscale.types import Problem, Result

__all__ = ["ESC_WINDOW", "Adaptive", "AdaptiveConfig", "EscAnswer", "StopRule", "window_first"]

StopRule = Literal["beta", "esc"]
EscAnswer = Literal["majority", "window"]
ESC_WINDOW = 5
"""ESC's window (Li et al. 2024): the default ``batch_size`` of the ``"esc"`` rule."""


@dataclass(frozen=True)
class AdaptiveConfig(StrategyConfig):
    """Options of :class:`Adaptive`. ``samples`` (default 40, as in the paper) is the cap.

    ``batch_size`` 0 (the default) means the rule's paper setting: 1 for ``"beta"``, a window of 5
    for ``"esc"``. ``answer`` is what ESC answers at a unanimous window (see the module).
    """

    samples: int = 40
    rule: StopRule = "beta"
    threshold: float = 0.95
    batch_size: int = 0
    answer: EscAnswer = "majority"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rule not in ("beta", "esc"):
            raise ConfigError(f"rule must be 'beta' or 'esc', got {self.rule!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if self.batch_size < 0:
            raise ConfigError(
                f"batch_size must be >= 1 (or 0 for the rule's default), got {self.batch_size!r}"
            )
        if self.answer not in ("majority", "window"):
            raise ConfigError(f"answer must be 'majority' or 'window', got {self.answer!r}")
        if self.batch_size == 0:
            object.__setattr__(self, "batch_size", ESC_WINDOW if self.rule == "esc" else 1)


def should_stop(
    answers: list[str | None], last_batch: list[str | None], config: AdaptiveConfig
) -> bool:
    """Whether the rule is satisfied by the votes so far (pure; no sampling)."""
    if config.rule == "esc":
        return len(last_batch) == config.batch_size and unanimous(last_batch)
    groups = group_answers(answers, equivalence=config.equivalence)
    return beta_rule_stops((group.count for group in groups), config.threshold)


class Adaptive:
    """Majority vote that stops sampling once the vote is settled."""

    name = "adaptive"

    def __init__(self, config: AdaptiveConfig | None = None, **options: Any) -> None:
        self.config = resolve_config(AdaptiveConfig, config, options, "adaptive")

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result:
        """Run on ``problem``. The verifier is not used: the rules only count votes."""
        config = self.config
        run = ProblemRun(problem, sampler, config, self.name)
        reason = "max_samples"
        while run.next_index < config.samples:
            count = min(config.batch_size, config.samples - run.next_index)
            new = await run.draw(count)
            if not run.can_draw:
                reason = "budget"
                break
            last_batch = run.answers[len(run.answers) - len(new) :]
            if should_stop(run.answers, last_batch, config):
                reason = "confident" if config.rule == "beta" else "unanimous_window"
                break
        indices = run.indices
        everything = group_answers(run.answers, indices=indices, equivalence=config.equivalence)
        run.event("vote", votes=votes_summary(vote_counts(everything)))
        run.event("stop", reason=reason, samples=len(run.candidates), rule=config.rule)
        groups = select_majority(
            run.answers, config.k, indices=indices, equivalence=config.equivalence
        )
        if reason == "unanimous_window" and config.answer == "window":
            groups = window_first(groups, everything, len(run.answers) - 1)
        return run.result([best_member(group.members, None, indices) for group in groups])


def window_first(
    groups: list[AnswerGroup], everything: list[AnswerGroup], last: int
) -> list[AnswerGroup]:
    """The selection with the group of position ``last`` (the unanimous window's) first (pure)."""
    chosen = next(group for group in everything if last in group.members)
    rest = [group for group in groups if group.members != chosen.members]
    return [chosen, *rest][: len(groups)]
