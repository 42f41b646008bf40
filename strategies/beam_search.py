"""Beam search and diverse verifier tree search (DVTS) over reasoning steps, guided by a PRM.

As in HF search-and-learn (Beeching, Tunstall and Rush 2024; Snell et al. 2024):

- ``beam_search``: N paths per round. The first round draws N first steps; every later round
  keeps the N/M best open paths by aggregated process reward and expands each M ways (when fewer
  are open, the N steps are shared among those, the first getting the remainder). A path whose
  step holds its answer is finished; the search ends when N paths are finished, none are open,
  after ``max_steps`` rounds (the last draws each path to its end) or when the budget refuses.
- ``dvts``: N/M independent subtrees of width M, for diversity: each keeps its single best child
  per round and expands it M ways, until its best child is finished.

The final answer is picked among finished paths (the open ones when none finished) by
``select``: the best reward (search-and-learn's and its_hub's default), a reward-weighted vote
or a majority vote. Ties between equal rewards are broken at random by the search's seeded
generator. The trace holds every round (drawn, kept, pruned, finished) and the whole tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ttscale.errors import ConfigError
from ttscale.protocols import Sampler, Verifier
from ttscale.strategies.base import resolve_config
from ttscale.strategies.step_search import Node, SearchConfig, SearchRun, allocate, top_positions
from ttscale.types import Problem, Result

__all__ = ["DVTS", "BeamSearch", "BeamSearchConfig", "DVTSConfig", "keep_best"]


@dataclass(frozen=True)
class BeamSearchConfig(SearchConfig):
    """Options of :class:`BeamSearch` (see :class:`SearchConfig`); N must be a multiple of M."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples % self.beam_width:
            raise ConfigError(
                f"samples ({self.samples}) must be a multiple of beam_width ({self.beam_width})"
            )


@dataclass(frozen=True)
class DVTSConfig(BeamSearchConfig):
    """Options of :class:`DVTS`: ``samples // beam_width`` subtrees of width ``beam_width``."""


def keep_best(children: list[Node], keep: int, run: SearchRun) -> tuple[list[Node], list[Node]]:
    """The ``keep`` best open children by path value and the rest (ties at random)."""
    positions = top_positions([c.value for c in children], keep, run.rng)
    kept = [children[p] for p in sorted(positions)]
    chosen = {c.id for c in kept}
    return kept, [c for c in children if c.id not in chosen]


class BeamSearch:
    """Step-level beam search; see the module docstring."""

    name = "beam_search"

    def __init__(self, config: BeamSearchConfig | None = None, **options: Any) -> None:
        self.config = resolve_config(BeamSearchConfig, config, options, self.name)

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result:
        c = self.config
        run = SearchRun(problem, sampler, verifier, c, self.name)
        keep = c.samples // c.beam_width
        frontier: list[Node] = [run.nodes[0]]
        finished: list[Node] = []
        reason = "max_steps"
        for round_ in range(c.max_steps):
            counts = allocate(c.samples, len(frontier))
            plan = [(node.id, n) for node, n in zip(frontier, counts, strict=True)]
            children = await run.expand(plan, to_end=round_ == c.max_steps - 1)
            if not children:  # the budget refused the whole round: the frontier stays
                reason = "budget"
                break
            done = [n for n in children if n.final]
            open_ = [n for n in children if not n.final]
            finished.extend(done)
            kept, pruned = keep_best(open_, keep, run)
            for node in pruned:
                node.status = "pruned"
            for node in kept:
                node.status = "kept"
            run.event(
                "round",
                round=round_,
                drawn=[n.id for n in children],
                finished=[n.id for n in done],
                kept=[n.id for n in kept],
                pruned=[n.id for n in pruned],
            )
            frontier = kept
            if not run.can_draw:
                reason = "budget"
                break
            if len(finished) >= c.samples or not frontier:
                reason = "finished"
                break
        leaves = [n.id for n in finished] + [n.id for n in frontier]
        return run.result(leaves, stop=reason, rounds=round_ + 1)


class DVTS:
    """Diverse verifier tree search; see the module docstring."""

    name = "dvts"

    def __init__(self, config: DVTSConfig | None = None, **options: Any) -> None:
        self.config = resolve_config(DVTSConfig, config, options, self.name)

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result:
        c = self.config
        run = SearchRun(problem, sampler, verifier, c, self.name)
        subtrees = c.samples // c.beam_width
        heads = dict.fromkeys(range(subtrees), run.nodes[0])  # the open subtrees' heads
        leaves: list[int] = []
        reason = "max_steps"
        for round_ in range(c.max_steps):
            children = await self._round(run, heads, round_)
            for subtree, mine in children.items():
                (best,), rest = keep_best(mine, 1, run)
                for node in rest:
                    node.status = "pruned"
                best.status = "kept"
                heads[subtree] = best
                if best.final:
                    leaves.append(best.id)
                    del heads[subtree]
            if not run.can_draw:
                reason = "budget"
                break
            if not heads:
                reason = "finished"
                break
        leaves.extend(head.id for head in heads.values() if head.id != 0)
        return run.result(leaves, stop=reason, subtrees=subtrees)

    async def _round(
        self, run: SearchRun, heads: dict[int, Node], round_: int
    ) -> dict[int, list[Node]]:
        c = self.config
        live = sorted(heads)
        if round_ == 0:
            # The first round draws every subtree's M first steps from the root in one request.
            plan = [(0, c.beam_width * len(live))]
        else:
            plan = [(heads[s].id, c.beam_width) for s in live]
        children = await run.expand(plan, to_end=round_ == c.max_steps - 1)
        owned: dict[int, list[Node]] = {}
        if round_ == 0:
            for position, node in enumerate(children):
                owned.setdefault(live[position // c.beam_width], []).append(node)
        else:
            by_parent = {heads[s].id: s for s in live}
            for node in children:
                assert node.parent is not None  # a drawn step always has a parent
                owned.setdefault(by_parent[node.parent], []).append(node)
        run.event(
            "round",
            round=round_,
            drawn=[n.id for n in children],
            subtrees={str(s): [n.id for n in nodes] for s, nodes in owned.items()},
        )
        return owned
