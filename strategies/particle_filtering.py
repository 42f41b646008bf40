"""Particle filtering over reasoning steps (Puri et al. 2025, "A Probabilistic Inference Approach
to Inference-Time Scaling of LLMs using Particle-Based Monte Carlo Methods"; its_hub).

N particles (``samples``) are partial answers. Each round every open particle draws one next step
(particles that share a partial answer after resampling share one request, with ``n``), the
process reward scores it, and the particles are resampled N times with probabilities
``softmax(logit(r) / resample_temperature)`` of their aggregated rewards r (``last`` by default,
as its_hub; finished particles keep their final reward and may be resampled too). Resampling is
``multinomial`` (the paper's and its_hub's default) or ``systematic`` (lower variance), drawn
from the search's seeded generator. The search ends when every particle is finished, after
``max_steps`` rounds (the last draws each particle to its end) or when the budget refuses; the
last round is not resampled. The answer is the particle of highest weight (``select="score"``,
its_hub's ``argmax``), or the answer of largest total weight (``weighted_vote``), or the
commonest (``majority``).

Particle Gibbs (several sweeps with a reference particle) is not implemented: its_hub's version
spends ``num_iterations`` times the budget for a small gain in the paper, and budget-equal
comparisons are what ttscale is for; run particle filtering with N times the particles instead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from ttscale.errors import ConfigError
from ttscale.protocols import Sampler, Verifier
from ttscale.strategies.base import resolve_config
from ttscale.strategies.step_search import (
    SearchConfig,
    SearchRun,
    multinomial_resample,
    resampling_weights,
    systematic_resample,
)
from ttscale.types import Problem, Result

__all__ = ["ParticleFiltering", "ParticleFilteringConfig", "Resampling", "resample"]

Resampling = Literal["multinomial", "systematic"]


@dataclass(frozen=True)
class ParticleFilteringConfig(SearchConfig):
    """Options of :class:`ParticleFiltering` (see :class:`SearchConfig`; ``beam_width`` unused).

    ``resampling``: ``multinomial`` or ``systematic``. ``resample_temperature``: the softmax
    temperature of the weights (1, the paper's; larger flattens them toward uniform).
    """

    resampling: Resampling = "multinomial"
    resample_temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resampling not in ("multinomial", "systematic"):
            raise ConfigError(
                f"resampling must be multinomial or systematic, got {self.resampling!r}"
            )
        if not self.resample_temperature > 0:
            raise ConfigError(
                f"resample_temperature must be > 0, got {self.resample_temperature!r}"
            )


def resample(weights: list[float], count: int, how: Resampling, rng: Any) -> list[int]:
    """Positions of the particles kept (with repeats), by ``how``."""
    if how == "systematic":
        return systematic_resample(weights, count, rng)
    return multinomial_resample(weights, count, rng)


class ParticleFiltering:
    """Particle filtering; see the module docstring."""

    name = "particle_filtering"

    def __init__(self, config: ParticleFilteringConfig | None = None, **options: Any) -> None:
        self.config = resolve_config(ParticleFilteringConfig, config, options, self.name)

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result:
        c = self.config
        run = SearchRun(problem, sampler, verifier, c, self.name)
        particles = [0] * c.samples  # node ids; the root until a first step is drawn
        weights = [1.0 / c.samples] * c.samples
        reason = "max_steps"
        for round_ in range(c.max_steps):
            particles = await self._propagate(run, particles, round_)
            values = [run.nodes[p].value for p in particles]
            weights = resampling_weights(
                values, c.resample_temperature, probabilities=run.probabilities
            )
            if not run.can_draw:
                reason = "budget"
                break
            if all(run.nodes[p].final for p in particles):
                reason = "finished"
                break
            if round_ == c.max_steps - 1:
                break
            picks = resample(weights, c.samples, c.resampling, run.rng)
            run.event(
                "resample",
                round=round_,
                particles=particles,
                weights=weights,
                picks=picks,
                method=c.resampling,
            )
            survivors = [particles[p] for p in picks]
            for node_id in set(particles) - set(survivors):
                run.nodes[node_id].status = "pruned"
            for node_id in set(survivors):
                run.nodes[node_id].status = "kept"
            particles = survivors
        votes: dict[int, float] = {}
        for node_id, weight in zip(particles, weights, strict=True):
            votes[node_id] = votes.get(node_id, 0.0) + weight
        leaves = [p for p in dict.fromkeys(particles) if p != 0]
        # "score" picks the leaf of highest reward: the particle of highest weight (argmax).
        return run.result(leaves, votes=votes, stop=reason, weights=weights)

    async def _propagate(self, run: SearchRun, particles: list[int], round_: int) -> list[int]:
        """One step for every open particle; particles on one node share one request."""
        open_counts = Counter(p for p in particles if not run.nodes[p].final)
        plan = sorted(open_counts.items())
        children = await run.expand(plan, to_end=round_ == self.config.max_steps - 1)
        handed: dict[int, list[int]] = {}
        for node in children:
            assert node.parent is not None  # a drawn step always has a parent
            handed.setdefault(node.parent, []).append(node.id)
        moved = []
        for p in particles:
            mine = handed.get(p)
            if run.nodes[p].final or not mine:
                moved.append(p)  # finished, or its step was not drawn (budget): stays
            else:
                moved.append(mine.pop(0))
        return moved
