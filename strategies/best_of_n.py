"""Best-of-N: draw N candidates, let a verifier score them, keep the highest scored.

A candidate the verifier could not score (``Score.value`` None, e.g. a judge's unreadable reply)
ranks after every scored one. When none could be scored, the selection falls back to majority
voting (:func:`~ttscale.strategies.selection.select_unscored`) and says so: a ``fallback`` trace
event, a WARNING in the log, and in the proxy's answer a line in ``ttscale.warnings``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ttscale.errors import ConfigError
from ttscale.protocols import Sampler, Verifier
from ttscale.strategies.base import ProblemRun, StrategyConfig, resolve_config, score_values
from ttscale.strategies.selection import select_best_of_n, select_unscored
from ttscale.types import Problem, Result

__all__ = ["BestOfN", "BestOfNConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BestOfNConfig(StrategyConfig):
    """Options of :class:`BestOfN`.

    ``distinct``: for k > 1, spend the k picks on distinct answers (the next best candidate whose
    answer no earlier pick has), as pass@k wants; otherwise the k highest-scored candidates.
    """

    distinct: bool = False


class BestOfN:
    """Highest verifier score wins; ties go to the lowest sample index."""

    name = "best_of_n"

    def __init__(self, config: BestOfNConfig | None = None, **options: Any) -> None:
        self.config = resolve_config(BestOfNConfig, config, options, "best_of_n")

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result:
        if verifier is None:
            raise ConfigError("best_of_n needs a verifier to score its candidates")
        config = self.config
        run = ProblemRun(problem, sampler, config, self.name)
        await run.draw(config.samples)
        scores = await run.score(verifier)
        values = score_values(scores)
        if scores and all(score.value is None for score in scores):
            reason = (
                f"the verifier scored none of the {len(scores)} candidates, so best_of_n fell "
                "back to majority voting over their answers"
            )
            log.warning("problem %s: %s", problem.id, reason)
            run.event("fallback", rule="majority", unscored=len(scores), reason=reason)
            picked = select_unscored(run.answers, config.k, indices=run.indices)
        else:
            picked = select_best_of_n(
                values,
                config.k,
                indices=run.indices,
                answers=run.answers if config.distinct else None,
            )
        run.event("stop", reason="budget", samples=len(run.candidates))
        return run.result(picked, scores, scores_selected=[values[p] for p in picked])
