"""Coverage laws on synthetic data whose truth is known, and the seed papers' formulas."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest

from ttscale.errors import ConfigError
from ttscale.estimators import FloatArray, coverage_curve, log_spaced_ks
from ttscale.laws import (
    BetaFit,
    PowerLawFit,
    beta_binomial_log_likelihood,
    bom_theoretical_alpha,
    bootstrap_fits,
    compare_held_out,
    expected_reward_under_weak_verifier,
    extrapolation_band,
    fit_beta,
    fit_error,
    fit_power_law,
    k_for_coverage,
    law_intervals,
    llmonk_fit_error,
    maker_expected_cost,
    maker_expected_votes,
    maker_k_min,
    maker_step_success,
    optimal_samples_under_weak_verifier,
    plan_for_coverage,
)

scipy_optimize = pytest.importorskip("scipy.optimize")

SAMPLES = 100
PROBLEMS = 1000


def beta_counts(alpha: float, beta: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.binomial(SAMPLES, rng.beta(alpha, beta, size=PROBLEMS))


# -- the Beta model --------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "beta"), [(0.3, 1.5), (0.8, 0.6), (0.15, 2.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_beta_fit_recovers_parameters_and_predicts_ten_times_further(
    alpha: float, beta: float, seed: int
) -> None:
    counts = beta_counts(alpha, beta, seed)
    fit = fit_beta(SAMPLES, counts)
    # 1000 problems x 100 samples: the MLE's sampling error is a few percent; 15% is ~3 sd.
    assert fit.alpha == pytest.approx(alpha, rel=0.15)
    assert fit.beta == pytest.approx(beta, rel=0.15)

    ks = log_spaced_ks(SAMPLES, 40)
    observed = coverage_curve(SAMPLES, counts, ks)
    assert fit_error(observed, fit.predict(ks)).mean < 0.01

    # Beyond the data: k up to 10x the samples drawn, against the true Beta's coverage.
    far = log_spaced_ks(10 * SAMPLES, 40, min_k=SAMPLES)
    extrapolation = fit_error(BetaFit(alpha, beta).predict(far), fit.predict(far))
    assert extrapolation.max < 0.03


def test_beta_coverage_is_the_mean_of_per_problem_coverage() -> None:
    # 1 - B(a, b + k) / B(a, b) against a Monte Carlo mean of 1 - (1 - p)^k.
    rng = np.random.default_rng(11)
    p = rng.beta(0.5, 2.5, size=400_000)
    for k in (1, 10, 300):
        assert BetaFit(0.5, 2.5).predict([k])[0] == pytest.approx(
            np.mean(1 - (1 - p) ** k), abs=3e-3
        )


def test_beta_fit_handles_all_or_nothing_problems() -> None:
    # Rates of exactly 0 and 1 have no Beta density; the beta-binomial of counts still fits.
    counts = np.array([0] * 60 + [SAMPLES] * 30 + [50] * 10)
    fit = fit_beta(SAMPLES, counts)
    assert fit.alpha < 1 and fit.beta < 1  # U-shaped, as the data are
    assert fit.mean == pytest.approx(0.35, abs=0.03)


def test_extrapolation_band_covers_the_truth() -> None:
    counts = beta_counts(0.3, 1.5, seed=4)
    far = [SAMPLES, 3 * SAMPLES, 10 * SAMPLES]
    band = extrapolation_band(SAMPLES, counts, far, model="beta", n_resamples=60, seed=0)
    truth = BetaFit(0.3, 1.5).predict(far)
    assert np.all(band.low <= truth)
    assert np.all(truth <= band.high)
    assert np.all(band.high - band.low < 0.08)
    again = extrapolation_band(SAMPLES, counts, far, model="beta", n_resamples=60, seed=0)
    np.testing.assert_array_equal(band.low, again.low)


def test_power_band_brackets_its_centre() -> None:
    counts = beta_counts(0.8, 0.6, seed=2)
    band = extrapolation_band(SAMPLES, counts, [50, 1000], model="power", n_resamples=40)
    assert np.all(band.low <= band.center)
    assert np.all(band.center <= band.high)


def test_held_out_comparison_scores_both_models_on_larger_k() -> None:
    counts = beta_counts(0.3, 1.5, seed=5)
    comparison = compare_held_out(SAMPLES, counts, fit_fraction=0.1)
    assert comparison.fit_k == 10
    assert comparison.held_out_ks[0] == 11
    assert comparison.held_out_ks[-1] == SAMPLES
    # Fitted on 10 samples per problem, predicting up to 100.
    assert comparison.beta_error.mean < 0.02
    assert comparison.power_error.mean < 0.03


def test_held_out_comparison_mostly_prefers_the_true_model() -> None:
    # With 100 of 1000 samples to fit on, the Beta (the model the data come from) should predict
    # the held-out k better than the power law in most draws; a single draw can go either way.
    wins = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        counts = rng.binomial(1000, rng.beta(0.3, 1.5, size=PROBLEMS))
        wins += compare_held_out(1000, counts, fit_fraction=0.1).better == "beta"
    assert wins >= 5


# -- the exponentiated power law -----------------------------------------------------------------

LLAMA3_8B_MATH = (-1.33, -0.43)  # Large Language Monkeys, Llama-3-8B on MATH


def law_following_success_rates(a: float, b: float) -> tuple[FloatArray, FloatArray]:
    """A mixture of per-problem success rates whose coverage is exp(a k^b) for k in 1..10^4.

    Coverage under a mixture with weights w over rates p is 1 - sum_j w_j (1 - p_j)^k; the weights
    are found by non-negative least squares, with a heavily weighted row forcing them to sum to 1.
    """
    grid = np.concatenate([[0.0], np.geomspace(1e-5, 1.0, 200)])
    ks = np.unique(np.round(np.geomspace(1, 10_000, 300)))
    design = (1 - grid[None, :]) ** ks[:, None]
    target = 1 - np.exp(a * ks**b)
    design = np.vstack([design, np.full(len(grid), 10.0)])
    weights, _ = scipy_optimize.nnls(design, np.append(target, 10.0))
    weights = weights / weights.sum()
    achieved = 1 - ((1 - grid[None, :]) ** ks[:, None]) @ weights
    assert np.abs(achieved - np.exp(a * ks**b)).max() < 1e-4  # the data really follow the law
    return grid, weights


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_law_fit_recovers_llama3_8b_math(seed: int) -> None:
    a, b = LLAMA3_8B_MATH
    grid, weights = law_following_success_rates(a, b)
    rng = np.random.default_rng(seed)
    drawn = 1000
    counts = rng.binomial(drawn, rng.choice(grid, size=2000, p=weights))
    ks = log_spaced_ks(drawn, 40)
    observed = coverage_curve(drawn, counts, ks)
    fit = fit_power_law(ks, observed)
    assert fit.a == pytest.approx(a, abs=0.05)
    assert fit.b == pytest.approx(b, abs=0.03)
    assert fit_error(observed, fit.predict(ks)).mean < 0.005  # the paper's fit error: 0.003
    far = log_spaced_ks(10 * drawn, 40, min_k=drawn)
    assert fit_error(np.exp(a * far.astype(float) ** b), fit.predict(far)).max < 0.015


def test_power_law_fit_on_exact_law_is_exact() -> None:
    ks = log_spaced_ks(10_000, 40)
    fit = fit_power_law(ks, PowerLawFit(-0.75, -0.46).predict(ks))
    assert fit.a == pytest.approx(-0.75, abs=1e-6)
    assert fit.b == pytest.approx(-0.46, abs=1e-6)


def test_k_for_coverage_agrees_with_the_closed_form_and_prices_it() -> None:
    law = PowerLawFit(*LLAMA3_8B_MATH)
    for target in (0.5, 0.829, 0.9, 0.98):
        k = k_for_coverage(law, target)
        assert k == math.ceil(law.k_for(target))
        assert type(k) is int
        assert law.predict([k])[0] >= target
        assert k == 1 or law.predict([k - 1])[0] < target
    plan = plan_for_coverage(
        law, 0.9, cost_per_sample=0.002, tokens_per_sample=500.0, num_problems=10
    )
    assert plan.k is not None
    assert plan.k == k_for_coverage(law, 0.9)
    assert plan.cost == pytest.approx(plan.k * 0.002 * 10)
    # Most problems nearly impossible (mean rate 2e-4): 99% coverage lies beyond 10^6 samples.
    assert k_for_coverage(BetaFit(0.01, 50.0), 0.99, max_k=10**6) is None


def test_missing_scipy_is_a_config_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    with pytest.raises(ConfigError, match=r"ttscale\[laws\]"):
        fit_power_law([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.35])


# -- MAKER ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "target", "steps", "per_agent", "expected"),
    [
        # ln(0.95) = -0.0512933; t^(-1/s) - 1 = 5.12933e-8; ln of it = 1.63497 - 18.42068
        # = -16.78571; ln(0.01/0.99) = -4.59512; ratio 3.653 -> 4.
        (0.99, 0.95, 1_000_000, 1, 4),
        # MAKER's own run (2^20 - 1 steps, k = 3): t^(-1/s) - 1 = 0.0512933/1048575 = 4.89171e-8;
        # ln = 1.58754 - 18.42068 = -16.83314; ln(0.002/0.998) = -6.21261; ratio 2.7095 -> 3.
        (0.998, 0.95, 1_048_575, 1, 3),
        # m/s = 0.01: 0.9^(-0.01) - 1 = e^0.00105361 - 1 = 0.00105416; ln = 0.05274 - 6.90776
        # = -6.85501; ln(0.1/0.9) = -2.19722; ratio 3.1198 -> 4.
        (0.9, 0.9, 1000, 10, 4),
        # 0.5^(-0.01) - 1 = e^0.00693147 - 1 = 0.00695555; ln = 1.93954 - 6.90776 = -4.96822;
        # ln(0.4/0.6) = -0.405465; ratio 12.2531 -> 13.
        (0.6, 0.5, 100, 1, 13),
    ],
)
def test_maker_k_min_table(
    p: float, target: float, steps: int, per_agent: int, expected: int
) -> None:
    assert maker_k_min(p, target, steps, per_agent) == expected
    # And k_min is the least k for which every vote succeeding reaches the target.
    votes = steps / per_agent
    assert maker_step_success(p, expected) ** votes >= target
    assert expected == 1 or maker_step_success(p, expected - 1) ** votes < target


def test_maker_k_min_is_at_least_one() -> None:
    # t^(-m/s) - 1 = 1 here, so the formula gives ceil(0) = 0; a vote needs k >= 1.
    assert maker_k_min(0.99, 0.5, 1) == 1


def test_maker_votes_match_a_simulated_vote() -> None:
    rng = np.random.default_rng(0)
    p, k, runs = 0.7, 3, 20_000
    lengths, wins = np.zeros(runs), 0
    for run in range(runs):
        lead, votes = 0, 0
        while abs(lead) < k:
            lead += 1 if rng.random() < p else -1
            votes += 1
        lengths[run], wins = votes, wins + (lead > 0)
    standard_error = lengths.std() / math.sqrt(runs)
    assert maker_expected_votes(p, k) == pytest.approx(lengths.mean(), abs=4 * standard_error)
    assert maker_step_success(p, k) == pytest.approx(wins / runs, abs=0.01)
    assert maker_expected_votes(0.5, 4) == 16
    cost = maker_expected_cost(p, k, 1000, cost_per_sample=0.001, valid_rate=0.5)
    assert cost == pytest.approx(1000 * maker_expected_votes(p, k) * 2 * 0.001)


# -- fLaws ---------------------------------------------------------------------------------------


def weak_verifier_problems(seed: int) -> tuple[FloatArray, FloatArray]:
    rng = np.random.default_rng(seed)
    correct = rng.beta(0.4, 1.2, size=300)
    false_positive = (1 - correct) * rng.beta(0.3, 6.0, size=300)
    return correct, false_positive


def test_expected_reward_matches_simulated_resampling() -> None:
    correct, false_positive = weak_verifier_problems(1)
    value, max_k = -2.0, 8
    rng = np.random.default_rng(2)
    trials = 400
    total = np.zeros(max_k + 1)
    for c, f in zip(correct, false_positive, strict=True):
        draws = rng.random((trials, max_k))
        passed = draws < c + f
        first = np.where(passed.any(axis=1), passed.argmax(axis=1), max_k)
        reward_of_first = np.where(
            np.take_along_axis(draws, np.minimum(first, max_k - 1)[:, None], 1)[:, 0] < c,
            1.0,
            value,
        )
        for k in range(1, max_k + 1):
            total[k] += np.where(first < k, reward_of_first, 0.0).mean()
    simulated = total / len(correct)
    formula = expected_reward_under_weak_verifier(correct, false_positive, value, max_k)
    np.testing.assert_allclose(formula, simulated, atol=0.02)


def test_k_opt_is_finite_and_shrinks_as_false_positives_cost_more() -> None:
    correct, false_positive = weak_verifier_problems(3)
    k_opts = [
        optimal_samples_under_weak_verifier(correct, false_positive, value, max_k=1000)
        for value in (0.0, -1.0, -2.0, -4.0, -8.0)
    ]
    assert k_opts[0] == 1000  # free false positives: more samples never hurt
    assert all(later <= earlier for earlier, later in itertools.pairwise(k_opts))
    assert k_opts[-1] < 50
    assert k_opts[-1] < k_opts[1]


# -- exact references for the fits' numbers ----------------------------------------------------


def test_beta_binomial_likelihood_and_gradient_against_independent_references() -> None:
    stats = pytest.importorskip("scipy.stats")
    n = np.array([10, 10, 7, 20, 5])
    c = np.array([0, 3, 7, 11, 1])
    for alpha, beta in [(0.4, 1.7), (2.5, 0.3), (1.0, 1.0)]:
        value, gradient = beta_binomial_log_likelihood(alpha, beta, n, c)
        # scipy's beta-binomial pmf includes log C(n, c); the likelihood here leaves it out.
        log_choose = sum(math.log(math.comb(int(a), int(b))) for a, b in zip(n, c, strict=True))
        expected = float(stats.betabinom.logpmf(c, n, alpha, beta).sum()) - log_choose
        assert value == pytest.approx(expected, rel=1e-12)
        step = 1e-6
        numeric = [
            (
                beta_binomial_log_likelihood(alpha + step, beta, n, c)[0]
                - beta_binomial_log_likelihood(alpha - step, beta, n, c)[0]
            )
            / (2 * step),
            (
                beta_binomial_log_likelihood(alpha, beta + step, n, c)[0]
                - beta_binomial_log_likelihood(alpha, beta - step, n, c)[0]
            )
            / (2 * step),
        ]
        assert gradient == pytest.approx(numeric, rel=1e-6, abs=1e-7)


def test_beta_fit_is_the_maximum_and_reports_its_likelihood() -> None:
    stats = pytest.importorskip("scipy.stats")
    counts = beta_counts(0.8, 0.6, seed=3)[:200]
    fit = fit_beta(SAMPLES, counts)
    total = float(stats.betabinom.logpmf(counts, SAMPLES, fit.alpha, fit.beta).sum())
    assert fit.log_likelihood == pytest.approx(total, rel=1e-10)
    for da, db in [(1.01, 1), (0.99, 1), (1, 1.01), (1, 0.99)]:
        nearby = float(stats.betabinom.logpmf(counts, SAMPLES, fit.alpha * da, fit.beta * db).sum())
        assert nearby < total
    # At an interior maximum the gradient vanishes (relative to the likelihood's size).
    _, gradient = beta_binomial_log_likelihood(fit.alpha, fit.beta, SAMPLES, counts)
    assert np.all(np.abs(gradient * [fit.alpha, fit.beta]) < 1e-3 * abs(total) / 200)


def test_power_law_refuses_curves_without_a_law() -> None:
    ks = [1, 2, 4, 8]
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        fit_power_law(ks, [0.0, 0.0, 0.0, 0.0])  # was a = -22
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        fit_power_law(ks, [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        fit_power_law(ks, [0.1, 0.2, 1.2, 0.5])
    with pytest.raises(ConfigError, match="three or more"):
        fit_power_law([1, 2], [0.1, 0.2])
    # Control: zeros beside points inside (0, 1) still fit.
    fit = fit_power_law(ks, [0.0, 0.2, 0.3, 0.4])
    assert fit.a < 0 and fit.b < 0


def test_parameter_intervals_are_the_percentiles_of_documented_refits() -> None:
    counts = beta_counts(0.3, 1.5, seed=6)[:300]
    ks = log_spaced_ks(SAMPLES, 12)
    fits = bootstrap_fits(SAMPLES, counts, fit_ks=ks, n_resamples=30, seed=4)
    assert len(fits) == 30
    # Independently: the same draws, coverage from scratch, the fit per resample.
    rng = np.random.default_rng(4)
    a_values = []
    for _ in range(30):
        rows = rng.integers(0, counts.size, size=counts.size)
        a_values.append(fit_power_law(ks, coverage_curve(SAMPLES, counts[rows], ks)).a)
    intervals = law_intervals(fits, confidence=0.8)
    assert intervals.intervals["a"] == pytest.approx(
        (np.quantile(a_values, 0.1), np.quantile(a_values, 0.9)), rel=1e-6
    )
    assert intervals.resamples_used == 30 and intervals.confidence == 0.8
    beta_fits = bootstrap_fits(SAMPLES, counts, model="beta", n_resamples=5, seed=0)
    assert set(law_intervals(beta_fits).intervals) == {"alpha", "beta"}
    with pytest.raises(ConfigError):
        law_intervals([])
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="confidence"):
            law_intervals(fits, confidence=bad)


def test_bootstrap_intervals_match_the_spread_that_curve_fit_understates() -> None:
    """Across data sets drawn from one truth, the spread of a is what the bootstrap interval says;
    curve_fit's covariance (the old a_sd) is several times too small."""
    ks = log_spaced_ks(SAMPLES, 20)
    estimates, widths, covariance_sds = [], [], []
    for seed in range(12):
        counts = beta_counts(0.3, 1.5, seed=100 + seed)[:300]
        observed = coverage_curve(SAMPLES, counts, ks)
        estimates.append(fit_power_law(ks, observed).a)
        fits = bootstrap_fits(SAMPLES, counts, fit_ks=ks, n_resamples=40, seed=seed)
        low, high = law_intervals(fits, confidence=0.9).intervals["a"]
        widths.append((high - low) / (2 * 1.645))  # a 90% interval spans 2 x 1.645 sd
        law = lambda k, a, b: np.exp(a * k**b)  # noqa: E731
        _, covariance = scipy_optimize.curve_fit(
            law, ks, observed, p0=(-1.0, -0.5), bounds=([-np.inf, -np.inf], [0, 0])
        )
        covariance_sds.append(math.sqrt(covariance[0, 0]))
    spread = float(np.std(estimates, ddof=1))
    assert 0.5 < np.mean(widths) / spread < 2.0
    assert np.mean(covariance_sds) < spread / 4


def test_llmonk_fit_error_is_over_a_hundred_log_spaced_k() -> None:
    counts = beta_counts(0.8, 0.6, seed=1)
    fit = fit_power_law(
        log_spaced_ks(SAMPLES, 40), coverage_curve(SAMPLES, counts, log_spaced_ks(SAMPLES, 40))
    )
    hundred = log_spaced_ks(SAMPLES, 100)
    assert hundred.size == 100
    gaps = np.abs(coverage_curve(SAMPLES, counts, hundred) - fit.predict(hundred))
    error = llmonk_fit_error(fit, SAMPLES, counts)
    assert (error.mean, error.sd, error.max) == pytest.approx((gaps.mean(), gaps.std(), gaps.max()))
    assert llmonk_fit_error(fit, SAMPLES, counts, num=40) == fit_error(
        coverage_curve(SAMPLES, counts, log_spaced_ks(SAMPLES, 40)),
        fit.predict(log_spaced_ks(SAMPLES, 40)),
    )


def test_bom_theoretical_alpha() -> None:
    assert bom_theoretical_alpha(1.0) == 0.75
    assert bom_theoretical_alpha(100.0) == pytest.approx(0.0075)
    assert bom_theoretical_alpha(250.0) == pytest.approx(0.003)  # the paper's hand-tuned low end
    for bad in (0.5, 0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="C\\*"):
            bom_theoretical_alpha(bad)


def test_free_false_positives_are_allowed_and_costly_ones_bounded() -> None:
    # V_FP = 0 (a false positive costs nothing) is the boundary of the allowed range: with c = 0.2
    # and f = 0.3, E[R(k)] = (1 - 0.5^k) * 0.2 / 0.5 by hand.
    rewards = expected_reward_under_weak_verifier([0.2], [0.3], 0.0, 3)
    assert rewards.tolist() == pytest.approx([0.0, 0.2, 0.3, 0.35])
    with pytest.raises(ConfigError, match="false_positive_value"):
        expected_reward_under_weak_verifier([0.2], [0.3], 0.1, 3)
    with pytest.raises(ConfigError, match="max_k"):
        expected_reward_under_weak_verifier([0.2], [0.3], 0.0, -1)


def test_beta_fit_refuses_mismatched_or_single_problem_counts() -> None:
    with pytest.raises(ConfigError, match="two or more problems"):
        fit_beta([10, 10, 10], [1, 2])  # shapes differ, though there are several
    with pytest.raises(ConfigError, match="two or more problems"):
        fit_beta([10], [3])  # one problem: no spread to fit
    with pytest.raises(ConfigError, match="0 <= c <= n"):
        fit_beta([10, 10], [11, 2])


def test_beta_fit_of_problems_with_one_shared_rate_starts_and_lands_on_that_rate() -> None:
    """Every problem 3 of 8: the rates have no spread (the method of moments' variance is 0), and
    the fit still starts, landing on a Beta concentrated at 3/8."""
    fit = fit_beta([8] * 5, [3] * 5)
    assert math.isfinite(fit.alpha) and math.isfinite(fit.beta)
    assert fit.alpha / (fit.alpha + fit.beta) == pytest.approx(3 / 8, abs=1e-3)
    assert fit.alpha + fit.beta > 100  # next to no spread between problems
    spread = fit_beta([8] * 5, [1, 2, 3, 5, 7])  # the control: real spread, a wide Beta
    assert spread.alpha + spread.beta < 20


def test_maker_success_refuses_probabilities_outside_zero_one() -> None:
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ConfigError, match="probability"):
            maker_step_success(bad, 3)
    assert maker_step_success(0.5, 3) == pytest.approx(0.5)  # the control: inside is fine


def test_maker_k_min_votes_once_per_step_by_default() -> None:
    """By hand: ceil(ln(0.9^(-1/1000) - 1) / ln(0.3/0.7)) = ceil(-9.158 / -0.8473) = ceil(10.81)
    = 11; one vote per two steps needs ceil(ln(0.9^(-2/1000) - 1) / ln(0.3/0.7)) = ceil(9.99)."""
    assert maker_k_min(0.7, 0.9, 1000) == 11
    assert maker_k_min(0.7, 0.9, 1000, steps_per_agent=2) == 10  # the control: the default shows
