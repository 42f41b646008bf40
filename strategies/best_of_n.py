"""Best-of-N: draw N candidates, let a verifier score them, keep the highest scored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ttscale.errors import ConfigError
from ttscale.protocols import Sampler, Verifier
from ttscale.strategies.base import ProblemRun, StrategyConfig, resolve_config, score_values
from ttscale.strategies.selection import select_best_of_n
from ttscale.types import Problem, Result

__all__ = ["BestOfN", "BestOfNConfig"]


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
        picked = select_best_of_n(
            values,
            config.k,
            indices=run.indices,
            answers=run.answers if config.distinct else None,
        )
        run.event("stop", reason="budget", samples=len(run.candidates))
        return run.result(picked, scores, scores_selected=[values[p] for p in picked])
