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

Particle Gibbs (``gibbs_sweeps`` > 1; the paper's Algorithm 2, its_hub's ``num_iterations``):
the N particles are split over the sweeps, ``N / sweeps`` each, so the budget stays N (as
its_hub). The first sweep is particle filtering. After a sweep, ``reference_particles`` R paths
are drawn from its final particles with probabilities ``softmax(logit(r) / T)`` (multinomial, the
search's generator); the next sweep runs ``N / sweeps - R`` free particles from the root beside
the R references (conditional SMC): at round t the references take part in the resampling with
the value of their own path at depth t (their last node when shorter), and a free particle that
draws a reference continues from that prefix of the reference, branching off it. References are
not drawn again. The answer is picked among the last sweep's particles and references.
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

__all__ = [
    "ParticleFiltering",
    "ParticleFilteringConfig",
    "Resampling",
    "ancestor",
    "check_gibbs",
    "resample",
]

Resampling = Literal["multinomial", "systematic"]


@dataclass(frozen=True)
class ParticleFilteringConfig(SearchConfig):
    """Options of :class:`ParticleFiltering` (see :class:`SearchConfig`; ``beam_width`` unused).

    ``resampling``: ``multinomial`` or ``systematic``. ``resample_temperature``: the softmax
    temperature of the weights (1, the paper's; larger flattens them toward uniform).
    ``gibbs_sweeps``: 1 is particle filtering; more is particle Gibbs with ``samples /
    gibbs_sweeps`` particles a sweep and ``reference_particles`` references (1, its_hub's).
    """

    resampling: Resampling = "multinomial"
    resample_temperature: float = 1.0
    gibbs_sweeps: int = 1
    reference_particles: int = 1

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
        check_gibbs(self.samples, self.gibbs_sweeps, self.reference_particles)


def check_gibbs(samples: int, sweeps: int, references: int) -> None:
    """Particle Gibbs' options make sense together, else a ConfigError naming them (pure)."""
    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 1:
        raise ConfigError(f"gibbs_sweeps must be an integer >= 1, got {sweeps!r}")
    if isinstance(references, bool) or not isinstance(references, int) or references < 1:
        raise ConfigError(f"reference_particles must be an integer >= 1, got {references!r}")
    if samples % sweeps:
        raise ConfigError(f"samples ({samples}) must be a multiple of gibbs_sweeps ({sweeps})")
    if sweeps > 1 and references >= samples // sweeps:
        raise ConfigError(
            f"reference_particles ({references}) must be fewer than the particles of a sweep "
            f"(samples / gibbs_sweeps = {samples // sweeps})"
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
        per_sweep = c.samples // c.gibbs_sweeps
        references: list[int] = []
        for sweep in range(c.gibbs_sweeps):
            pool, weights, reason = await self._sweep(run, per_sweep - len(references), references)
            if reason == "budget" or sweep == c.gibbs_sweeps - 1:
                break
            references = [
                pool[p] for p in multinomial_resample(weights, c.reference_particles, run.rng)
            ]
            run.event("references", sweep=sweep, particles=pool, weights=weights, picks=references)
        votes: dict[int, float] = {}
        for node_id, weight in zip(pool, weights, strict=True):
            votes[node_id] = votes.get(node_id, 0.0) + weight
        leaves = [p for p in dict.fromkeys(pool) if p != 0]
        # "score" picks the leaf of highest reward: the particle of highest weight (argmax).
        return run.result(leaves, votes=votes, stop=reason, weights=weights)

    async def _sweep(
        self, run: SearchRun, free: int, references: list[int]
    ) -> tuple[list[int], list[float], str]:
        """One sweep of ``free`` particles beside fixed ``references`` (none: particle
        filtering): the final particles and references, their weights, and why it ended."""
        c = self.config
        particles = [0] * free  # node ids; the root until a first step is drawn
        reason = "max_steps"
        for round_ in range(c.max_steps):
            particles = await self._propagate(run, particles, round_)
            pool = particles + [ancestor(run, ref, round_ + 1) for ref in references]
            weights = self._weights(run, pool)
            if not run.can_draw:
                reason = "budget"
                break
            if all(run.nodes[p].final for p in particles):
                reason = "finished"
                break
            if round_ == c.max_steps - 1:
                break
            picks = resample(weights, free, c.resampling, run.rng)
            run.event(
                "resample",
                round=round_,
                particles=pool,
                weights=weights,
                picks=picks,
                method=c.resampling,
            )
            survivors = [pool[p] for p in picks]
            for node_id in set(particles) - set(survivors):
                run.nodes[node_id].status = "pruned"
            for node_id in set(survivors):
                run.nodes[node_id].status = "kept"
            particles = survivors
        pool = particles + references
        return pool, self._weights(run, pool), reason

    def _weights(self, run: SearchRun, pool: list[int]) -> list[float]:
        values = [run.nodes[p].value for p in pool]
        return resampling_weights(
            values, self.config.resample_temperature, probabilities=run.probabilities
        )

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


def ancestor(run: SearchRun, node_id: int, depth: int) -> int:
    """The node at ``depth`` on the path to ``node_id`` (``node_id`` itself when not deeper)."""
    node = run.nodes[node_id]
    while node.depth > depth and node.parent is not None:
        node = run.nodes[node.parent]
    return node.id
