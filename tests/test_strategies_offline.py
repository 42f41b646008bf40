"""Offline evaluation: closed forms, exact expectations over all orders, and agreement with the
strategies run online on the same samples."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttscale.errors import ConfigError, DataError
from ttscale.strategies import (
    Adaptive,
    AdaptiveConfig,
    AheadByK,
    AheadByKConfig,
    BestOfMajority,
    BestOfMajorityConfig,
    BestOfN,
    BestOfNConfig,
    Majority,
    MajorityConfig,
)
from ttscale.strategies.adaptive import should_stop
from ttscale.strategies.offline import (
    PassAtK,
    best_of_n_curve,
    encode_answers,
    evaluate,
    pass_at_k_curve,
)
from ttscale.strategies.selection import (
    best_member,
    select_best_of_majority,
    select_best_of_n,
    select_majority,
)
from ttscale.strategies.stopping import first_to_ahead_by_k
from ttscale.testing.fakes import ScriptedSampler
from ttscale.types import Candidate, Problem, Score

FIXED = {
    "majority": MajorityConfig(),
    "weighted": MajorityConfig(weighted=True),
    "bon": BestOfNConfig(),
    "bom": BestOfMajorityConfig(alpha=0.34),
    "bom0": BestOfMajorityConfig(),
    "bom_mean": BestOfMajorityConfig(min_count=2, group_score="mean"),
    "bom_mean0": BestOfMajorityConfig(group_score="mean"),
}
SEQUENTIAL = {
    "beta": AdaptiveConfig(threshold=0.7, batch_size=2),
    "esc": AdaptiveConfig(rule="esc", batch_size=2),
    "ahead": AheadByKConfig(margin=2),
}


def labels(row: Sequence[int]) -> list[str | None]:
    return [None if a < 0 else str(a) for a in row]


def online_pick(
    name: str, answers: list[str | None], scores: list[float], idx: list[int]
) -> int | None:
    config = FIXED[name]
    if isinstance(config, BestOfNConfig):
        return select_best_of_n(scores, indices=idx)[0]
    if isinstance(config, MajorityConfig):
        weights = scores if config.weighted else None
        groups = select_majority(answers, weights=weights, indices=idx)
        return best_member(groups[0].members, weights, idx) if groups else None
    assert isinstance(config, BestOfMajorityConfig)
    groups, _ = select_best_of_majority(
        answers,
        scores,
        alpha=config.alpha,
        min_count=config.min_count,
        group_score=config.group_score,
        indices=idx,
    )
    return best_member(groups[0].members, scores, idx) if groups else None


def test_closed_forms() -> None:
    # pass@k: 2 of 4 correct -> 1 - C(2,k)/C(4,k)
    curve = pass_at_k_curve([2], 4, [1, 2, 3, 4])
    assert np.allclose(curve, [0.5, 1 - 1 / 6, 1.0, 1.0])
    # best of k: ranks 0..3, only rank 1 correct -> P(best rank is 1) = C(2, k-1)/C(4, k)
    curve = best_of_n_curve([[False, True, False, False]], [1, 2, 3, 4])
    expected = [math.comb(2, k - 1) / math.comb(4, k) for k in range(1, 5)]
    assert np.allclose(curve, expected)


def test_encode_answers() -> None:
    assert encode_answers([5, 3, 5, -1, 9]).tolist() == [0, 1, 0, -1, 2]
    assert encode_answers(["b", None, "a", "b"]).tolist() == [0, -1, 1, 0]
    with pytest.raises(DataError):
        encode_answers([[1, 2]])


def test_every_strategy_matches_brute_force_over_all_orders() -> None:
    """With every order of N samples, offline is the exact expectation over k-subsets."""
    rng = np.random.default_rng(3)
    problems, n = 6, 5
    answers = rng.integers(-1, 3, size=(problems, n))
    correct = answers == 0
    scores = rng.integers(0, 4, size=(problems, n)) / 4  # ties on purpose
    orders = np.array(list(itertools.permutations(range(n))))
    result = evaluate(answers, correct, scores, {**FIXED, **SEQUENTIAL}, orders=orders)

    for name in FIXED:
        for k in range(1, n + 1):
            hits = []
            for p in range(problems):
                for subset in itertools.combinations(range(n), k):
                    idx = list(subset)
                    pick = online_pick(name, labels(answers[p, idx]), list(scores[p, idx]), idx)
                    hits.append(pick is not None and bool(correct[p, idx][pick]))
            assert result.at(name, k) == pytest.approx(np.mean(hits)), (name, k)

    for name, config in SEQUENTIAL.items():
        for cap in range(1, n + 1):
            hits, drawn = [], []
            for p in range(problems):
                for order in orders:
                    seen = labels(answers[p, order])
                    used = cap
                    if isinstance(config, AheadByKConfig):
                        found = first_to_ahead_by_k(seen[:cap], config.margin)
                        used = found[1] if found else cap
                    else:
                        for end in range(config.batch_size, cap + 1, config.batch_size):
                            batch = seen[end - config.batch_size : end]
                            if should_stop(seen[:end], batch, config):
                                used = end
                                break
                    idx = [int(i) for i in order[:used]]
                    groups = select_majority(seen[:used], indices=idx)
                    pick = best_member(groups[0].members, None, idx) if groups else None
                    hits.append(pick is not None and bool(correct[p, idx][pick]))
                    drawn.append(used)
            assert result.at(name, cap) == pytest.approx(np.mean(hits)), (name, cap)
            assert result.samples_used[name][cap - 1] == pytest.approx(np.mean(drawn))


class StoredScores:
    def __init__(self, table: dict[str, float]) -> None:
        self.table = table

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        return [Score(self.table[c.text]) for c in candidates]


@settings(max_examples=40, deadline=None)
@given(
    data=st.integers(1, 12).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(-1, 3), min_size=n, max_size=n),
            st.lists(st.integers(0, 8).map(lambda v: v / 4), min_size=n, max_size=n),
        )
    )
)
def test_offline_at_k_equal_n_is_the_online_result_on_all_samples(
    data: tuple[list[int], list[float]],
) -> None:
    answers, scores = data
    n = len(answers)
    correct = [a == 0 for a in answers]
    texts = [
        f"s{i}: " + (f"\\boxed{{{a}}}" if a >= 0 else "no idea") for i, a in enumerate(answers)
    ]
    sampler = ScriptedSampler({"q": texts})
    verifier = StoredScores(dict(zip(texts, scores, strict=True)))
    online = {
        "majority": Majority(samples=n, extractor="boxed"),
        "weighted": Majority(samples=n, extractor="boxed", weighted=True),
        "bon": BestOfN(samples=n, extractor="boxed"),
        "bom": BestOfMajority(samples=n, extractor="boxed", alpha=0.34),
        "bom_mean": BestOfMajority(samples=n, extractor="boxed", min_count=2, group_score="mean"),
    }
    offline = evaluate(
        [answers], [correct], [scores], {name: FIXED[name] for name in online}, subsets=3, ks=[n]
    )
    for name, strategy in online.items():
        result = asyncio.run(strategy.run(Problem(id="p", prompt="q"), sampler, verifier))
        right = bool(result.selected) and correct[result.selected[0].index]
        assert offline.at(name, n) == float(right), name


def test_sequential_strategies_replay_the_drawn_order() -> None:
    """With the identity order, offline adaptive/ahead_by_k at cap k are the online runs."""
    rng = np.random.default_rng(5)
    n = 12
    for _ in range(20):
        answers = rng.integers(-1, 3, size=n)
        correct = answers == 1
        texts = [f"\\boxed{{{a}}}" if a >= 0 else "none" for a in answers]
        sampler = ScriptedSampler({"q": texts})
        configs = {
            "beta": AdaptiveConfig(batch_size=3, threshold=0.8),
            "esc": AdaptiveConfig(rule="esc", batch_size=2),
            "ahead": AheadByKConfig(margin=2),
        }
        offline = evaluate([answers], [correct], None, configs, orders=[list(range(n))])
        for cap in (3, 7, 12):
            for name, config in configs.items():
                strategy = (
                    Adaptive(AdaptiveConfig(**{**config.__dict__, "samples": cap}))
                    if isinstance(config, AdaptiveConfig)
                    else AheadByK(AheadByKConfig(**{**config.__dict__, "samples": cap}))
                )
                result = asyncio.run(strategy.run(Problem(id="p", prompt="q"), sampler))
                right = bool(result.selected) and bool(correct[result.selected[0].index])
                assert offline.at(name, cap) == float(right), (name, cap)
                assert offline.samples_used[name][cap - 1] == result.usage.samples


def test_defaults_budgets_and_errors() -> None:
    rng = np.random.default_rng(0)
    answers = rng.integers(0, 4, size=(10, 30))
    correct = answers == 0
    scores = rng.random((10, 30))
    result = evaluate(answers, correct, scores, subsets=8)
    assert set(result.accuracy) >= {"pass_at_k", "best_of_n", "majority", "adaptive"}
    assert result.ks.tolist() == list(range(1, 31))
    assert result.at("pass_at_k", 1) == pytest.approx(correct.mean())
    no_scores = evaluate(answers, correct, None, ks=[1, 5, 30], subsets=4)
    assert "best_of_n" not in no_scores.accuracy and no_scores.ks.tolist() == [1, 5, 30]
    ragged = evaluate(
        [answers[0], answers[1, :20]],
        [correct[0], correct[1, :20]],
        None,
        ["majority", "pass_at_k"],
        subsets=4,
    )
    assert ragged.ks[-1] == 20
    with pytest.raises(ConfigError, match="ks"):
        evaluate(answers, correct, ks=[31])
    with pytest.raises(ConfigError, match="needs scores"):
        evaluate(answers, correct, None, {"bon": BestOfNConfig()})
    with pytest.raises(ConfigError, match="top-1"):
        evaluate(answers, correct, scores, {"m": MajorityConfig(k=2)})
    with pytest.raises(ConfigError, match="unknown"):
        evaluate(answers, correct, scores, ["nope"])
    with pytest.raises(DataError, match="scores >= 0"):
        evaluate(answers, correct, scores - 1, ["weighted_majority"])
    # PassAtK is the spec behind the built-in "pass_at_k": under any name it is the same curve.
    named = evaluate(answers, correct, None, {"coverage": PassAtK()}, subsets=8)
    assert np.array_equal(named.accuracy["coverage"], result.accuracy["pass_at_k"])


def test_random_orders_estimate_the_exact_expectation() -> None:
    rng = np.random.default_rng(1)
    answers = rng.integers(0, 3, size=(50, 8))
    correct = answers == 0
    exact = evaluate(
        answers,
        correct,
        None,
        ["majority"],
        orders=np.array(list(itertools.permutations(range(8))))[::7],
    )
    sampled = evaluate(answers, correct, None, ["majority"], subsets=400, seed=2)
    assert np.allclose(exact.accuracy["majority"], sampled.accuracy["majority"], atol=0.03)


def test_wide_keys_beyond_1023_samples_match_the_online_picks() -> None:
    """N > 1023 needs 64-bit keys; each order's prefixes still give the online picks."""
    rng = np.random.default_rng(7)
    n = 1100
    answers = rng.integers(-1, 3, size=(2, n))
    correct = answers == 0
    scores = rng.integers(0, 5, size=(2, n)) / 4
    orders = np.stack([np.arange(n), rng.permutation(n)])
    ks = [1, 2, 9, 400, n]
    for name in [name for name in FIXED if name != "bon"]:  # best-of-N is a closed form
        for order in orders:
            result = evaluate(
                answers, correct, scores, {name: FIXED[name]}, ks=ks, orders=order[None, :]
            )
            for k in ks:
                hits = []
                for p in range(2):
                    idx = sorted(int(i) for i in order[:k])
                    pick = online_pick(name, labels(answers[p, idx]), list(scores[p, idx]), idx)
                    hits.append(pick is not None and bool(correct[p, idx][pick]))
                assert result.at(name, k) == pytest.approx(np.mean(hits)), (name, k)
