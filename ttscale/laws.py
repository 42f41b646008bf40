"""Scaling laws of coverage against samples, and the formulas of the seed papers.

Two models of coverage c(k), the fraction of problems solved by at least one of k samples:

- :class:`PowerLawFit`, the exponentiated power law ``log c(k) = a * k**b`` (a < 0, b < 0) of
  Large Language Monkeys (Brown et al. 2024), fitted by least squares on coverage at log-spaced k.
- :class:`BetaFit`, per-problem success rates p ~ Beta(alpha, beta) (Schaeffer et al. 2025), fitted
  by maximum likelihood on the beta-binomial of the per-problem counts (rates of exactly 0 or 1 are
  common and have no Beta density, counts are what was observed). Coverage is
  ``1 - E[(1 - p)^k] = 1 - B(alpha, beta + k) / B(alpha, beta)``.

Fitting needs scipy (the ``[laws]`` extra), imported inside the functions that need it. Predicting
from a fitted model does not.

Also here: MAKER's first-to-ahead-by-k voting formulas (Meyerson et al. 2025) and the best number
of samples under an imperfect verifier (Inference Scaling fLaws, Stroebl et al. 2024).
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from ttscale.errors import ConfigError
from ttscale.estimators import (
    FloatArray,
    IntArray,
    coverage_curve,
    log_spaced_ks,
    per_problem_pass_at_k,
)

__all__ = [
    "BetaFit",
    "CoverageModel",
    "CoveragePlan",
    "ExtrapolationBand",
    "FitError",
    "HeldOutComparison",
    "LawIntervals",
    "PowerLawFit",
    "beta_binomial_log_likelihood",
    "bom_theoretical_alpha",
    "bootstrap_fits",
    "compare_held_out",
    "expected_reward_under_weak_verifier",
    "extrapolation_band",
    "fit_beta",
    "fit_error",
    "fit_power_law",
    "k_for_coverage",
    "law_intervals",
    "llmonk_fit_error",
    "maker_expected_cost",
    "maker_expected_votes",
    "maker_k_min",
    "maker_step_success",
    "optimal_samples_under_weak_verifier",
    "plan_for_coverage",
]

log = logging.getLogger(__name__)

ModelName = Literal["power", "beta"]


def _scipy(submodule: str) -> ModuleType:
    """Import ``scipy.<submodule>`` or say how to get it."""
    try:
        return importlib.import_module(f"scipy.{submodule}")
    except ImportError as exc:
        raise ConfigError(
            "fitting scaling laws needs scipy; install it with: pip install 'ttscale[laws]'"
        ) from exc


def _as_ks(ks: npt.ArrayLike) -> FloatArray:
    values = np.atleast_1d(np.asarray(ks, dtype=np.float64))
    if np.any(values < 1):
        raise ConfigError("k must be >= 1")
    return values


class CoverageModel(Protocol):
    """A fitted model of coverage against the number of samples k."""

    def predict(self, ks: npt.ArrayLike) -> FloatArray: ...


# -- the exponentiated power law ---------------------------------------------------------------


@dataclass(frozen=True)
class PowerLawFit:
    """``c(k) = exp(a * k**b)``.

    No standard errors ride along: ``curve_fit``'s covariance treats the 40 points of one coverage
    curve as independent, which they are not (every k reuses the same problems), and understated
    the spread of ``a`` across data sets about 13x. :func:`law_intervals` gives bootstrap
    intervals over problems instead.
    """

    a: float
    b: float

    def predict(self, ks: npt.ArrayLike) -> FloatArray:
        return np.exp(self.a * _as_ks(ks) ** self.b)

    def k_for(self, target: float) -> float:
        """The real k at which the law reaches ``target`` coverage (inf when it never does)."""
        if not 0 < target < 1:
            raise ConfigError(f"target coverage must be in (0, 1), got {target}")
        if self.a >= 0 or self.b >= 0:
            return math.inf
        return float((math.log(target) / self.a) ** (1.0 / self.b))


def _power_law_guess(ks: FloatArray, coverage: FloatArray) -> tuple[float, float]:
    # log(-log c) = log(-a) + b log k is linear, which gives a starting point for least squares
    # from the points with 0 < c < 1.
    usable = (coverage > 0) & (coverage < 1)
    if usable.sum() >= 2:
        slope, intercept = np.polyfit(np.log(ks[usable]), np.log(-np.log(coverage[usable])), 1)
        if slope < 0:
            return -float(np.exp(intercept)), float(slope)
    return -1.0, -0.5


def fit_power_law(ks: npt.ArrayLike, coverage: npt.ArrayLike) -> PowerLawFit:
    """Fit ``c(k) = exp(a k^b)`` to coverage observed at ``ks`` (scipy ``curve_fit``).

    The residuals are in coverage (not log coverage), as in Large Language Monkeys; a and b are
    bounded to be negative, so the fitted curve rises towards 1. Give ~40 log-spaced k (see
    :func:`ttscale.estimators.log_spaced_ks`) so that small and large k weigh alike.
    """
    optimize = _scipy("optimize")
    k_values = _as_ks(ks)
    observed = np.asarray(coverage, dtype=np.float64)
    if k_values.shape != observed.shape:
        raise ConfigError(f"{k_values.size} values of k but {observed.size} coverages")
    if k_values.size < 3:
        raise ConfigError("fitting a power law needs coverage at three or more k")
    if np.any(~np.isfinite(observed)) or np.any(observed < 0) or np.any(observed > 1):
        raise ConfigError("coverage must be a fraction in [0, 1] at every k")
    if not np.any((observed > 0) & (observed < 1)):
        # All 0 has no law (a = -inf), all 1 none either (a = 0, any b): refuse, do not invent.
        raise ConfigError("the power law needs coverage strictly between 0 and 1 at some k")

    def law(k: FloatArray, a: float, b: float) -> FloatArray:
        return np.exp(a * k**b)

    guess = _power_law_guess(k_values, observed)
    guess = (min(guess[0], -1e-6), min(guess[1], -1e-6))
    try:
        params, covariance = optimize.curve_fit(
            law, k_values, observed, p0=guess, bounds=([-np.inf, -np.inf], [0.0, 0.0])
        )
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"the power law did not fit this coverage curve: {exc}") from exc
    del covariance  # see PowerLawFit: its standard errors are not to be trusted
    return PowerLawFit(float(params[0]), float(params[1]))


# -- the Beta model of per-problem success rates -------------------------------------------------


def _log_beta(a: FloatArray | float, b: FloatArray | float) -> FloatArray:
    lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
    return np.asarray(lgamma(a) + lgamma(b) - lgamma(np.add(a, b)), dtype=np.float64)


@dataclass(frozen=True)
class BetaFit:
    """Per-problem success rates p ~ Beta(alpha, beta); ``log_likelihood`` of the counts fitted."""

    alpha: float
    beta: float
    log_likelihood: float = float("nan")

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def predict(self, ks: npt.ArrayLike) -> FloatArray:
        # E[(1-p)^k] under Beta(a, b) is B(a, b + k) / B(a, b).
        k_values = _as_ks(ks)
        log_miss = _log_beta(self.alpha, self.beta + k_values) - _log_beta(self.alpha, self.beta)
        return 1.0 - np.exp(log_miss)


def fit_beta(n: npt.ArrayLike, c: npt.ArrayLike) -> BetaFit:
    """Maximum-likelihood Beta(alpha, beta) of per-problem success rates from counts.

    The likelihood of problem i is the beta-binomial ``C(n_i, c_i) B(c_i + alpha, n_i - c_i + beta)
    / B(alpha, beta)``; it is maximised over (log alpha, log beta) with L-BFGS-B and its analytic
    gradient, starting from the method of moments.
    """
    optimize = _scipy("optimize")
    n_arr = np.atleast_1d(np.asarray(n, dtype=np.float64))
    c_arr = np.atleast_1d(np.asarray(c, dtype=np.float64))
    if n_arr.size == 1 and c_arr.size > 1:
        n_arr = np.full_like(c_arr, n_arr[0])
    if n_arr.shape != c_arr.shape or n_arr.size < 2:
        raise ConfigError("fitting a Beta needs counts of two or more problems, n and c alike")
    if np.any(c_arr < 0) or np.any(c_arr > n_arr) or np.any(n_arr < 1):
        raise ConfigError("every problem needs n >= 1 and 0 <= c <= n")

    def negative_log_likelihood(log_params: FloatArray) -> tuple[float, FloatArray]:
        alpha, beta = np.exp(log_params)
        value, gradient = beta_binomial_log_likelihood(alpha, beta, n_arr, c_arr)
        # The optimiser works in log parameters: d/d(log x) = x d/dx.
        return -value, -gradient * np.array([alpha, beta])

    start = np.log(_beta_moments(c_arr / n_arr))
    # Bounds keep the optimiser out of regions where the Beta is a point mass in all but name.
    bounds = [(-12.0, 12.0), (-12.0, 12.0)]
    result = optimize.minimize(
        negative_log_likelihood, start, jac=True, method="L-BFGS-B", bounds=bounds
    )
    if not np.all(np.isfinite(result.x)):
        raise ConfigError(f"the Beta fit failed: {result.message}")
    alpha, beta = np.exp(result.x)
    log_binomial = _log_choose(n_arr, c_arr)
    return BetaFit(float(alpha), float(beta), float(log_binomial.sum() - result.fun))


def beta_binomial_log_likelihood(
    alpha: float, beta: float, n: npt.ArrayLike, c: npt.ArrayLike
) -> tuple[float, FloatArray]:
    """Sum over problems of log B(c + alpha, n - c + beta) - log B(alpha, beta), and its gradient
    in (alpha, beta): the beta-binomial log-likelihood without the constant binomial terms."""
    special = _scipy("special")
    n_arr = np.asarray(n, dtype=np.float64)
    c_arr = np.asarray(c, dtype=np.float64)
    failures = n_arr - c_arr
    value = special.betaln(c_arr + alpha, failures + beta) - special.betaln(alpha, beta)
    common = special.digamma(n_arr + alpha + beta) - special.digamma(alpha + beta)
    d_alpha = special.digamma(c_arr + alpha) - special.digamma(alpha) - common
    d_beta = special.digamma(failures + beta) - special.digamma(beta) - common
    return float(value.sum()), np.array([d_alpha.sum(), d_beta.sum()], dtype=np.float64)


def _log_choose(n: FloatArray, c: FloatArray) -> FloatArray:
    lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
    return np.asarray(lgamma(n + 1) - lgamma(c + 1) - lgamma(n - c + 1), dtype=np.float64)


def _beta_moments(rates: FloatArray) -> tuple[float, float]:
    mean = float(np.clip(rates.mean(), 1e-3, 1 - 1e-3))
    variance = float(rates.var())
    spread = mean * (1 - mean) / variance - 1 if variance > 0 else 10.0
    spread = max(spread, 1e-2)
    return mean * spread, (1 - mean) * spread


# -- how good a fit is, where it goes, and what reaching a target costs ----------------------------


@dataclass(frozen=True)
class FitError:
    """Mean, standard deviation and maximum of |coverage - fit| over the k compared."""

    mean: float
    sd: float
    max: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "sd": self.sd, "max": self.max}


def fit_error(observed: npt.ArrayLike, predicted: npt.ArrayLike) -> FitError:
    """Error of a fit as Large Language Monkeys report it: mean ± sd of |observed - predicted|."""
    gap = np.abs(np.asarray(observed, dtype=np.float64) - np.asarray(predicted, dtype=np.float64))
    if gap.size == 0:
        raise ConfigError("fit error over no points is undefined")
    return FitError(float(gap.mean()), float(gap.std()), float(gap.max()))


def k_for_coverage(model: CoverageModel, target: float, *, max_k: int = 10**12) -> int | None:
    """The smallest integer k with predicted coverage >= ``target``; None if beyond ``max_k``.

    Coverage models rise with k, so an exponential search followed by bisection finds it.
    """
    if not 0 < target < 1:
        raise ConfigError(f"target coverage must be in (0, 1), got {target}")

    def reaches(k: int) -> bool:
        return bool(model.predict([k])[0] >= target)

    if reaches(1):
        return 1
    low, high = 1, 2
    while not reaches(high):
        if high >= max_k:
            return None
        low, high = high, min(high * 2, max_k)
    while high - low > 1:
        middle = (low + high) // 2
        if reaches(middle):
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True)
class CoveragePlan:
    """Samples per problem needed for a target coverage, and what they are predicted to cost."""

    target: float
    k: int | None
    cost: float | None
    tokens: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "k": self.k, "cost": self.cost, "tokens": self.tokens}


def plan_for_coverage(
    model: CoverageModel,
    target: float,
    *,
    cost_per_sample: float,
    tokens_per_sample: float,
    num_problems: int,
    max_k: int = 10**12,
) -> CoveragePlan:
    """The k reaching ``target`` coverage and its cost over ``num_problems`` problems.

    Cost and tokens scale linearly with k at the given per-sample averages (the run's own, as
    measured, including its prompt tokens per sample at its batching).
    """
    k = k_for_coverage(model, target, max_k=max_k)
    if k is None:
        return CoveragePlan(target, None, None, None)
    return CoveragePlan(
        target, k, k * cost_per_sample * num_problems, k * tokens_per_sample * num_problems
    )


@dataclass(frozen=True)
class ExtrapolationBand:
    """A model's prediction at ``ks`` with a bootstrap interval over problems."""

    ks: IntArray
    center: FloatArray
    low: FloatArray
    high: FloatArray
    confidence: float
    resamples_used: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "ks": self.ks.tolist(),
            "center": self.center.tolist(),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "confidence": self.confidence,
            "resamples_used": self.resamples_used,
        }


def _fit_model(
    model: ModelName, n: IntArray, c: IntArray, fit_ks: IntArray, curve: FloatArray | None
) -> CoverageModel:
    if model == "power":
        observed = curve if curve is not None else coverage_curve(n, c, fit_ks)
        return fit_power_law(fit_ks, observed)
    if model == "beta":
        return fit_beta(n, c)
    raise ConfigError(f"unknown coverage model {model!r}; choose 'power' or 'beta'")


def _as_counts(n: npt.ArrayLike, c: npt.ArrayLike) -> tuple[IntArray, IntArray]:
    n_arr = np.atleast_1d(np.asarray(n, dtype=np.int64))
    c_arr = np.atleast_1d(np.asarray(c, dtype=np.int64))
    if n_arr.size == 1 and c_arr.size > 1:
        n_arr = np.full_like(c_arr, n_arr[0])
    return n_arr, c_arr


def bootstrap_fits(
    n: npt.ArrayLike,
    c: npt.ArrayLike,
    *,
    model: ModelName = "power",
    fit_ks: Sequence[int] | IntArray | None = None,
    n_resamples: int = 200,
    seed: int = 0,
) -> list[CoverageModel]:
    """The model refitted to ``n_resamples`` resamples of the problems (with replacement).

    Resample r takes the problems ``default_rng(seed).integers(0, P, size=P)`` (the r-th such
    draw). A degenerate resample (say, nothing solved) has no fit and is left out, so the list
    may be shorter; none fitted is an error.
    """
    n_arr, c_arr = _as_counts(n, c)
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be >= 1, got {n_resamples}")
    chosen_fit_ks = (
        np.asarray(fit_ks, dtype=np.int64)
        if fit_ks is not None
        else log_spaced_ks(int(n_arr.min()), 40)
    )
    # Per-problem pass@k is computed once; a resample's coverage is then a mean of its rows.
    per_problem = (
        np.stack([per_problem_pass_at_k(n_arr, c_arr, int(k)) for k in chosen_fit_ks], axis=1)
        if model == "power"
        else None
    )
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(n_resamples):
        rows = rng.integers(0, n_arr.size, size=n_arr.size)
        curve = per_problem[rows].mean(axis=0) if per_problem is not None else None
        try:
            fits.append(_fit_model(model, n_arr[rows], c_arr[rows], chosen_fit_ks, curve))
        except ConfigError:
            continue  # a degenerate resample (e.g. all problems unsolved) has no fit
    if not fits:
        raise ConfigError("no bootstrap resample could be fitted")
    if len(fits) < n_resamples:
        log.info("%d of %d resamples could not be fitted", n_resamples - len(fits), n_resamples)
    return fits


def _percentiles(values: FloatArray, confidence: float) -> tuple[FloatArray, FloatArray]:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2
    return np.quantile(values, tail, axis=0), np.quantile(values, 1 - tail, axis=0)


def extrapolation_band(
    n: npt.ArrayLike,
    c: npt.ArrayLike,
    ks: Sequence[int] | IntArray,
    *,
    model: ModelName = "power",
    fit_ks: Sequence[int] | IntArray | None = None,
    n_resamples: int = 200,
    confidence: float = 0.9,
    seed: int = 0,
    fits: Sequence[CoverageModel] | None = None,
) -> ExtrapolationBand:
    """Predict coverage at ``ks`` (often beyond the samples drawn) with a bootstrap band.

    The model is fitted to all problems for the centre line, then refitted to ``n_resamples``
    resamples of the problems (:func:`bootstrap_fits`, seeded, or the ``fits`` given); the band
    is the percentile interval of those predictions. It shows sampling error over problems, not
    whether the law holds out there.
    """
    n_arr, c_arr = _as_counts(n, c)
    target_ks = np.asarray(ks, dtype=np.int64)
    chosen_fit_ks = (
        np.asarray(fit_ks, dtype=np.int64)
        if fit_ks is not None
        else log_spaced_ks(int(n_arr.min()), 40)
    )
    center = _fit_model(model, n_arr, c_arr, chosen_fit_ks, None).predict(target_ks)
    if fits is None:
        fits = bootstrap_fits(
            n_arr, c_arr, model=model, fit_ks=chosen_fit_ks, n_resamples=n_resamples, seed=seed
        )
    low, high = _percentiles(np.stack([fit.predict(target_ks) for fit in fits]), confidence)
    return ExtrapolationBand(
        ks=target_ks,
        center=center,
        low=low,
        high=high,
        confidence=confidence,
        resamples_used=len(fits),
    )


@dataclass(frozen=True)
class LawIntervals:
    """Bootstrap percentile intervals of a law's parameters over problems: name -> (low, high)."""

    intervals: Mapping[str, tuple[float, float]]
    confidence: float
    resamples_used: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "intervals": {name: list(pair) for name, pair in self.intervals.items()},
            "confidence": self.confidence,
            "resamples_used": self.resamples_used,
            "method": "percentile bootstrap over problems",
        }


def law_intervals(fits: Sequence[CoverageModel], confidence: float = 0.9) -> LawIntervals:
    """Intervals of each parameter (``a`` and ``b``, or ``alpha`` and ``beta``) across refits."""
    if not fits:
        raise ConfigError("intervals need at least one fitted resample")
    names = ("a", "b") if isinstance(fits[0], PowerLawFit) else ("alpha", "beta")
    table = np.array([[float(getattr(fit, name)) for name in names] for fit in fits])
    low, high = _percentiles(table, confidence)
    return LawIntervals(
        {name: (float(low[i]), float(high[i])) for i, name in enumerate(names)},
        confidence,
        len(fits),
    )


def llmonk_fit_error(
    model: CoverageModel, n: npt.ArrayLike, c: npt.ArrayLike, *, num: int = 100
) -> FitError:
    """Fit error as Large Language Monkeys measure it: |coverage - fit| over ``num`` (100)
    log-spaced k in 1..min(n), whatever k the law was fitted on."""
    n_arr, c_arr = _as_counts(n, c)
    ks = log_spaced_ks(int(n_arr.min()), num)
    return fit_error(coverage_curve(n_arr, c_arr, ks), model.predict(ks))


@dataclass(frozen=True)
class HeldOutComparison:
    """Both models fitted on samples 1..fit_k and compared with coverage at held-out larger k."""

    fit_k: int
    held_out_ks: IntArray
    observed: FloatArray
    power: PowerLawFit
    beta: BetaFit
    power_error: FitError
    beta_error: FitError

    @property
    def better(self) -> ModelName:
        return "beta" if self.beta_error.mean < self.power_error.mean else "power"

    def to_dict(self) -> dict[str, Any]:
        return {
            "fit_k": self.fit_k,
            "held_out_ks": self.held_out_ks.tolist(),
            "observed": self.observed.tolist(),
            "power": {"a": self.power.a, "b": self.power.b, "error": self.power_error.to_dict()},
            "beta": {
                "alpha": self.beta.alpha,
                "beta": self.beta.beta,
                "error": self.beta_error.to_dict(),
            },
            "better": self.better,
        }


def compare_held_out(
    n: npt.ArrayLike,
    c: npt.ArrayLike,
    *,
    fit_fraction: float = 0.1,
    num_ks: int = 40,
    seed: int = 0,
) -> HeldOutComparison:
    """Fit both models as if only ``fit_k = fit_fraction * min(n)`` samples had been drawn.

    Fitting on "k <= fit_k" must not see the later samples: the unbiased pass@k from all n samples
    already uses them. So each problem's count in a random ``fit_k``-subset of its samples is drawn
    (hypergeometric, seeded), both models are fitted to those subset counts, and both are scored
    against the full-data coverage at log-spaced k in ``(fit_k, min(n)]``.
    """
    n_arr = np.atleast_1d(np.asarray(n, dtype=np.int64))
    c_arr = np.atleast_1d(np.asarray(c, dtype=np.int64))
    if n_arr.size == 1 and c_arr.size > 1:
        n_arr = np.full_like(c_arr, n_arr[0])
    if not 0 < fit_fraction < 1:
        raise ConfigError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
    max_k = int(n_arr.min())
    fit_k = int(max_k * fit_fraction)
    if fit_k < 3 or fit_k >= max_k:
        raise ConfigError(
            f"held-out comparison needs fit_fraction * min(n) >= 3 and < min(n); got {fit_k} "
            f"from min(n) = {max_k}"
        )
    rng = np.random.default_rng(seed)
    subset_c = rng.hypergeometric(c_arr, n_arr - c_arr, fit_k).astype(np.int64)
    subset_n = np.full_like(n_arr, fit_k)
    fit_ks = log_spaced_ks(fit_k, num_ks)
    power = fit_power_law(fit_ks, coverage_curve(subset_n, subset_c, fit_ks))
    beta = fit_beta(subset_n, subset_c)
    held_out = log_spaced_ks(max_k, num_ks, min_k=fit_k + 1)
    observed = coverage_curve(n_arr, c_arr, held_out)
    return HeldOutComparison(
        fit_k=fit_k,
        held_out_ks=held_out,
        observed=observed,
        power=power,
        beta=beta,
        power_error=fit_error(observed, power.predict(held_out)),
        beta_error=fit_error(observed, beta.predict(held_out)),
    )


# -- Best-of-Majority's frequency threshold ----------------------------------------------------


def bom_theoretical_alpha(coverage_coefficient: float) -> float:
    """Best-of-Majority's alpha from its analysis (Di et al. 2025): 3 / (4 C*).

    C* = 1 / pi_ref(y*) is the coverage coefficient, the inverse of the probability the model
    gives the best answer, so C* >= 1. The paper tunes alpha by hand in experiments
    (0.003..0.015); this is the value its theorem uses.
    """
    if not math.isfinite(coverage_coefficient) or coverage_coefficient < 1:
        raise ConfigError(
            f"the coverage coefficient C* = 1/pi_ref(y*) is >= 1, got {coverage_coefficient}"
        )
    return 3.0 / (4.0 * coverage_coefficient)


# -- MAKER: first-to-ahead-by-k voting ---------------------------------------------------------


def _check_probability(p: float, *, above_half: bool = False) -> None:
    if not 0 < p < 1 or (above_half and p <= 0.5):
        bound = "(0.5, 1)" if above_half else "(0, 1)"
        raise ConfigError(f"per-vote success probability must be in {bound}, got {p}")


def maker_step_success(p: float, k: int) -> float:
    """P(a step's vote picks the right answer) with first-to-ahead-by-k: 1/(1 + ((1-p)/p)^k).

    Assumes the worst case of MAKER's analysis: every wrong vote agrees on one wrong answer, so
    the vote is a ±1 random walk absorbed at +k (right) or -k (wrong).
    """
    _check_probability(p)
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    return 1.0 / (1.0 + ((1.0 - p) / p) ** k)


def maker_expected_votes(p: float, k: int) -> float:
    """Expected valid votes until one answer leads by k (same random walk as above).

    Gambler's ruin from the middle of [-k, k]: ``k (2 p_sub - 1) / (2p - 1)``, which is
    MAKER's "about k / (2p - 1)" once p_sub is near 1, and ``k**2`` at p = 1/2.
    """
    step_success = maker_step_success(p, k)
    if p == 0.5:
        return float(k * k)
    return k * (2.0 * step_success - 1.0) / (2.0 * p - 1.0)


def maker_k_min(p: float, target: float, steps: int, steps_per_agent: int = 1) -> int:
    """Smallest k for which ``steps / steps_per_agent`` votes all succeed with probability target.

    MAKER's ``ceil(ln(t^(-m/s) - 1) / ln((1-p)/p))`` with t = target, s = steps and m =
    steps_per_agent: each of the s/m votes must succeed with p_sub >= t^(m/s). At least 1.
    """
    _check_probability(p, above_half=True)
    if not 0 < target < 1:
        raise ConfigError(f"target success must be in (0, 1), got {target}")
    if steps < 1 or steps_per_agent < 1:
        raise ConfigError("steps and steps_per_agent must be >= 1")
    # t^(-m/s) - 1 loses every digit to cancellation when m/s is tiny; expm1 keeps them.
    slack = math.expm1(-steps_per_agent / steps * math.log(target))
    k = math.ceil(math.log(slack) / math.log((1.0 - p) / p))
    return max(k, 1)


def maker_expected_cost(
    p: float,
    k: int,
    steps: int,
    *,
    cost_per_sample: float,
    steps_per_agent: int = 1,
    valid_rate: float = 1.0,
) -> float:
    """Expected cost of a MAKER run: votes per step times steps, over the share of valid samples.

    ``valid_rate`` is the fraction of samples that are not red-flagged (red-flagged samples are
    discarded and drawn again, so each valid vote costs 1/valid_rate samples on average).
    """
    if not 0 < valid_rate <= 1:
        raise ConfigError(f"valid_rate must be in (0, 1], got {valid_rate}")
    agents = steps / steps_per_agent
    return agents * maker_expected_votes(p, k) / valid_rate * cost_per_sample


# -- fLaws: the best number of samples under a weak verifier --------------------------------------


def expected_reward_under_weak_verifier(
    p_correct: npt.ArrayLike,
    p_false_positive: npt.ArrayLike,
    false_positive_value: float,
    max_k: int,
) -> FloatArray:
    """Mean expected reward over problems of resampling until a weak verifier passes, k = 0..max_k.

    Per sample of problem i: correct (and so passing the verifier) with probability ``c_i``, wrong
    but passing (a false positive) with probability ``f_i``, rejected otherwise. Up to k samples
    are drawn; the first that passes is returned, and if none passes the policy abstains (reward 0;
    a rejected sample is known to be wrong, so returning it would only risk the penalty). With
    s_i = c_i + f_i, a sample passes within k draws with probability 1 - (1 - s_i)^k, and a sample
    that passed is correct with probability c_i / s_i, so

        E[R_i(k)] = (1 - (1 - s_i)^k) * (c_i + V_FP * f_i) / s_i      (0 when s_i = 0).

    Returns an array of ``max_k + 1`` values (k = 0 abstains always and earns 0).
    """
    c = np.atleast_1d(np.asarray(p_correct, dtype=np.float64))
    f = np.atleast_1d(np.asarray(p_false_positive, dtype=np.float64))
    if c.shape != f.shape:
        raise ConfigError("p_correct and p_false_positive need one entry per problem each")
    if np.any(c < 0) or np.any(f < 0) or np.any(c + f > 1 + 1e-12):
        raise ConfigError("need c >= 0, f >= 0 and c + f <= 1 for every problem")
    if false_positive_value > 0:
        raise ConfigError(f"false_positive_value must be <= 0, got {false_positive_value}")
    if max_k < 0:
        raise ConfigError(f"max_k must be >= 0, got {max_k}")
    passing = c + f
    with np.errstate(divide="ignore", invalid="ignore"):
        value_if_passed = np.where(
            passing > 0, (c + false_positive_value * f) / np.where(passing > 0, passing, 1), 0.0
        )
    ks = np.arange(max_k + 1, dtype=np.float64)[:, None]
    passes_within_k = 1.0 - (1.0 - passing[None, :]) ** ks
    return np.asarray((passes_within_k * value_if_passed[None, :]).mean(axis=1), dtype=np.float64)


def optimal_samples_under_weak_verifier(
    p_correct: npt.ArrayLike,
    p_false_positive: npt.ArrayLike,
    false_positive_value: float,
    max_k: int = 1000,
) -> int:
    """fLaws' K_opt: the k in 0..max_k with the highest expected reward (the smallest, on ties).

    The reward is A(k) + V_FP * B(k) with B(k) (false positives returned) rising in k, so K_opt
    never grows as V_FP falls: a costlier false positive never calls for more samples.
    """
    rewards = expected_reward_under_weak_verifier(
        p_correct, p_false_positive, false_positive_value, max_k
    )
    # A tolerance keeps flat stretches (rewards equal up to rounding) from picking a larger k.
    best = rewards.max()
    return int(np.flatnonzero(rewards >= best - 1e-12 * max(1.0, abs(best)))[0])
