"""Particle Gibbs as an option of particle filtering, on the step environment with a seeded
generator: the sweeps split the particles (the budget stays N), references are drawn from a sweep's
final weights, and the next sweep's free particles are resampled beside the references' prefixes
and branch off them. Every draw of the search's generator is replayed from the trace."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ttscale.errors import ConfigError
from ttscale.strategies.particle_filtering import ParticleFiltering
from ttscale.strategies.step_search import multinomial_resample, problem_generator
from ttscale.testing.step_env import StepEnvironment
from ttscale.types import Result

ENV = StepEnvironment.uniform(8, depth=4, p_step=0.7, false_positive=0.2, false_negative=0.2)


def _run(problem_index: int, **options: Any) -> Result:
    strategy = ParticleFiltering(reward=ENV.prm, max_steps=6, **options)
    problem = ENV.problems()[problem_index]
    return asyncio.run(strategy.run(problem, ENV.sampler(base_seed=3)))


def _events(result: Result, step: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    return [(e.step, dict(e.data)) for e in result.trace if step is None or e.step == step]


def _nodes(result: Result) -> dict[int, dict[str, Any]]:
    (tree,) = [data for step, data in _events(result, "tree")]
    return {node["id"]: node for node in tree["nodes"]}


def _path(nodes: dict[int, dict[str, Any]], node_id: int) -> list[int]:
    path = []
    while node_id != 0:
        path.append(node_id)
        node_id = nodes[node_id]["parent"]
    return path[::-1]


def test_one_sweep_is_particle_filtering() -> None:
    plain = _run(0, samples=8, seed=4)
    same = _run(0, samples=8, seed=4, gibbs_sweeps=1, reference_particles=3)
    assert _events(plain) == _events(same)
    assert not _events(plain, "references")


def test_the_generator_draws_are_replayed_from_the_trace() -> None:
    for index in range(4):
        result = _run(index, samples=8, seed=5, gibbs_sweeps=2, reference_particles=1)
        rng = problem_generator(5, ENV.problems()[index].id)
        draws = [(s, d) for s, d in _events(result) if s in ("resample", "references")]
        assert [s for s, _ in draws].count("references") == 1
        for step, data in draws:
            count = len(data["picks"]) if step == "references" else None
            if step == "resample":
                expected = multinomial_resample(data["weights"], len(data["picks"]), rng)
                assert data["picks"] == expected
            else:
                positions = multinomial_resample(data["weights"], count or 0, rng)
                assert data["picks"] == [data["particles"][p] for p in positions]


def test_the_second_sweep_runs_beside_the_reference_and_branches_off_it() -> None:
    branched = 0
    for index in range(8):
        result = _run(index, samples=8, seed=7, gibbs_sweeps=2, reference_particles=1)
        nodes = _nodes(result)
        events = _events(result)
        at = [s for s, _ in events].index("references")
        (reference,) = events[at][1]["picks"]
        first_sweep = [d for s, d in events[:at] if s == "resample"]
        second_sweep = [d for s, d in events[at + 1 :] if s == "resample"]
        # The sweeps split the budget: 4 particles each; the second resamples 3 free ones from a
        # pool of 4 (the free ones and the reference's prefix at that round).
        assert all(len(d["particles"]) == 4 and len(d["picks"]) == 4 for d in first_sweep)
        ref_path = _path(nodes, reference)
        for round_, data in enumerate(second_sweep):
            assert len(data["particles"]) == 4 and len(data["picks"]) == 3
            assert data["particles"][-1] == ref_path[min(round_, len(ref_path) - 1)]
            if 3 in data["picks"] and not nodes[data["particles"][-1]]["final"]:
                branched += 1
        # Every node the second sweep drew hangs off the root, a node drawn in it, or a prefix of
        # the reference: free particles branch from the reference, never from elsewhere.
        boundary = max(events[at][1]["particles"])  # node ids grow: the first sweep's last one
        for node in nodes.values():
            if node["id"] > boundary:
                parent = node["parent"]
                assert parent == 0 or parent in ref_path or parent > boundary
        # The answer is picked among the last sweep's particles and the reference.
        assert result.selected[0].text.endswith(f"the answer is {result.answers[0]}.")
        assert len(result.candidates) <= 4
    assert branched > 0  # some free particle did take up the reference's prefix


def test_particle_gibbs_spends_the_same_samples_as_particle_filtering() -> None:
    pf = _run(1, samples=8, seed=2)
    pg = _run(1, samples=8, seed=2, gibbs_sweeps=2)
    # Each round draws one step per open particle: 8 a round for PF; 4, then at most 3, for PG.
    assert pg.usage.samples <= pf.usage.samples
    first = next(d for s, d in _events(pg) if s == "resample")
    assert len(first["particles"]) == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"samples": 8, "gibbs_sweeps": 3}, "multiple of gibbs_sweeps"),
        ({"samples": 8, "gibbs_sweeps": 0}, "gibbs_sweeps must be"),
        ({"samples": 8, "gibbs_sweeps": 2, "reference_particles": 4}, "fewer than the particles"),
        ({"samples": 8, "gibbs_sweeps": 2, "reference_particles": 0}, "reference_particles"),
        ({"samples": 8, "gibbs_sweeps": True}, "gibbs_sweeps must be"),
    ],
)
def test_particle_gibbs_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ParticleFiltering(reward=ENV.prm, **options)
    ParticleFiltering(reward=ENV.prm, samples=8, gibbs_sweeps=2, reference_particles=3)  # control
