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
from ttscale.strategies.adaptive import should_stop, window_first
from ttscale.strategies.offline import (
    PassAtK,
    best_of_n_curve,
    chunk_bounds,
    encode_answers,
    evaluate,
    pass_at_k_curve,
    per_problem_best_of_n,
    tie_shares,
)
from ttscale.strategies.selection import (
    best_member,
    group_answers,
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
    "esc_window": AdaptiveConfig(rule="esc", batch_size=2, answer="window"),
    "ahead": AheadByKConfig(margin=2),
}


def labels(row: Sequence[int]) -> list[str | None]:
    return [None if a < 0 else str(a) for a in row]


def online_pick(
    name: str, answers: list[str | None], scores: list[float], idx: Sequence[int]
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
    with pytest.raises(ConfigError, match=r"1\.\.5"):
        pass_at_k_curve([3], 5, [6])  # was NaN, silently
    with pytest.raises(ConfigError, match=r"0\.\.5"):
        pass_at_k_curve([0, 6], 5, [1])
    with pytest.raises(ConfigError, match=r"0\.\.5"):
        pass_at_k_curve([-1, 2], 5, [1])


def test_tied_best_of_n_is_a_random_tie_break() -> None:
    """Equal scores, only sample 0 correct: whichever tied sample is drawn first wins, so 1/10."""
    correct = np.zeros((1, 10), dtype=bool)
    correct[0, 0] = True
    result = evaluate([list(range(10))], correct, np.ones((1, 10)), ["best_of_n"])
    assert np.allclose(result.accuracy["best_of_n"], 0.1, rtol=0, atol=1e-15)
    # Scores 3, 2, 2, 1 with the two 2s one right, one wrong, the others wrong: at k the best block
    # is the 2s when 3 is left out and a 2 is in, and then a fair coin: by hand over C(4, k).
    hand = [(2 / 4) / 2, (3 / 6) / 2, (1 / 4) / 2, 0.0]
    tied = per_problem_best_of_n([[False, True, False, False]], [[3, 2, 2, 1]], [1, 2, 3, 4])
    assert np.allclose(tied[0], hand)
    # NaN ranks with -inf: last, and tied with it.
    assert np.allclose(
        tie_shares([[True, False, False]], [[np.nan, -np.inf, 0.0]]), [[0, 0.5, 0.5]]
    )


def test_encode_answers() -> None:
    assert encode_answers([5, 3, 5, -1, 9]).tolist() == [0, 1, 0, -1, 2]
    assert encode_answers(["b", None, "a", "b"]).tolist() == [0, -1, 1, 0]
    with pytest.raises(DataError):
        encode_answers([[1, 2]])


def brute_force(
    answers: np.ndarray, correct: np.ndarray, scores: np.ndarray, name: str
) -> list[float]:
    """Mean over problems and all N! draw orders of the online pick's correctness at each k.

    Online, sample indices are the draw order, so the k drawn are listed in order with indices
    0..k-1 and every tie goes to the one drawn first.
    """
    problems, n = answers.shape
    curve = []
    for k in range(1, n + 1):
        hits = []
        for p in range(problems):
            for order in itertools.permutations(range(n)):
                idx = list(order[:k])
                if name == "coverage":
                    hits.append(bool(correct[p, idx].any()))
                    continue
                drawn = list(range(k))
                pick = online_pick(name, labels(answers[p, idx]), list(scores[p, idx]), drawn)
                hits.append(pick is not None and bool(correct[p, idx][pick]))
        curve.append(float(np.mean(hits)))
    return curve


def sequential_brute_force(
    answers: np.ndarray, correct: np.ndarray, config: AdaptiveConfig | AheadByKConfig
) -> tuple[list[float], list[float]]:
    """The stopping rules run along every order, with the cap at each k: accuracy and samples."""
    problems, n = answers.shape
    accuracy, samples = [], []
    for cap in range(1, n + 1):
        hits, drawn = [], []
        for p in range(problems):
            for order in itertools.permutations(range(n)):
                seen = labels(answers[p, list(order)])
                used = cap
                window = False
                if isinstance(config, AheadByKConfig):
                    found = first_to_ahead_by_k(seen[:cap], config.margin)
                    used = found[1] if found else cap
                else:
                    for end in range(config.batch_size, cap + 1, config.batch_size):
                        batch = seen[end - config.batch_size : end]
                        if should_stop(seen[:end], batch, config):
                            used = end
                            window = config.rule == "esc" and config.answer == "window"
                            break
                groups = select_majority(seen[:used])
                if window:
                    groups = window_first(groups, group_answers(seen[:used]), used - 1)
                pick = best_member(groups[0].members, None, range(used)) if groups else None
                hits.append(pick is not None and bool(correct[p, order[pick]]))
                drawn.append(used)
        accuracy.append(float(np.mean(hits)))
        samples.append(float(np.mean(drawn)))
    return accuracy, samples


@pytest.mark.parametrize("distinct_scores", [False, True])
def test_every_strategy_matches_brute_force_over_all_orders(distinct_scores: bool) -> None:
    """Replaying all N! orders is the exact expectation; random orders estimate it within error.

    Tied scores take the layout that breaks equal scores by position; distinct ones the narrow.
    """
    rng = np.random.default_rng(3)
    problems, n = 6, 5
    answers = rng.integers(-1, 3, size=(problems, n))
    correct = answers == 0
    scores = (
        rng.permuted(np.tile(np.arange(n) / n, (problems, 1)), axis=1)
        if distinct_scores
        else rng.integers(0, 4, size=(problems, n)) / 4  # ties on purpose
    )
    orders = np.array(list(itertools.permutations(range(n))))
    specs = {**FIXED, **SEQUENTIAL, "coverage": PassAtK()}
    replayed = evaluate(answers, correct, scores, specs, orders=orders)
    sampled = evaluate(answers, correct, scores, specs, subsets=400, seed=1)
    assert replayed.method == "replay" and sampled.method == "expected"

    for name in [*FIXED, "coverage"]:
        exact = brute_force(answers, correct, scores, name)
        assert replayed.accuracy[name] == pytest.approx(exact, abs=1e-12), name
        error = sampled.mc_se[name]
        if name in ("bon", "coverage"):  # closed forms: exact, no Monte Carlo error
            assert sampled.accuracy[name] == pytest.approx(exact, abs=1e-12), name
            assert not error.any()
        else:
            assert np.all(np.abs(sampled.accuracy[name] - exact) <= 4 * error + 1e-12), name
    for name, config in SEQUENTIAL.items():
        assert isinstance(config, AdaptiveConfig | AheadByKConfig)
        exact, samples = sequential_brute_force(answers, correct, config)
        assert replayed.accuracy[name] == pytest.approx(exact, abs=1e-12), name
        assert replayed.samples_used[name] == pytest.approx(samples, abs=1e-12), name
        assert np.all(np.abs(sampled.accuracy[name] - exact) <= 4 * sampled.mc_se[name] + 1e-12)


def test_ties_are_broken_by_draw_order_not_by_storage() -> None:
    """The issue's example: five 0s (right) and five 1s; every vote tie is a fair coin: 0.5."""
    stored = np.array([[0] * 5 + [1] * 5])
    for answers in (stored, stored[:, ::-1]):
        result = evaluate(answers, answers == 0, None, ["majority"], subsets=4000, seed=0)
        gap = np.abs(result.accuracy["majority"] - 0.5)
        assert np.all(gap <= 4 * result.mc_se["majority"]), result.accuracy["majority"]
        assert result.mc_se["majority"].max() < 0.009  # tight enough to refuse 0.775 or 0.225
    small = np.array([[0, 0, 1, 1]])
    exact = evaluate(
        small, small == 0, None, ["majority"], orders=list(itertools.permutations(range(4)))
    )
    assert np.array_equal(exact.accuracy["majority"], np.full(4, 0.5))


def test_any_stored_order_gives_the_same_curves() -> None:
    """Storing each problem's samples in another order changes no curve: exactly for the closed
    forms and for replays of all orders, within the Monte Carlo error otherwise."""
    rng = np.random.default_rng(11)
    problems, n = 40, 7
    answers = rng.integers(-1, 3, size=(problems, n))
    answers[:, 0] = 0  # a greedy sample first, as HedgedSampling stores it
    correct = answers == 0
    scores = rng.integers(0, 3, size=(problems, n)) / 2
    shuffle = rng.permuted(np.tile(np.arange(n), (problems, 1)), axis=1)

    def permuted(table: np.ndarray) -> np.ndarray:
        return np.take_along_axis(table, shuffle, axis=1)

    base = evaluate(answers, correct, scores, subsets=300, seed=5)
    moved = evaluate(permuted(answers), permuted(correct), permuted(scores), subsets=300, seed=5)
    for name in base.accuracy:
        if name in ("pass_at_k", "best_of_n"):
            assert np.allclose(moved.accuracy[name], base.accuracy[name], atol=1e-12), name
            assert np.allclose(moved.per_problem[name], base.per_problem[name], atol=1e-12)
        else:
            bound = 4 * np.hypot(base.mc_se[name], moved.mc_se[name])
            assert np.all(np.abs(moved.accuracy[name] - base.accuracy[name]) <= bound + 1e-12)
    every = np.array(list(itertools.permutations(range(n))))
    few = slice(0, 6)
    exact = evaluate(answers[few], correct[few], scores[few], orders=every)
    exact_moved = evaluate(
        permuted(answers)[few], permuted(correct)[few], permuted(scores)[few], orders=every
    )
    for name in exact.accuracy:
        assert np.allclose(exact_moved.accuracy[name], exact.accuracy[name], atol=1e-12), name


def test_per_problem_orders_make_the_monte_carlo_error_small_and_honest() -> None:
    """Hedged data (the right greedy sample at index 0): across seeds the spread of majority@2 is
    what mc_se says, while shared orders (every problem drawing index 0 at once) spread wider."""
    rng = np.random.default_rng(2)
    problems, n = 200, 16
    answers = rng.integers(1, 4, size=(problems, n))
    answers[:, 0] = 0
    answers[rng.random((problems, n)) < 0.25] = 0
    correct = answers == 0
    runs = [
        evaluate(answers, correct, None, ["majority"], ks=[2], subsets=20, seed=s)
        for s in range(30)
    ]
    values = np.array([r.at("majority", 2) for r in runs])
    reported = np.mean([r.mc_se["majority"][0] for r in runs])
    assert 0.5 * reported < values.std(ddof=1) < 1.6 * reported
    shared = []
    for seed in range(30):
        orders = np.argsort(np.random.default_rng(seed).random((20, n)), axis=1)
        shared.append(
            evaluate(answers, correct, None, ["majority"], ks=[2], orders=orders).at("majority", 2)
        )
    assert np.std(shared, ddof=1) > 3 * values.std(ddof=1)


def test_standard_errors_and_intervals_from_the_per_problem_values() -> None:
    rng = np.random.default_rng(4)
    answers = rng.integers(0, 3, size=(30, 9))
    correct = answers == 0
    scores = rng.random((30, 9))
    result = evaluate(answers, correct, scores, subsets=7, seed=3)
    for name, values in result.per_problem.items():
        assert values.shape == (30, 9)
        assert np.allclose(values.mean(axis=0), result.accuracy[name])
        # Independent of the library: the sample sd over problems, and the binomial lane error.
        spread = np.sqrt(((values - values.mean(axis=0)) ** 2).sum(axis=0) / 29)
        assert np.allclose(result.se[name], spread / math.sqrt(30))
        lanes = 0 if name in ("pass_at_k", "best_of_n") else 7
        expected_mc = (
            np.sqrt((values * (1 - values)).sum(axis=0) / (lanes - 1)) / 30 if lanes else 0.0
        )
        assert np.allclose(result.mc_se[name], expected_mc)
        if lanes:  # a problem's value is a count of its 7 lanes
            assert np.allclose(values * 7, np.round(values * 7))
        low, high = result.ci(name, confidence=0.9, n_resamples=500, seed=8)
        index = np.random.default_rng(8).integers(0, 30, size=(500, 30))
        means = values[index].mean(axis=1)
        assert np.allclose(low, np.quantile(means, 0.05, axis=0))
        assert np.allclose(high, np.quantile(means, 0.95, axis=0))
    assert result.se_at("majority", 3) == result.se["majority"][2]
    one = evaluate(answers[:1], correct[:1], None, ["majority"], subsets=1)
    assert np.isnan(one.se["majority"]).all() and np.isnan(one.mc_se["majority"]).all()
    # Samples drawn: every lane's count, per problem, for the stopping rules.
    assert np.allclose(result.per_problem_samples["majority"], np.arange(1, 10)[None, :])
    assert np.allclose(
        result.per_problem_samples["adaptive"].mean(axis=0), result.samples_used["adaptive"]
    )


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
    # The identity order replays the draw: the k = N pick is the online one, ties and all.
    offline = evaluate(
        [answers], [correct], [scores], {name: FIXED[name] for name in online}, orders=[range(n)]
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
            "esc_window": AdaptiveConfig(rule="esc", batch_size=3, answer="window"),
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
    with pytest.raises(ConfigError, match="ks"):
        evaluate(answers, correct, ks=[0, 5])  # the smallest k alone is out of range
    with pytest.raises(ConfigError, match="ks"):
        evaluate(answers, correct, ks=[5, 31])
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


def test_wide_keys_beyond_1023_samples_match_the_online_picks() -> None:
    """N > 1023 needs 64-bit keys; each order's prefixes still give the online picks."""
    rng = np.random.default_rng(7)
    n = 1100
    answers = rng.integers(-1, 3, size=(2, n))
    correct = answers == 0
    scores = rng.integers(0, 5, size=(2, n)) / 4
    orders = np.stack([np.arange(n), rng.permutation(n)])
    ks = [1, 2, 9, 400, n]
    for name in FIXED:
        for order in orders:
            result = evaluate(
                answers, correct, scores, {name: FIXED[name]}, ks=ks, orders=order[None, :]
            )
            for k in ks:
                hits = []
                for p in range(2):
                    idx = [int(i) for i in order[:k]]
                    drawn = list(range(k))  # the draw order: ties go to the earliest drawn
                    pick = online_pick(name, labels(answers[p, idx]), list(scores[p, idx]), drawn)
                    hits.append(pick is not None and bool(correct[p, idx][pick]))
                assert result.at(name, k) == pytest.approx(np.mean(hits)), (name, k)


def test_esc_window_answer_is_the_unanimous_windows() -> None:
    """A A B | A A C | B B B: the vote over all nine ties A and B 4-4 (A drawn first), the window
    says B; online and offline replay agree on both, and they differ."""
    stored = ["A", "A", "B", "A", "A", "C", "B", "B", "B"]
    texts = [f"\\boxed{{{a}}}" for a in stored]
    correct = [a == "B" for a in stored]
    configs = {
        "vote": AdaptiveConfig(rule="esc", batch_size=3, samples=9, extractor="boxed"),
        "window": AdaptiveConfig(
            rule="esc", batch_size=3, samples=9, extractor="boxed", answer="window"
        ),
    }
    offline = evaluate([stored], [correct], None, configs, orders=[range(9)])
    picks = {}
    for name, config in configs.items():
        result = asyncio.run(
            Adaptive(config).run(Problem(id="p", prompt="q"), ScriptedSampler({"q": texts}))
        )
        picks[name] = str(result.answers[0]).upper()  # the extractor normalises case
        assert offline.at(name, 9) == float(picks[name] == "B"), name
    assert picks == {"vote": "A", "window": "B"}
    with pytest.raises(ConfigError, match="answer"):
        AdaptiveConfig(rule="esc", answer="last")


@pytest.mark.parametrize(
    "config",
    [
        BestOfMajorityConfig(alpha=0.25),  # the threshold rises at k = 5 and 9
        BestOfMajorityConfig(min_count=2),  # groups join as they reach two votes
        BestOfMajorityConfig(min_count=2, group_score="mean"),
        BestOfMajorityConfig(group_score="mean"),
        MajorityConfig(weighted=True),
    ],
)
def test_equal_scores_on_right_and_wrong_samples_follow_the_draw_order(
    config: BestOfMajorityConfig | MajorityConfig,
) -> None:
    """Scores 0, 1/2 and 1 on right and wrong samples alike: whichever best member was drawn
    first must win, so each replayed order's picks are the online ones at every k."""
    rng = np.random.default_rng(12)
    problems, n = 8, 12
    answers = rng.integers(-1, 4, size=(problems, n))
    correct = answers <= 0
    scores = rng.integers(0, 3, size=(problems, n)) / 2
    orders = np.stack([rng.permutation(n) for _ in range(40)])
    result = evaluate(answers, correct, scores, {"s": config}, orders=orders)
    name = "probe"
    FIXED[name] = config
    try:
        for k in range(1, n + 1):
            hits = []
            for p in range(problems):
                for order in orders:
                    idx = [int(i) for i in order[:k]]
                    said, graded = labels(answers[p, idx]), list(scores[p, idx])
                    pick = online_pick(name, said, graded, list(range(k)))
                    hits.append(pick is not None and bool(correct[p, idx][pick]))
            assert result.at("s", k) == pytest.approx(np.mean(hits), abs=1e-12), k
    finally:
        del FIXED[name]


def test_the_beta_rule_stops_exactly_at_its_threshold_offline_as_online() -> None:
    """One vote gives P(p > 1/2) = 3/4 exactly: at threshold 0.75 the rule stops after it."""
    answers = [["a", "b", "b", "a"]]
    correct = [[True, False, False, True]]
    at = {"at": AdaptiveConfig(threshold=0.75), "above": AdaptiveConfig(threshold=0.76)}
    result = evaluate(answers, correct, None, at, orders=[range(4)])
    assert result.samples_used["at"].tolist() == [1, 1, 1, 1]
    assert result.samples_used["above"].tolist() == [1, 2, 3, 4]
    for name, config in at.items():
        online = asyncio.run(
            Adaptive(AdaptiveConfig(**{**config.__dict__, "samples": 4, "extractor": "boxed"})).run(
                Problem(id="p", prompt="q"),
                ScriptedSampler({"q": [f"\\boxed{{{a}}}" for a in answers[0]]}),
            )
        )
        assert online.usage.samples == result.samples_used[name][-1], name


def test_a_few_lanes_left_drawing_are_tallied_by_list_as_online() -> None:
    """60 of 64 orders settle at the third sample; of the 4 lanes left (read by list once at most
    1/16 still draw), one stops wrong at the fifth, one right at the ninth and two alternate A and
    B and never stop, right all along: at every cap the offline tally is the online runs' in
    those orders, sample for sample."""
    answers = np.array([0] * 6 + [1] * 5 + [2])  # A (right) x 6, B x 5, C
    correct = answers == 0
    settle = [[0, 1, 2, *range(3, 12)]] * 60
    late_wrong = [[6, 7, 0, 8, 9, 10, 1, 2, 3, 4, 5, 11]]  # B B A B B: B ahead by 3
    late_right = [[0, 6, 1, 7, 2, 8, 3, 4, 5, 9, 10, 11]]  # A B A B A B A A A: A ahead by 3
    alternate = [[0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 11, 5]] * 2
    orders = np.array(settle + late_wrong + late_right + alternate)
    configs = {"ahead": AheadByKConfig(margin=3), "beta": AdaptiveConfig(threshold=0.9)}
    offline = evaluate([answers], [correct], None, configs, orders=orders)
    distinct = sorted({tuple(order) for order in orders.tolist()})
    weight = {order: orders.tolist().count(list(order)) for order in distinct}
    for name, config in configs.items():
        for cap in range(1, 13):
            right = drawn = 0
            for order in distinct:
                texts = [f"\\boxed{{{answers[i]}}}" for i in order]
                capped = {**config.__dict__, "samples": cap}
                strategy = (
                    Adaptive(AdaptiveConfig(**capped))
                    if isinstance(config, AdaptiveConfig)
                    else AheadByK(AheadByKConfig(**capped))
                )
                result = asyncio.run(
                    strategy.run(Problem(id="p", prompt="q"), ScriptedSampler({"q": texts}))
                )
                right += weight[order] * bool(correct[order[result.selected[0].index]])
                drawn += weight[order] * result.usage.samples
            assert offline.at(name, cap) == right / len(orders), (name, cap)
            assert offline.samples_used[name][cap - 1] == drawn / len(orders), (name, cap)
    # The controls: the wrong late stop counts from the fifth sample, and the lanes still drawing
    # at the end are right and count.
    assert offline.at("ahead", 5) == 63 / 64 and offline.at("ahead", 12) == 63 / 64


def test_threads_scan_chunks_with_the_same_results() -> None:
    """Scanning groups of problems on threads changes no number: the chunks are split as asked
    (and some hold mixed right/wrong score ties, some none), and every per-problem value and
    sample count is the one-thread result. Control: another seed changes the values, so equal
    results are not trivially equal."""
    rng = np.random.default_rng(23)
    problems, n = 31, 12
    answers = rng.integers(-1, 4, size=(problems, n))
    correct = answers == 0
    scores = rng.integers(0, 4, size=(problems, n)) / 3
    scores[:10] = rng.random((10, n))  # distinct scores: no tie to resolve in the first chunk
    assert len(chunk_bounds(answers, 50, 3)) == 3
    assert len(chunk_bounds(answers, 50, 1)) == 1
    one = evaluate(answers, correct, scores, subsets=50, seed=2, workers=1)
    for workers in (2, 3, 8):
        many = evaluate(answers, correct, scores, subsets=50, seed=2, workers=workers)
        for name in one.per_problem:
            assert np.array_equal(many.per_problem[name], one.per_problem[name]), (workers, name)
            assert np.array_equal(many.per_problem_samples[name], one.per_problem_samples[name]), (
                workers,
                name,
            )
    other = evaluate(answers, correct, scores, subsets=50, seed=3, workers=1)
    assert not np.array_equal(other.per_problem["majority"], one.per_problem["majority"])
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="workers"):
            evaluate(answers, correct, scores, subsets=5, workers=bad)  # type: ignore[arg-type]


def test_a_table_and_rows_of_the_same_samples_give_the_same_numbers() -> None:
    """A (P, N) array is read as one table; the same samples as a list of rows, string answers
    or mismatched shapes go problem by problem, with the same numbers and the same errors."""
    rng = np.random.default_rng(4)
    answers = rng.integers(-1, 5, size=(9, 8))
    correct = answers == 1
    scores = rng.random((9, 8))
    table = evaluate(answers, correct, scores, subsets=30, seed=1)
    rows = evaluate(list(answers), list(correct), list(scores), subsets=30, seed=1)
    words = np.where(answers < 0, None, answers.astype(str).astype(object))
    named = evaluate(words, correct, scores, subsets=30, seed=1)
    for name in table.per_problem:
        assert np.array_equal(table.per_problem[name], rows.per_problem[name]), name
        assert np.array_equal(table.per_problem[name], named.per_problem[name]), name
    with pytest.raises(DataError, match="problem 0: 7 correctness flags for 8"):
        evaluate(answers, correct[:, :7], scores, subsets=5)
    with pytest.raises(DataError, match="problem 0: 7 scores for 8"):
        evaluate(answers, correct, scores[:, :7], subsets=5)


def test_chunks_bound_their_lanes_when_problems_have_few_answers() -> None:
    """One answer per problem: the per-answer budget alone would put 7,500 problems of 100 orders
    (750,000 lanes, about 90 MB of per-lane state) in a chunk; the lane budget cuts it."""
    from ttscale.strategies.offline_scan import LANE_BUDGET, STATE_BUDGET

    answers = np.zeros((5000, 4), dtype=np.int64)
    bounds = chunk_bounds(answers, 100, 1)
    assert all((stop - start) * 100 <= LANE_BUDGET for start, stop in bounds)
    assert [start for start, _ in bounds] == list(range(0, 5000, LANE_BUDGET // 100))
    # Control: what the per-answer budget alone allows (two cells a lane: the answer and none).
    assert STATE_BUDGET >= 5000 * 100 * 2
