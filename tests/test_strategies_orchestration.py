"""The strategies' orchestration over the in-process ScriptedSampler: draws, stops, results."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttscale import registry
from ttscale.errors import ConfigError, SamplerError
from ttscale.strategies import (
    Adaptive,
    AheadByK,
    BestOfMajority,
    BestOfN,
    HedgedSampling,
    Majority,
    MajorityConfig,
    TemperatureSchedule,
)
from ttscale.strategies.sampling import as_policy, draw, plan_calls
from ttscale.testing.fakes import ScriptedSampler
from ttscale.types import Candidate, Problem, Prompt, Result, SampleBatch, SamplingParams, Score


class TableVerifier:
    """Scores a candidate by a table of answers (unknown answers score 0)."""

    def __init__(self, table: Mapping[str, float]) -> None:
        self.table = table
        self.calls = 0

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        self.calls += 1
        return [Score(self.table.get(c.text, 0.0)) for c in candidates]


def solve(strategy: object, sampler: object, verifier: object = None, prompt: str = "q") -> Result:
    return asyncio.run(strategy.run(Problem(id="p1", prompt=prompt), sampler, verifier))  # type: ignore[attr-defined]


def steps(result: Result, name: str) -> list[Mapping[str, object]]:
    return [event.data for event in result.trace if event.step == name]


def test_registry_builds_every_strategy_from_options() -> None:
    assert {"best_of_n", "majority", "best_of_majority", "adaptive", "ahead_by_k"} <= set(
        registry.available("strategy")
    )
    majority = registry.create("strategy", "majority", samples=16, k=2)
    assert isinstance(majority, Majority) and majority.config.samples == 16
    with pytest.raises(ConfigError, match="unknown option"):
        registry.create("strategy", "majority", sample=3)
    with pytest.raises(ConfigError, match="samples"):
        Majority(samples=0)
    with pytest.raises(ConfigError, match="alpha"):
        BestOfMajority(alpha=2.0)
    with pytest.raises(ConfigError, match="not both"):
        BestOfMajority(alpha=0.1, min_count=2)
    with pytest.raises(ConfigError, match="extractor"):
        Majority(extractor="nope")
    with pytest.raises(ConfigError, match="params"):
        Majority(params=3)
    with pytest.raises(ConfigError, match="not both"):
        Majority(MajorityConfig(), samples=3)


def test_majority_votes_and_reports_usage_and_trace() -> None:
    sampler = ScriptedSampler({"q": ["\\boxed{4}", "#### 5", "4.0", "so 5", "the answer is 4."]})
    result = solve(Majority(samples=10, extractor="auto"), sampler)
    assert result.answers == ("4",)
    assert result.selected[0].index == 0
    assert [c.index for c in result.candidates] == list(range(10))
    assert result.usage.samples == 10 and result.usage.requests == 10
    assert steps(result, "vote")[0]["votes"] == {"4": 6, "5": 4}
    assert steps(result, "stop")[0]["reason"] == "budget"
    assert sampler.calls == [("q", 10, 0)]
    top2 = solve(Majority(samples=10, k=2), sampler)
    assert top2.answers == ("4", "5")


def test_weighted_majority_needs_and_uses_the_verifier() -> None:
    sampler = ScriptedSampler({"q": ["1", "1", "2"]})
    with pytest.raises(ConfigError, match="verifier"):
        solve(Majority(samples=3, weighted=True), sampler)
    verifier = TableVerifier({"1": 0.1, "2": 0.9})
    result = solve(Majority(samples=3, weighted=True), sampler, verifier)
    assert result.answers == ("2",) and len(result.scores) == 3
    plain = solve(Majority(samples=3), sampler, verifier)
    assert plain.answers == ("1",) and verifier.calls == 1  # unweighted: never scored


def test_best_of_n_picks_the_top_score_and_top_k() -> None:
    sampler = ScriptedSampler({"q": ["1", "2", "3", "2"]})
    verifier = TableVerifier({"1": 0.2, "2": 0.9, "3": 0.5})
    result = solve(BestOfN(samples=4, k=2), sampler, verifier)
    assert [c.index for c in result.selected] == [1, 3]
    distinct = solve(BestOfN(samples=4, k=2, distinct=True), sampler, verifier)
    assert distinct.answers == ("2", "3")
    with pytest.raises(ConfigError, match="verifier"):
        solve(BestOfN(samples=4), sampler)


def test_best_of_majority_filters_rare_answers() -> None:
    sampler = ScriptedSampler({"q": ["1", "1", "1", "2", "3", "1", "3", "9"]})
    verifier = TableVerifier({"1": 0.5, "2": 0.6, "3": 0.7, "9": 0.99})
    assert solve(BestOfMajority(samples=8), sampler, verifier).answers == ("9",)
    picked = solve(BestOfMajority(samples=8, alpha=0.25, k=3), sampler, verifier)
    assert picked.answers == ("3", "1")
    fallback = solve(BestOfMajority(samples=8, min_count=5), sampler, verifier)
    assert fallback.answers == ("1",)
    assert steps(fallback, "vote")[0]["fallback_to_mode"] is True


def test_adaptive_stops_early_and_never_draws_past_the_batch() -> None:
    sampler = ScriptedSampler({"q": ["7"]})
    result = solve(Adaptive(samples=40, batch_size=2), sampler)
    assert result.answers == ("7",)
    assert result.usage.samples == 4  # 4 unanimous votes: P = 31/32 >= 0.95
    assert sampler.calls == [("q", 2, 0), ("q", 2, 2)]
    assert steps(result, "stop")[0]["reason"] == "confident"


def test_adaptive_caps_at_samples_on_a_split_vote() -> None:
    sampler = ScriptedSampler({"q": ["1", "2"]})
    result = solve(Adaptive(samples=10, batch_size=4), sampler)
    assert result.usage.samples == 10
    assert [(n, start) for _, n, start in sampler.calls] == [(4, 0), (4, 4), (2, 8)]
    assert steps(result, "stop")[0]["reason"] == "max_samples"
    assert result.answers == ("1",)


def test_adaptive_esc_stops_at_a_unanimous_window() -> None:
    sampler = ScriptedSampler({"q": ["1", "2", "1", "1", "1", "1", "1", "1", "1", "1"]})
    result = solve(Adaptive(samples=40, rule="esc", batch_size=5), sampler)
    assert result.usage.samples == 10
    assert steps(result, "stop")[0]["reason"] == "unanimous_window"


def test_ahead_by_k_draws_only_what_could_settle_the_race() -> None:
    sampler = ScriptedSampler({"q": ["a", "b", "a", "a", "a", "b"]})
    result = solve(AheadByK(samples=50, margin=2, extractor="text"), sampler)
    assert result.answers == ("a",)
    # lead 0 -> draw 2 (a, b); lead 0 -> draw 2 (a, a): lead 2, stop.
    assert [(n, start) for _, n, start in sampler.calls] == [(2, 0), (2, 2)]
    assert steps(result, "stop")[0]["reason"] == "ahead_by_k"


def test_ahead_by_k_red_flags_are_discarded_and_redrawn() -> None:
    script = ["x " * 30 + "1", "no answer", "2", "2", "2", "2"]
    sampler = ScriptedSampler({"q": script})
    strategy = AheadByK(samples=20, margin=3, max_response_tokens=10)
    result = solve(strategy, sampler)
    assert result.answers == ("2",)
    assert steps(result, "vote")[0]["red_flags"] == {"too_long": 1, "unparseable": 1}
    assert result.usage.samples == 5
    custom = AheadByK(samples=20, margin=1, red_flag=lambda c: c.text == "2")
    assert solve(custom, ScriptedSampler({"q": ["2", "3"]})).answers == ("3",)


def test_ahead_by_k_returns_the_leader_at_the_draw_cap() -> None:
    sampler = ScriptedSampler({"q": ["a", "b"]})
    result = solve(AheadByK(samples=7, margin=3, extractor="text"), sampler)
    assert result.usage.samples == 7 and result.answers == ("a",)
    assert steps(result, "stop")[0]["reason"] == "max_draws"


@settings(max_examples=150, deadline=None)
@given(
    script=st.lists(st.sampled_from(["a", "b", "c", ""]), min_size=1, max_size=30),
    margin=st.integers(1, 4),
    cap=st.integers(1, 40),
)
def test_ahead_by_k_strategy_stops_exactly_when_the_lead_reaches_k(
    script: list[str], margin: int, cap: int
) -> None:
    """The strategy, not just the pure rule: it draws in rounds, yet stops where one-at-a-time
    voting would. "" extracts to nothing, so it is a red-flagged sample that does not vote."""
    sampler = ScriptedSampler({"q": script})
    result = solve(AheadByK(samples=cap, margin=margin, extractor="text"), sampler)
    drawn = [script[c.index % len(script)] for c in result.candidates]
    assert [c.index for c in result.candidates] == list(range(len(drawn)))
    counts: dict[str, int] = {}
    leads = []  # the winner's lead over the runner-up after each sample, counted here
    for answer in drawn:
        if answer:
            counts[answer] = counts.get(answer, 0) + 1
        top = [*sorted(counts.values(), reverse=True), 0, 0]
        leads.append(top[0] - top[1])
    (stop,) = steps(result, "stop")
    if stop["reason"] == "ahead_by_k":
        assert leads[-1] >= margin
        assert result.answers == (max(counts, key=lambda answer: counts[answer]),)
    else:
        assert stop["reason"] == "max_draws" and len(drawn) == cap
    # No sample was drawn after the race was settled.
    assert all(value < margin for value in leads[:-1])


class ParityVerifier:
    """Scores 1 each, and finds answers equal when their numbers have the same parity."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.asked: list[tuple[str, str]] = []
        self.threads: set[threading.Thread] = set()

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        return [Score(1.0) for _ in candidates]

    def equivalent(self, a: str, b: str) -> bool:
        self.asked.append((a, b))
        self.threads.add(threading.current_thread())
        if self.broken:
            raise RuntimeError("comparison backend is down")
        return int(a) % 2 == int(b) % 2


def test_majority_asks_the_verifier_each_pair_once_off_the_loop() -> None:
    sampler = ScriptedSampler({"q": ["1", "2", "3", "2", "5"]})
    verifier = ParityVerifier()
    result = solve(Majority(samples=5, extractor="text", k=2), sampler, verifier)
    assert result.answers == ("1", "2")  # odd: 1, 3, 5 (3 votes) beat even: 2, 2
    assert steps(result, "vote")[0]["votes"] == {"1": 3, "2": 2}
    pairs = [tuple(sorted(pair)) for pair in verifier.asked]
    assert len(pairs) == len(set(pairs))  # remembered across the two groupings
    assert threading.current_thread() not in verifier.threads


def test_a_verifier_that_cannot_compare_costs_the_merging_not_the_run() -> None:
    sampler = ScriptedSampler({"q": ["1", "2", "3", "2", "5"]})
    result = solve(Majority(samples=5, extractor="text"), sampler, ParityVerifier(broken=True))
    assert result.answers == ("2",) and len(result.candidates) == 5
    assert steps(result, "equivalence_failed")
    # An equivalence the strategy was configured with is not second-guessed: its failure raises.
    configured = Majority(samples=5, extractor="text", equivalence=ParityVerifier(broken=True))
    with pytest.raises(RuntimeError, match="backend is down"):
        solve(configured, ScriptedSampler({"q": ["1", "2"]}))


def test_hedged_sampling_splits_calls_and_keeps_indices() -> None:
    policy = HedgedSampling(temperature=0.7, greedy=1)
    calls = plan_calls(policy, 0, 5)
    assert [(p.temperature, start, n) for p, start, n in calls] == [(0.0, 0, 1), (0.7, 1, 4)]
    assert [(p.temperature, s, n) for p, s, n in plan_calls(policy, 3, 2)] == [(0.7, 3, 2)]
    schedule = TemperatureSchedule((0.0, 0.5, 0.5, 1.0))
    assert [(p.temperature, s, n) for p, s, n in plan_calls(schedule, 0, 6)] == [
        (0.0, 0, 1),
        (0.5, 1, 2),
        (1.0, 3, 3),
    ]
    sampler = ScriptedSampler({"q": ["1"]})
    result = solve(Majority(samples=4, params=policy), sampler)
    assert [c.temperature for c in result.candidates] == [0.0, 0.7, 0.7, 0.7]
    assert sorted((start, n) for _, n, start in sampler.calls) == [(0, 1), (1, 3)]
    seeds = [c.seed for c in result.candidates]
    assert len(set(seeds)) == 4
    assert result.usage.samples == 4
    function_policy = as_policy(lambda i: SamplingParams(temperature=0.1 * i))
    assert function_policy.params_for(2).temperature == pytest.approx(0.2)


def test_a_failed_call_carries_what_the_other_calls_delivered() -> None:
    class HalfBroken:
        async def sample(
            self,
            prompt: Prompt,
            n: int,
            params: SamplingParams | None = None,
            *,
            start_index: int = 0,
        ) -> SampleBatch:
            if start_index > 0:
                raise SamplerError("down")
            return await ScriptedSampler({"q": ["1"]}).sample(
                prompt, n, params, start_index=start_index
            )

    with pytest.raises(SamplerError) as caught:
        asyncio.run(draw(HalfBroken(), "q", HedgedSampling(), 0, 3))
    partial = caught.value.partial
    assert isinstance(partial, SampleBatch) and [c.index for c in partial.candidates] == [0]
