"""How well the coverage laws fit and extrapolate, on synthetic data whose truth is known.

Two populations, the same as tests/test_laws.py draws:

- per-problem success rates from a Beta distribution (1,000 problems x 100 samples): the Beta
  model's parameter error, its fit error over 40 log-spaced k, and its error at 1x-10x the samples
  drawn against the true Beta's coverage; the power law fitted to the same data, extrapolated the
  same way;
- a mixture of rates whose coverage is exactly the published Llama-3-8B MATH law, exp(-1.33 k^-0.43)
  (2,000 problems x 1,000 samples): the power law's recovered (a, b), its fit error (the paper
  reports 0.003) and its error at 1,000-10,000 samples against the law itself.

Fit error is the mean and sd of |coverage - fit| over the k named; "max" is the largest gap.

    python benchmarks/law_fits.py [--seeds 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.optimize

from ttscale.estimators import FloatArray, coverage_curve, log_spaced_ks
from ttscale.laws import BetaFit, fit_beta, fit_error, fit_power_law

LLAMA3_8B_MATH = (-1.33, -0.43)


def law_following_mixture(a: float, b: float) -> tuple[FloatArray, FloatArray]:
    """Success rates and weights whose coverage is exp(a k^b) for k in 1..10^4 (to 1e-4)."""
    grid = np.concatenate([[0.0], np.geomspace(1e-5, 1.0, 200)])
    ks = np.unique(np.round(np.geomspace(1, 10_000, 300)))
    design = np.vstack([(1 - grid[None, :]) ** ks[:, None], np.full(len(grid), 10.0)])
    weights, _ = scipy.optimize.nnls(design, np.append(1 - np.exp(a * ks**b), 10.0))
    return grid, weights / weights.sum()


def beta_rows(seeds: int) -> None:
    samples, problems = 100, 1000
    ks = log_spaced_ks(samples, 40)
    far = log_spaced_ks(10 * samples, 40, min_k=samples)
    print(
        f"Beta population: {problems} problems x {samples} samples; extrapolation to k = 100..1000"
    )
    print(
        f"{'alpha':>5} {'beta':>5} {'seed':>4} | {'alpha^':>6} {'beta^':>6} | "
        f"{'beta fit err':>15} {'beta extrap max':>15} | {'power fit err':>15} "
        f"{'power extrap max':>16}"
    )
    for alpha, beta in [(0.3, 1.5), (0.8, 0.6), (0.15, 2.0)]:
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            counts = rng.binomial(samples, rng.beta(alpha, beta, size=problems))
            observed = coverage_curve(samples, counts, ks)
            truth_far = BetaFit(alpha, beta).predict(far)
            beta_fit = fit_beta(samples, counts)
            power_fit = fit_power_law(ks, observed)
            beta_in = fit_error(observed, beta_fit.predict(ks))
            power_in = fit_error(observed, power_fit.predict(ks))
            beta_far = fit_error(truth_far, beta_fit.predict(far))
            power_far = fit_error(truth_far, power_fit.predict(far))
            recovered = f"{beta_fit.alpha:6.3f} {beta_fit.beta:6.3f}"
            print(
                f"{alpha:5.2f} {beta:5.2f} {seed:4d} | {recovered} | "
                f"{beta_in.mean:7.4f}+-{beta_in.sd:6.4f} {beta_far.max:15.4f} | "
                f"{power_in.mean:7.4f}+-{power_in.sd:6.4f} {power_far.max:16.4f}"
            )


def power_rows(seeds: int) -> None:
    a, b = LLAMA3_8B_MATH
    grid, weights = law_following_mixture(a, b)
    drawn, problems = 1000, 2000
    ks = log_spaced_ks(drawn, 40)
    far = log_spaced_ks(10 * drawn, 40, min_k=drawn)
    law_far = np.exp(a * far.astype(float) ** b)
    print(
        f"\nLlama-3-8B MATH law (a={a}, b={b}): {problems} problems x {drawn} samples; "
        f"extrapolation to k = 1000..10000"
    )
    print(f"{'seed':>4} | {'a^':>7} {'b^':>7} | {'fit err':>15} | {'extrap max':>10}")
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        counts = rng.binomial(drawn, rng.choice(grid, size=problems, p=weights))
        observed = coverage_curve(drawn, counts, ks)
        fit = fit_power_law(ks, observed)
        within = fit_error(observed, fit.predict(ks))
        beyond = fit_error(law_far, fit.predict(far))
        print(
            f"{seed:4d} | {fit.a:7.3f} {fit.b:7.3f} | {within.mean:7.4f}+-{within.sd:6.4f} | "
            f"{beyond.max:10.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    beta_rows(args.seeds)
    power_rows(args.seeds)


if __name__ == "__main__":
    main()
