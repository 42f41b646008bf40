"""``quorum``: draw a few samples at a time and stop as soon as one answer has enough votes.

Easy questions settle after a handful of samples; hard ones use the whole budget.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from ttscale import ConfigError, Problem, Result, Sampler, Verifier
from ttscale.strategies import StrategyConfig
from ttscale.strategies.base import ProblemRun, resolve_config


@dataclass(frozen=True)
class QuorumConfig(StrategyConfig):
    """``quorum`` votes win; ``batch`` samples per round; ``samples`` caps the total."""

    quorum: int = 3
    batch: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()  # checks samples, k, params and extractor like the built-ins
        if self.quorum < 1 or self.batch < 1:
            raise ConfigError("quorum and batch must be >= 1")


class Quorum:
    name = "quorum"

    def __init__(self, config: QuorumConfig | None = None, **options: Any) -> None:
        # Keyword options as the registry passes them, checked by name like the built-ins.
        self.config = resolve_config(QuorumConfig, config, options, self.name)

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result:
        config = self.config
        # ProblemRun keeps sample indices (and so seeds) distinct, sums usage and builds the trace.
        run = ProblemRun(problem, sampler, config, self.name)
        votes: Counter[str] = Counter()
        reason = "samples"
        while run.next_index < config.samples and run.can_draw:
            await run.draw(min(config.batch, config.samples - run.next_index))
            votes = Counter(answer for answer in run.answers if answer is not None)
            if votes and votes.most_common(1)[0][1] >= config.quorum:
                reason = "quorum"
                break
        run.event("vote", votes=dict(votes.most_common()))
        run.event("stop", reason=reason if run.can_draw else "budget", samples=len(run.candidates))
        # Each of the k most voted answers is represented by its earliest sample.
        picked = [run.answers.index(answer) for answer, _ in votes.most_common(config.k)]
        return run.result(picked or [0])
