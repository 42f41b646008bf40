"""Reproduce the seed papers' claims on the sample bank: a Markdown report with its figures.

Reads whatever the bank holds (``ttscale.bank.load_bank_set``: packed parts and their verdicts;
a problem counts once all its samples are packed; a corrupt or inconsistent bank, or verdicts
older than the parts, is refused with exit code 1) and tests five claims with the
project's own estimators (``ttscale.estimators``, ``ttscale.laws``, ``strategies.offline``,
``strategies.deepconf``, ``verifiers.soundness``):

- Large Language Monkeys: HumanEval coverage grows log-linearly in k and the exponentiated power
  law fits it (their fit error: mean |coverage - fit| over 100 log-spaced k); fitted on k <= 4 it
  extrapolates to 16; the Beta model beside it.
- Best-of-Majority: BoM does not degrade as N grows while best-of-N does (the reward: the model's
  confidence, DeepConf's bottom-10% group confidence over windows of 32 tokens: the score of
  ``ConfidenceVerifier(measure="bottom")``, computed here over the stored arrays); majority flat.
  On GSM8K (answers grouped by number) and on HumanEval (grouped by normalised code).
- Adaptive-Consistency (the Beta rule) and ESC on GSM8K: samples saved against majority@16 at an
  accuracy not significantly below majority@16's (the paired difference over the same problems,
  its interval reaching 0); DeepConf online (eta 90%, windows of 16, warm-up 4) and DeepConf-low
  (eta 10%, the paper's aggressive setting): completion tokens saved, by
  ``strategies.deepconf.evaluate_deepconf``'s replay of the stored token logprobs, at the same
  paired test of accuracy.
- Inference Scaling fLaws: the weak HumanEval tests (the first assert) as the verifier, against
  the full tests: false-positive rate, the ceiling P(correct | passes weak), K_opt by the cost of
  a false positive, and the expected reward of resampling measured on the bank.
- MAKER: first-to-ahead-by-k votes per problem against k (red flags: no answer, or cut off at
  the token limit), and the k_min formula's prediction against the bank.

Every interval is a seeded 95% percentile bootstrap over problems. A claim's verdict is one of
``reproduced``, ``not reproduced``, ``not testable at 0.5B`` or ``insufficient data`` (fewer
problems than ``--min-problems``, or data the claim cannot be tested on); the criteria are printed
beside each verdict, and a verdict on part of a set is marked provisional. The bank is read from
``benchmarks/bank/`` of this checkout unless ``--bank`` names another folder of the same layout.

    python benchmarks/reproduce.py                      # -> benchmarks/results/reproduce/
    python benchmarks/reproduce.py --bank DIR --out DIR --min-problems 3

Writes ``report.md``, ``report.json`` (every number of the report) and ``*.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from ttscale.bank import BankSet, NoPackedParts, load_bank_set
from ttscale.errors import ConfigError, DataError
from ttscale.estimators import (
    bootstrap_ci,
    coverage_curve,
    log_spaced_ks,
    per_problem_pass_at_k,
)
from ttscale.laws import (
    compare_held_out,
    expected_reward_under_weak_verifier,
    fit_beta,
    fit_error,
    fit_power_law,
    llmonk_fit_error,
    maker_expected_votes,
    maker_k_min,
    maker_step_success,
    optimal_samples_under_weak_verifier,
)
from ttscale.strategies.adaptive import AdaptiveConfig
from ttscale.strategies.base import StrategyConfig
from ttscale.strategies.best_of_majority import BestOfMajorityConfig
from ttscale.strategies.best_of_n import BestOfNConfig
from ttscale.strategies.deepconf import DeepConfConfig, StoredTrace, evaluate_deepconf
from ttscale.strategies.majority import MajorityConfig
from ttscale.strategies.offline import PassAtK, evaluate
from ttscale.strategies.stopping import first_to_ahead_by_k
from ttscale.verifiers.soundness import (
    SoundnessEstimate,
    estimate_soundness,
    expected_rewards,
    optimal_samples,
)

FloatArray = npt.NDArray[np.float64]

BANK = Path(__file__).resolve().parent / "bank"  # this checkout's bank, whatever is installed
OUT = Path(__file__).resolve().parent / "results" / "reproduce"
REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable at 0.5B"
INSUFFICIENT = "insufficient data"
INCONCLUSIVE = "inconclusive"  # the interval straddles the criterion: more problems will tell

SAMPLES = {"humaneval": 16, "gsm8k": 32}
PLANNED = {"humaneval": 164, "gsm8k": 100}
FIT_K = 4  # LLMonkeys' held-out test: fit on k <= 4, compare at 5..16
FIT_TOLERANCE = 0.02  # power-law fit error (mean |coverage - fit|) that counts as a fit
EXTRAPOLATION_TOLERANCE = 0.05  # held-out mean |coverage - fit| that counts as extrapolating
MATERIAL_DROP = 0.01  # a drop below the peak must be at least this, and its interval below 0
# "Accuracy as majority@16's": the paired difference's interval must lie above -1 point (a
# non-inferiority margin), so a claim can fail, and pass, by a named amount.
ACCURACY_MARGIN = 0.01
FLAT = 1e-9  # a reward that falls by less than this after its best k has no interior optimum
SATURATION = 0.001  # a reward within 0.1 point of its best: more samples buy next to nothing
BOM_ALPHA = 0.1  # a group needs 10% of the votes (2 of 16) to survive
CONFIDENCE_WINDOW = 32
BOTTOM_FRACTION = 0.1
ADAPTIVE_CAP = 16
DEEPCONF = DeepConfConfig(samples=16, mode="online", eta=0.9, window=16, warmup=4, batch_size=4)
DEEPCONF_LOW = dataclasses.replace(DEEPCONF, eta=0.1)  # the paper's aggressive setting
FP_COSTS = (0.0, -0.25, -1.0, -4.0)
MAX_K = 1000
OVERSAMPLING_LOSS = 0.01  # what drawing MAX_K samples must lose against K_opt to count as harm
MAKER_TARGET = 0.9


@dataclass(frozen=True)
class Settings:
    """How hard the report works: resamples, random orders, and the problems a verdict needs."""

    resamples: int = 1000
    fit_resamples: int = 100
    subsets: int = 200
    deepconf_orders: int = 200  # 20 left the verdict to the seed (DeepConf-low flipped)
    min_problems: int = 10
    seed: int = 0


@dataclass(frozen=True)
class Votes:
    """One bank set as the claims read it: (P, N) arrays, answers as comparable keys.

    ``answers[p][i]`` is the sample's answer key (GSM8K: the number, normalised; HumanEval: the
    code with docstrings and comments stripped) or None when it has none; ``flagged`` marks the
    samples MAKER's red flags discard (no answer, or cut off at the token limit).
    """

    name: str
    problems: tuple[str, ...]
    answers: tuple[tuple[str | None, ...], ...]
    correct: npt.NDArray[np.bool_]
    weak: npt.NDArray[np.bool_] | None
    tokens: FloatArray
    confidence: FloatArray
    flagged: npt.NDArray[np.bool_]
    traces: tuple[tuple[StoredTrace, ...], ...]
    planned: int

    @property
    def size(self) -> int:
        return len(self.problems)

    @property
    def samples(self) -> int:
        return int(self.correct.shape[1])


@dataclass(frozen=True)
class Finding:
    """One claim on one set: its verdict, the lines the report prints, the numbers behind them."""

    claim: str
    dataset: str
    verdict: str
    headline: str
    lines: tuple[str, ...] = ()
    numbers: Mapping[str, Any] = field(default_factory=dict)
    figure: str | None = None


# -- reading the bank ----------------------------------------------------------------------------


def number_key(answer: str | None) -> str | None:
    """A GSM8K answer as a comparable key: numbers in one spelling ("18.0", "18", "1,8" -> "18")."""
    if answer is None:
        return None
    text = answer.strip().replace(",", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text or None
    return repr(int(value)) if value.is_integer() else repr(value)


def code_key(answer: str | None) -> str | None:
    """HumanEval code as a comparable key: parsed and unparsed without docstrings or comments."""
    if answer is None or not answer.strip():
        return None
    try:
        tree = ast.parse(answer)
    except SyntaxError:
        return answer.strip()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return ast.unparse(tree)


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def token_confidences(top: npt.NDArray[Any]) -> FloatArray:
    """DeepConf's C_i per token: minus the mean logprob of the stored top alternatives."""
    values = np.asarray(top, dtype=np.float64)
    counts = np.sum(~np.isnan(values), axis=1)
    totals = np.nansum(values, axis=1)
    return np.where(counts > 0, -totals / np.maximum(counts, 1), 0.0)


def bottom_confidence(confidences: FloatArray) -> float:
    """The mean of the lowest 10% of group confidences (sliding windows of 32 tokens, at least
    one group; a shorter trace is one group), as ``ttscale.confidence.bottom_confidence`` computes
    it token by token; 0 for an empty trace."""
    if confidences.size == 0:
        return 0.0
    window = CONFIDENCE_WINDOW
    if confidences.size <= window:
        return float(confidences.mean())
    sums = np.cumsum(np.concatenate([[0.0], confidences]))
    groups = np.sort((sums[window:] - sums[:-window]) / window)
    count = max(1, math.floor(groups.size * BOTTOM_FRACTION))
    return float(groups[:count].mean())


def read_votes(name: str, root: Path | None) -> Votes | None:
    """The set's complete, judged problems (their first N samples); None when nothing is packed.

    Any other fault of the bank (a corrupt part, a missing folder, verdicts older than the
    parts) is the loader's DataError, naming the file: never read as "no data".
    """
    try:
        bank = load_bank_set(name, root)
    except NoPackedParts:
        return None
    samples = SAMPLES[name]
    keep = [p for p in bank.problems if _complete(bank, p, samples)]
    key = code_key if name == "humaneval" else number_key
    rows = [bank.samples[p][:samples] for p in keep]
    answers = tuple(tuple(key(s.answer) for s in row) for row in rows)
    confidences = [[token_confidences(s.top) for s in row] for row in rows]
    traces = tuple(
        tuple(
            StoredTrace(answer, tuple(values.tolist()), s.completion_tokens)
            for answer, values, s in zip(keys, row_values, row, strict=True)
        )
        for keys, row_values, row in zip(answers, confidences, rows, strict=True)
    )
    weak = None
    if rows and all(s.correct_weak is not None for row in rows for s in row):
        weak = np.array([[bool(s.correct_weak) for s in row] for row in rows], dtype=bool)
    width = (len(rows), samples)
    return Votes(
        name=name,
        problems=tuple(keep),
        answers=answers,
        correct=np.array([[bool(s.correct) for s in row] for row in rows], dtype=bool).reshape(
            width
        ),
        weak=weak,
        tokens=np.array([[s.completion_tokens for s in row] for row in rows], float).reshape(width),
        confidence=np.array([[bottom_confidence(v) for v in row] for row in confidences]).reshape(
            width
        ),
        flagged=np.array(
            [
                [a is None or s.finish_reason == "length" for a, s in zip(keys, row, strict=True)]
                for keys, row in zip(answers, rows, strict=True)
            ],
            dtype=bool,
        ).reshape(width),
        traces=traces,
        planned=PLANNED[name],
    )


def _complete(bank: BankSet, problem: str, samples: int) -> bool:
    row = bank.samples[problem]
    return len(row) >= samples and all(s.correct is not None for s in row[:samples])


# -- small statistics helpers --------------------------------------------------------------------


def mean_ci(per_problem: npt.ArrayLike, settings: Settings) -> tuple[float, float, float]:
    """Mean over problems and its bootstrap interval."""
    values = np.asarray(per_problem, dtype=np.float64)
    low, high = bootstrap_ci(values, n_resamples=settings.resamples, seed=settings.seed)
    return float(values.mean()), float(low), float(high)


def ratio_ci(
    numerator: npt.ArrayLike, denominator: npt.ArrayLike, settings: Settings
) -> tuple[float, float, float]:
    """sum(numerator) / sum(denominator) over problems and its bootstrap interval."""
    pairs = np.stack([np.asarray(numerator, float), np.asarray(denominator, float)], axis=1)

    def ratio(resampled: FloatArray) -> FloatArray:
        sums = resampled.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(sums[:, 0] / sums[:, 1], dtype=np.float64)

    low, high = bootstrap_ci(
        pairs, statistic=ratio, n_resamples=settings.resamples, seed=settings.seed
    )
    total = pairs.sum(axis=0)
    value = total[0] / total[1] if total[1] else math.nan
    return float(value), float(low), float(high)


def loop_ci(
    statistic: Callable[[npt.NDArray[np.int64], int], float], problems: int, settings: Settings
) -> tuple[float, float]:
    """Interval of a statistic refitted on ``fit_resamples`` resamples of the problems (seeded).

    ``statistic(rows, r)`` gets resample r's problem rows; a resample it cannot fit returns nan
    and is left out.
    """
    rng = np.random.default_rng(settings.seed)
    values = []
    for r in range(settings.fit_resamples):
        rows = rng.integers(0, problems, size=problems)
        values.append(statistic(rows, r))
    return _quantiles(values)


def fmt(
    value: float, low: float | None = None, high: float | None = None, *, pct: bool = True
) -> str:
    """``value [low, high]`` as percentages (or plain numbers)."""

    def one(x: float) -> str:
        return f"{100 * x:.1f}%" if pct else f"{x:.3g}"

    if low is None or high is None:
        return one(value)
    return f"{one(value)} [{one(low)}, {one(high)}]"


def at_most(interval: Sequence[float], bound: float) -> bool | None:
    """Whether a value is at most ``bound``, by its ``(value, low, high)`` interval: True when
    the whole interval is, False when none of it is, None when it straddles ``bound`` (pure)."""
    low, high = interval[1], interval[2]
    if high <= bound:
        return True
    if low > bound:
        return False
    return None


def above(interval: Sequence[float], bound: float) -> bool | None:
    """Whether a value is above ``bound``, by its interval, as :func:`at_most` answers (pure)."""
    within = at_most(interval, bound)
    return None if within is None else not within


def verdict_of(*tests: bool | None) -> str:
    """Reproduced when every test holds, not reproduced when one fails, else inconclusive."""
    if any(test is False for test in tests):
        return NOT_REPRODUCED
    return REPRODUCED if all(test is True for test in tests) else INCONCLUSIVE


def insufficient(claim: str, votes: Votes | None, name: str, settings: Settings) -> Finding:
    have = votes.size if votes is not None else 0
    need = settings.min_problems
    return Finding(
        claim,
        name,
        f"{INSUFFICIENT}: {have} problems so far, needs {need}",
        f"{have} of {PLANNED[name]} problems in the bank; the claim needs {need}",
        numbers={"problems": have, "needs": need},
    )


def _save(figure: Any, out: Path, name: str) -> str:
    figure.tight_layout()
    figure.savefig(out / name, dpi=110)
    plt.close(figure)
    return name


# -- Large Language Monkeys ------------------------------------------------------------------------


def monkeys(votes: Votes, settings: Settings, out: Path) -> Finding:
    """Coverage against k: log-linear growth, the power law's fit and held-out extrapolation."""
    samples = votes.samples
    n = np.full(votes.size, samples)
    c = votes.correct.sum(axis=1)
    ks = np.arange(1, samples + 1)
    per = np.stack([per_problem_pass_at_k(n, c, int(k)) for k in ks], axis=1)
    coverage = per.mean(axis=0)
    low, high = bootstrap_ci(per, n_resamples=settings.resamples, seed=settings.seed)
    fit_ks = log_spaced_ks(samples, 40)
    power = fit_power_law(fit_ks, coverage_curve(n, c, fit_ks))
    beta = fit_beta(n, c)
    power_error = llmonk_fit_error(power, n, c)
    beta_error = llmonk_fit_error(beta, n, c)
    fraction = (FIT_K + 0.5) / samples
    held = compare_held_out(n, c, fit_fraction=fraction, seed=settings.seed)
    slope, intercept = np.polyfit(np.log10(ks), coverage, 1)
    residual = coverage - (slope * np.log10(ks) + intercept)
    r2 = 1.0 - float((residual**2).sum() / ((coverage - coverage.mean()) ** 2).sum())

    cis = _monkeys_intervals(n, c, ks, fit_ks, fraction, settings)
    # Judged by the intervals, not the point estimates: a held-out error of 1% whose interval
    # reaches 9% has not shown that the law extrapolates within 5%.
    fits = at_most((power_error.mean, *cis["fit"]), FIT_TOLERANCE)
    extrapolates = at_most((held.power_error.mean, *cis["power"]), EXTRAPOLATION_TOLERANCE)
    rises = above((slope, *cis["slope"]), 0.0)
    verdict = verdict_of(fits, extrapolates, rises)
    figure = _plot_monkeys(votes, ks, coverage, (low, high), power, beta, held, out)
    numbers = {
        "problems": votes.size,
        "ks": ks.tolist(),
        "coverage": coverage.tolist(),
        "coverage_low": low.tolist(),
        "coverage_high": high.tolist(),
        "loglinear": {"slope_per_decade": float(slope), "r2": r2, "ci": cis["slope"]},
        "power": {"a": power.a, "b": power.b, "fit_error": power_error.to_dict()},
        "power_fit_error_ci": cis["fit"],
        "beta": {"alpha": beta.alpha, "beta": beta.beta, "fit_error": beta_error.to_dict()},
        "held_out": held.to_dict() | {"power_ci": cis["power"], "beta_ci": cis["beta"]},
    }
    headline = (
        f"fit error {fmt(power_error.mean)}, held-out {held.fit_k}->{samples}: power "
        f"{fmt(held.power_error.mean)}, Beta {fmt(held.beta_error.mean)}"
    )
    lines = _monkeys_lines(votes, numbers)
    return Finding("Large Language Monkeys", votes.name, verdict, headline, lines, numbers, figure)


def _monkeys_lines(votes: Votes, numbers: Mapping[str, Any]) -> tuple[str, ...]:
    coverage, low, high = numbers["coverage"], numbers["coverage_low"], numbers["coverage_high"]
    loglinear, power, beta = numbers["loglinear"], numbers["power"], numbers["beta"]
    held = numbers["held_out"]
    slope, slope_ci = loglinear["slope_per_decade"], loglinear["ci"]
    error = power["fit_error"]
    return (
        f"coverage@1 {fmt(coverage[0], low[0], high[0])}, coverage@{votes.samples} "
        f"{fmt(coverage[-1], low[-1], high[-1])} ({votes.size} problems x {votes.samples} "
        "samples)",
        f"log-linear: +{100 * slope:.1f} points per tenfold k "
        f"[{100 * slope_ci[0]:.1f}, {100 * slope_ci[1]:.1f}], R^2 = {loglinear['r2']:.3f}",
        f"exponentiated power law c(k) = exp({power['a']:.3f} k^{power['b']:.3f}): fit error "
        f"{fmt(error['mean'], *numbers['power_fit_error_ci'])} (sd {fmt(error['sd'])}, max "
        f"{fmt(error['max'])}) over 100 log-spaced k; tolerance {fmt(FIT_TOLERANCE)}",
        f"Beta model alpha = {beta['alpha']:.3f}, beta = {beta['beta']:.3f}: fit error "
        f"{fmt(beta['fit_error']['mean'])} (max {fmt(beta['fit_error']['max'])})",
        f"held out (fitted on a random {held['fit_k']} of each problem's samples, scored at "
        f"k = {held['held_out_ks'][0]}..{held['held_out_ks'][-1]}): power law "
        f"{fmt(held['power']['error']['mean'], *held['power_ci'])}, Beta "
        f"{fmt(held['beta']['error']['mean'], *held['beta_ci'])}; better: {held['better']}; "
        f"tolerance {fmt(EXTRAPOLATION_TOLERANCE)}",
        f"criteria, each on its interval: power-law fit error <= {fmt(FIT_TOLERANCE)}, held-out "
        f"error <= {fmt(EXTRAPOLATION_TOLERANCE)} and a log-linear slope above 0 (an interval "
        "across a bound: inconclusive)",
    )


def _monkeys_intervals(
    n: npt.NDArray[Any],
    c: npt.NDArray[Any],
    ks: npt.NDArray[np.int64],
    fit_ks: npt.NDArray[np.int64],
    fraction: float,
    settings: Settings,
) -> dict[str, tuple[float, float]]:
    """Intervals of the fit error, the slope and both held-out errors, each resample refitted.

    Per-problem pass@k is computed once; a resample's coverage is the mean of its rows.
    """
    error_ks = log_spaced_ks(int(n[0]), 100)
    table = {
        name: np.stack([per_problem_pass_at_k(n, c, int(k)) for k in chosen], axis=1)
        for name, chosen in (("fit", fit_ks), ("error", error_ks), ("all", ks))
    }
    rng = np.random.default_rng(settings.seed)
    values: dict[str, list[float]] = {"fit": [], "slope": [], "power": [], "beta": []}
    for r in range(settings.fit_resamples):
        rows = rng.integers(0, c.size, size=c.size)
        curve = table["all"][rows].mean(axis=0)
        values["slope"].append(float(np.polyfit(np.log10(ks), curve, 1)[0]))
        try:
            law = fit_power_law(fit_ks, table["fit"][rows].mean(axis=0))
            values["fit"].append(
                fit_error(table["error"][rows].mean(axis=0), law.predict(error_ks)).mean
            )
            held = compare_held_out(n, c[rows], fit_fraction=fraction, seed=settings.seed + r)
            values["power"].append(held.power_error.mean)
            values["beta"].append(held.beta_error.mean)
        except ConfigError:
            continue  # a resample with nothing (or everything) solved has no law
    return {name: _quantiles(found) for name, found in values.items()}


def _quantiles(values: Sequence[float]) -> tuple[float, float]:
    finite = np.array([v for v in values if math.isfinite(v)])
    if finite.size == 0:
        return math.nan, math.nan
    return float(np.quantile(finite, 0.025)), float(np.quantile(finite, 0.975))


def _plot_monkeys(
    votes: Votes,
    ks: npt.NDArray[np.int64],
    coverage: FloatArray,
    band: tuple[FloatArray, FloatArray],
    power: Any,
    beta: Any,
    held: Any,
    out: Path,
) -> str:
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    axis.fill_between(ks, band[0], band[1], color="0.85", label="coverage, 95% CI")
    axis.plot(ks, coverage, "ko", ms=4, label="coverage (unbiased pass@k)")
    fine = np.geomspace(1, ks[-1], 200)
    axis.plot(fine, power.predict(fine), "C0-", label="power law, fit on all k")
    axis.plot(fine, beta.predict(fine), "C1-", label="Beta model, fit on all k")
    axis.plot(fine, held.power.predict(fine), "C0--", label=f"power law, fit on k <= {held.fit_k}")
    axis.plot(fine, held.beta.predict(fine), "C1--", label=f"Beta, fit on k <= {held.fit_k}")
    axis.axvline(held.fit_k, color="0.5", lw=0.8, ls=":")
    axis.set_xscale("log")
    axis.set_xlabel("samples per problem k")
    axis.set_ylabel("coverage")
    axis.set_title(f"Large Language Monkeys on {votes.name} ({votes.size} problems)")
    axis.legend(fontsize=7, loc="lower right")
    return _save(figure, out, "monkeys.png")


# -- Best-of-Majority ------------------------------------------------------------------------------


def best_of_majority(votes: Votes, settings: Settings, out: Path) -> Finding:
    """Accuracy against N of majority, best-of-N and BoM with the model's confidence as reward."""
    strategies: dict[str, StrategyConfig | PassAtK] = {
        "pass_at_k": PassAtK(),
        "majority": MajorityConfig(),
        "best_of_n": BestOfNConfig(),
        "best_of_majority": BestOfMajorityConfig(alpha=BOM_ALPHA),
    }
    result = evaluate(
        [list(row) for row in votes.answers],
        votes.correct,
        votes.confidence,
        strategies,
        subsets=settings.subsets,
        seed=settings.seed,
    )
    numbers: dict[str, Any] = {"problems": votes.size, "ks": result.ks.tolist()}
    for name in ("majority", "best_of_n", "best_of_majority"):
        numbers[name] = _curve_entry(result, name, settings)
    numbers["pass_at_k"] = {"accuracy": result.accuracy["pass_at_k"].tolist()}
    bon, bom, maj = (numbers[n] for n in ("best_of_n", "best_of_majority", "majority"))
    # Judged from a k fixed in advance, not from each curve's own peak: the peak of a noisy
    # curve is biased high, so a drop from it is found where there is none.
    degrades = at_most(bon["drop_from_reference"], -MATERIAL_DROP)
    holds = above(bom["drop_from_reference"], -MATERIAL_DROP)
    verdict = verdict_of(degrades, holds)
    top, reference = votes.samples, reference_k(votes.samples)
    headline = (
        f"N = {top} minus N = {reference}: best-of-N {fmt(bon['drop_from_reference'][0])}, BoM "
        f"{fmt(bom['drop_from_reference'][0])}, majority {fmt(maj['drop_from_reference'][0])}"
    )
    figure = _plot_curves(
        votes,
        result.ks,
        {
            "best-of-N (confidence)": bon,
            f"Best-of-Majority (alpha {BOM_ALPHA})": bom,
            "majority": maj,
        },
        numbers["pass_at_k"]["accuracy"],
        out,
        f"bom-{votes.name}.png",
        f"Best-of-Majority on {votes.name} ({votes.size} problems)",
    )
    lines = _bom_lines(votes, numbers)
    return Finding("Best-of-Majority", votes.name, verdict, headline, lines, numbers, figure)


def _curve_entry(result: Any, name: str, settings: Settings) -> dict[str, Any]:
    """One strategy's curve with its band, its drop from its own peak and its gain from N = 1."""
    per = result.per_problem[name]
    curve = per.mean(axis=0)
    peak = int(np.argmax(curve))
    reference = reference_k(per.shape[1]) - 1
    drop = mean_ci(per[:, -1] - per[:, reference], settings)
    low, high = result.ci(name, n_resamples=settings.resamples, seed=settings.seed)
    return {
        "accuracy": curve.tolist(),
        "low": low.tolist(),
        "high": high.tolist(),
        "peak_k": peak + 1,
        "drop_from_peak": mean_ci(per[:, -1] - per[:, peak], settings),
        "drop_from_reference": drop,
        "gain_from_1": mean_ci(per[:, -1] - per[:, 0], settings),
        "degrades": at_most(drop, -MATERIAL_DROP) is True,
    }


def reference_k(top: int) -> int:
    """The N that N = ``top`` is compared with to tell whether a curve degrades: a quarter of
    it, fixed before looking at the curve (pure)."""
    return max(1, top // 4)


def _bom_lines(votes: Votes, numbers: Mapping[str, Any]) -> tuple[str, ...]:
    top = votes.samples
    maj = numbers["majority"]
    flat = maj["gain_from_1"][1] <= 0 <= maj["gain_from_1"][2]

    reference = reference_k(top)

    def row(label: str, entry: Mapping[str, Any]) -> str:
        acc = entry["accuracy"]
        drop = entry["drop_from_reference"]
        return (
            f"{label}: {fmt(acc[0])} at N = 1, {fmt(acc[reference - 1])} at N = {reference}, "
            f"{fmt(acc[-1])} at N = {top} (peak {fmt(max(acc))} at N = {entry['peak_k']}); "
            f"N = {top} minus N = {reference} {fmt(*drop)}"
            f"{' (degrades)' if entry['degrades'] else ''}"
        )

    grouped = (
        "by normalised code (docstrings and comments stripped)"
        if votes.name == "humaneval"
        else "by number"
    )
    return (
        row("best-of-N", numbers["best_of_n"]),
        row(f"Best-of-Majority (alpha = {BOM_ALPHA})", numbers["best_of_majority"]),
        row("majority", maj)
        + f"; N = {top} minus N = 1 {fmt(*maj['gain_from_1'])}"
        + (" (flat)" if flat else ""),
        f"coverage (pass@k, an oracle verifier) at N = {top}: "
        f"{fmt(numbers['pass_at_k']['accuracy'][-1])}",
        "reward: the model's bottom-10% group confidence (windows of 32 tokens), from the stored "
        f"top-5 logprobs; answers grouped {grouped}",
        f"criteria: best-of-N degrades (accuracy at N = {top} at least {fmt(MATERIAL_DROP)} below "
        f"N = {reference}'s, the whole interval) and BoM does not (its interval above "
        f"-{fmt(MATERIAL_DROP)}); N = {reference} is fixed in advance, as a curve's own peak is "
        "biased high; an interval across a bound: inconclusive",
    )


def _plot_curves(
    votes: Votes,
    ks: npt.NDArray[np.int64],
    curves: Mapping[str, Mapping[str, Any]],
    coverage: Sequence[float],
    out: Path,
    name: str,
    title: str,
) -> str:
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for number, (label, entry) in enumerate(curves.items()):
        colour = f"C{number}"
        axis.plot(ks, entry["accuracy"], "-o", color=colour, ms=3, label=label)
        axis.fill_between(ks, entry["low"], entry["high"], color=colour, alpha=0.12)
    axis.plot(ks, coverage, "k:", label="pass@k (oracle)")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("samples N")
    axis.set_ylabel("accuracy")
    axis.set_title(title)
    axis.legend(fontsize=7)
    return _save(figure, out, name)


# -- Adaptive-Consistency, ESC and DeepConf ----------------------------------------------------


def adaptive(votes: Votes, settings: Settings, out: Path) -> list[Finding]:
    """Samples (and tokens) the early-stopping rules save against majority@16."""
    cap = ADAPTIVE_CAP
    rules = {
        "majority": MajorityConfig(),
        "adaptive": AdaptiveConfig(samples=cap),
        "esc": AdaptiveConfig(samples=cap, rule="esc"),
    }
    result = evaluate(
        [list(row) for row in votes.answers],
        votes.correct,
        None,
        rules,
        ks=np.arange(1, cap + 1),
        subsets=settings.subsets,
        seed=settings.seed,
    )
    majority = result.per_problem["majority"][:, -1]
    baseline = mean_ci(majority, settings)
    numbers: dict[str, Any] = {
        "problems": votes.size,
        "majority_curve": result.accuracy["majority"].tolist(),
        f"majority@{cap}": baseline,
    }
    findings = []
    papers = {"adaptive": "Adaptive-Consistency", "esc": "ESC"}
    for name, paper in papers.items():
        accuracy = result.per_problem[name][:, -1]
        used = result.per_problem_samples[name][:, -1]
        saved = mean_ci(1.0 - used / cap, settings)
        entry = {
            "accuracy": mean_ci(accuracy, settings),
            "samples": mean_ci(used, settings),
            "saved": saved,
            "difference": mean_ci(accuracy - majority, settings),
        }
        numbers[name] = entry
        findings.append(_saving_finding(paper, votes, entry, baseline, "samples", cap))
    for key, paper, config in (
        ("deepconf", "DeepConf", DEEPCONF),
        ("deepconf_low", "DeepConf-low", DEEPCONF_LOW),
    ):
        numbers[key] = _deepconf(votes, settings, config, majority)
        findings.append(
            _saving_finding(paper, votes, numbers[key], baseline, "completion tokens", cap)
        )
    figure = _plot_adaptive(votes, result, numbers, out)
    return [
        Finding(f.claim, f.dataset, f.verdict, f.headline, f.lines, numbers, figure)
        for f in findings
    ]


def _graders(votes: Votes) -> list[Callable[[str | None], bool]]:
    """Per problem: is an answer one that a sample judged correct gave."""
    graders: list[Callable[[str | None], bool]] = []
    for answers, right in zip(votes.answers, votes.correct, strict=True):
        good = {a for a, r in zip(answers, right, strict=True) if r and a is not None}
        graders.append(good.__contains__)
    return graders


def _deepconf(
    votes: Votes, settings: Settings, config: DeepConfConfig, majority: FloatArray
) -> dict[str, Any]:
    """DeepConf online replayed on the bank: tokens against majority@16's, accuracy with its
    paired difference to ``majority`` (majority@16's per-problem accuracy)."""
    evaluation = evaluate_deepconf(
        list(votes.traces),
        _graders(votes),
        config,
        orders=settings.deepconf_orders,
        seed=settings.seed,
    )
    tokens = np.array(evaluation.per_problem_tokens)
    majority_tokens = config.samples * votes.tokens.mean(axis=1)
    kept = ratio_ci(tokens, majority_tokens, settings)
    accuracy = np.array(evaluation.per_problem_accuracy)
    return {
        "accuracy": mean_ci(accuracy, settings),
        "difference": mean_ci(accuracy - majority, settings),
        "samples": mean_ci(evaluation.per_problem_samples, settings),
        "tokens": float(tokens.mean()),
        "majority_tokens": float(majority_tokens.mean()),
        "saved": (1.0 - kept[0], 1.0 - kept[2], 1.0 - kept[1]),
        "per_problem_tokens": tokens.tolist(),
        "per_problem_accuracy": accuracy.tolist(),
        "config": {"eta": config.eta, "window": config.window, "warmup": config.warmup},
    }


def _saving_finding(
    paper: str,
    votes: Votes,
    entry: Mapping[str, Any],
    baseline: tuple[float, float, float],
    unit: str,
    cap: int,
) -> Finding:
    accuracy = entry["accuracy"][0]
    # The same problems under both rules: the paired difference is the test, not whether one
    # mean falls inside the other's (much wider) interval; and "as accurate" means no more than
    # ACCURACY_MARGIN below, shown by the whole interval (non-inferiority).
    drop = entry["difference"]
    as_accurate = at_most((-drop[0], -drop[2], -drop[1]), ACCURACY_MARGIN)
    saves = above(entry["saved"], 0.0)
    verdict = verdict_of(saves, as_accurate)
    lines = (
        f"{unit} saved against majority@{cap}: {fmt(*entry['saved'])}",
        f"accuracy {fmt(*entry['accuracy'])} against majority@{cap} {fmt(*baseline)}; "
        f"paired difference {fmt(*entry['difference'])}",
        f"criteria: {unit} saved (interval above 0) at an accuracy at most "
        f"{fmt(ACCURACY_MARGIN)} below majority@{cap}'s (the paired difference's interval above "
        f"-{fmt(ACCURACY_MARGIN)}; an interval across either bound: inconclusive)",
    )
    headline = (
        f"saves {fmt(entry['saved'][0])} of the {unit}; accuracy {fmt(accuracy)} vs "
        f"{fmt(baseline[0])}"
    )
    return Finding(paper, votes.name, verdict, headline, lines)


def _plot_adaptive(votes: Votes, result: Any, numbers: Mapping[str, Any], out: Path) -> str:
    figure, (left, right) = plt.subplots(1, 2, figsize=(9.6, 4.0))
    ks = result.ks
    left.plot(ks, numbers["majority_curve"], "k-o", ms=3, label="majority@k")
    for colour, name in (("C0", "adaptive"), ("C1", "esc")):
        entry = numbers[name]
        x, y = entry["samples"][0], entry["accuracy"][0]
        left.errorbar(
            [x],
            [y],
            yerr=[[y - entry["accuracy"][1]], [entry["accuracy"][2] - y]],
            xerr=[[x - entry["samples"][1]], [entry["samples"][2] - x]],
            fmt="s",
            color=colour,
            label=f"{name} (cap {ADAPTIVE_CAP})",
        )
    left.set_xlabel("mean samples per problem")
    left.set_ylabel("accuracy")
    left.legend(fontsize=7)
    per_sample = votes.tokens.mean()
    right.plot(ks * per_sample, numbers["majority_curve"], "k-o", ms=3, label="majority@k")
    for marker, key, label in (("C2D", "deepconf", "eta 90%"), ("C3v", "deepconf_low", "eta 10%")):
        deep = numbers[key]
        right.plot(
            [deep["tokens"]], [deep["accuracy"][0]], marker, label=f"DeepConf online, {label}"
        )
    right.set_xlabel("mean completion tokens per problem")
    right.legend(fontsize=7)
    figure.suptitle(f"Early stopping on {votes.name} ({votes.size} problems)")
    return _save(figure, out, f"adaptive-{votes.name}.png")


# -- Inference Scaling fLaws -------------------------------------------------------------------


def measured_rewards(
    weak: npt.NDArray[np.bool_], correct: npt.NDArray[np.bool_], cost: float
) -> FloatArray:
    """Per problem and k = 1..N: expected reward of drawing k of the stored samples in a random
    order and returning the first that passes the weak tests (abstaining if none does).

    Some of k passes with the unbiased pass@k of the weak verdicts; the first that passes is a
    uniform pick among the passing ones, correct with probability tp / w.
    """
    samples = weak.shape[1]
    passing = weak.sum(axis=1)
    true_positive = (weak & correct).sum(axis=1)
    false_positive = passing - true_positive
    value = np.where(
        passing > 0, (true_positive + cost * false_positive) / np.maximum(passing, 1), 0.0
    )
    passes = np.stack(
        [per_problem_pass_at_k(samples, passing, k) for k in range(1, samples + 1)], axis=1
    )
    return np.asarray(passes * value[:, None], dtype=np.float64)


def flaws(votes: Votes, settings: Settings, out: Path) -> Finding:
    """The weak tests as a verifier, measured against the full tests."""
    if votes.weak is None:
        raise DataError(f"{votes.name} has no weak-test verdicts", field="weak")
    weak, correct = votes.weak, votes.correct
    estimate = estimate_soundness(weak.tolist(), correct.tolist())
    rate = ratio_ci((weak & ~correct).sum(axis=1), (~correct).sum(axis=1), settings)
    ceiling = ratio_ci((weak & correct).sum(axis=1), weak.sum(axis=1), settings)
    samples = votes.samples
    costs = {str(cost): _cost_entry(weak, correct, estimate, cost, settings) for cost in FP_COSTS}
    optimum = {
        cost: costs[str(cost)]["k_opt"] if costs[str(cost)]["k_opt"] is not None else math.inf
        for cost in FP_COSTS
    }
    shrinks = all(optimum[a] >= optimum[b] for a, b in itertools.pairwise(FP_COSTS))
    hurts = any(
        entry["reward_at_k_opt"] - entry["reward_at_max_k"] >= OVERSAMPLING_LOSS
        for entry in costs.values()
    )
    if estimate.false_positives == 0:
        verdict = NOT_TESTABLE
    elif rate[1] > 0 and ceiling[2] < 1 and shrinks and hurts:
        verdict = REPRODUCED
    else:
        verdict = NOT_REPRODUCED
    numbers = {
        "problems": votes.size,
        "soundness": estimate.to_dict(),
        "false_positive_rate": rate,
        "ceiling": ceiling,
        "costs": costs,
        f"pass@{samples}": float(
            per_problem_pass_at_k(samples, correct.sum(axis=1), samples).mean()
        ),
        f"resample@{samples}": costs["0.0"]["measured_rewards"][-1],
    }
    headline = (
        f"FP rate {fmt(rate[0])}, ceiling {fmt(ceiling[0])}, K_opt "
        + "/".join(_k_text(costs[str(c)]["k_opt"]) for c in FP_COSTS)
        + f" at V_FP {'/'.join(f'{c:g}' for c in FP_COSTS)} (none: the reward never falls "
        f"by k = {MAX_K})"
    )
    figure = _plot_flaws(votes, costs, estimate, out)
    lines = _flaws_lines(estimate, numbers, samples)
    return Finding("Inference Scaling fLaws", votes.name, verdict, headline, lines, numbers, figure)


def _cost_entry(
    weak: npt.NDArray[np.bool_],
    correct: npt.NDArray[np.bool_],
    estimate: SoundnessEstimate,
    cost: float,
    settings: Settings,
) -> dict[str, Any]:
    """K_opt at one false-positive cost (formula, interval) and the rewards the bank shows."""
    problems, samples = weak.shape
    rates = np.array([estimate.per_problem_correct, estimate.per_problem_false_positive]).T
    formula = _formula_rewards(estimate, cost, MAX_K)
    k_opt = interior_optimum(formula, optimal_samples(estimate, cost, MAX_K))

    def refit(rows: npt.NDArray[np.int64], r: int) -> float:
        # A resample's per-problem rates are its rows of the estimate's (c_i, f_i).
        rewards = expected_reward_under_weak_verifier(rates[rows, 0], rates[rows, 1], cost, MAX_K)
        best = optimal_samples_under_weak_verifier(rates[rows, 0], rates[rows, 1], cost, MAX_K)
        found = interior_optimum(np.asarray(rewards), best)
        return float(found) if found is not None else float(MAX_K + 1)  # > MAX_K: none

    bank = measured_rewards(weak, correct, cost).mean(axis=0)
    return {
        "k_opt": k_opt,
        "saturation_k": int(np.flatnonzero(formula >= formula.max() - SATURATION)[0]),
        "k_opt_ci": loop_ci(refit, problems, settings),
        "k_opt_within_bank": int(np.argmax(formula[1 : samples + 1])) + 1,
        "measured_k_opt_within_bank": int(np.argmax(bank)) + 1,
        "measured_rewards": bank.tolist(),
        "formula_rewards": formula[1 : samples + 1].tolist(),
        "reward_at_k_opt": float(formula.max()),
        "reward_at_max_k": float(formula[-1]),
    }


def interior_optimum(rewards: FloatArray, best: int) -> int | None:
    """``best`` (the k of the highest reward) when the reward falls after it, by more than
    rounding; None when it rises or stays flat up to the last k: then there is no K_opt within
    reach, only a point after which more samples buy next to nothing (pure)."""
    return best if rewards[best] - rewards[-1] > FLAT else None


def _k_text(k: float | None) -> str:
    return "none" if k is None or k > MAX_K else f"{k:.0f}"


def _flaws_lines(
    estimate: SoundnessEstimate, numbers: Mapping[str, Any], samples: int
) -> tuple[str, ...]:
    costs = numbers["costs"]
    k_text = ", ".join(
        f"V_FP = {cost:g}: {_k_text(costs[str(cost)]['k_opt'])} "
        f"[{_k_text(costs[str(cost)]['k_opt_ci'][0])}, {_k_text(costs[str(cost)]['k_opt_ci'][1])}]"
        f" (within {fmt(SATURATION)} of the best from k = {costs[str(cost)]['saturation_k']})"
        for cost in FP_COSTS
    )
    within = ", ".join(
        f"{cost:g}: measured {costs[str(cost)]['measured_k_opt_within_bank']}, formula "
        f"{costs[str(cost)]['k_opt_within_bank']}"
        for cost in FP_COSTS
    )
    return (
        f"{estimate.candidates} samples: {estimate.weak_passes} pass the weak tests, "
        f"{estimate.strong_passes} the full ones, {estimate.false_positives} pass only the weak",
        f"false-positive rate P(passes weak | wrong) {fmt(*numbers['false_positive_rate'])}; "
        f"ceiling P(correct | passes weak) {fmt(*numbers['ceiling'])}",
        f"K_opt (expected reward: +1 correct, V_FP a false positive, 0 abstaining; up to {MAX_K}): "
        + k_text,
        f"on the bank (k <= {samples}): resampling until the weak tests pass reaches "
        f"{fmt(numbers[f'resample@{samples}'])} at k = {samples} against pass@{samples} "
        f"{fmt(numbers[f'pass@{samples}'])}; the best k within the bank by cost: {within}",
        "criteria: false positives exist (interval above 0), the ceiling is below 1 (interval), "
        f"K_opt never grows as V_FP falls, and at some cost drawing {MAX_K} samples earns at "
        f"least {fmt(OVERSAMPLING_LOSS)} less than K_opt (K_opt: the k of the best reward, "
        f"when the reward falls after it; 'none' when it rises or stays flat up to k = {MAX_K})",
    )


def _formula_rewards(estimate: SoundnessEstimate, cost: float, max_k: int) -> FloatArray:
    return np.array(expected_rewards(estimate, cost, max_k))


def _plot_flaws(
    votes: Votes, costs: Mapping[str, Any], estimate: SoundnessEstimate, out: Path
) -> str:
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    ks = np.arange(1, 201)
    bank_ks = np.arange(1, votes.samples + 1)
    for number, cost in enumerate(FP_COSTS):
        colour = f"C{number}"
        axis.plot(
            ks,
            _formula_rewards(estimate, cost, 200)[1:],
            "-",
            color=colour,
            label=f"V_FP = {cost:g}",
        )
        axis.plot(bank_ks, costs[str(cost)]["measured_rewards"], "o", color=colour, ms=3)
        k_opt = costs[str(cost)]["k_opt"]
        if k_opt is not None and 1 <= k_opt <= 200:
            axis.axvline(k_opt, color=colour, lw=0.7, ls=":")
    axis.set_xscale("log")
    axis.set_xlabel("samples k (resample until the weak tests pass)")
    axis.set_ylabel("expected reward")
    axis.set_title(f"fLaws on {votes.name}: lines the formula, dots the bank")
    axis.legend(fontsize=7)
    return _save(figure, out, "flaws.png")


# -- MAKER -------------------------------------------------------------------------------------


def vote_rates(votes: Votes) -> tuple[FloatArray, FloatArray]:
    """Per problem: p, the share of valid votes for the right answer (its commonest correct
    group), and the share of samples that are valid (not red-flagged)."""
    rates, valid_rates = [], []
    for answers, right, flags in zip(votes.answers, votes.correct, votes.flagged, strict=True):
        valid = [a for a, f in zip(answers, flags, strict=True) if not f]
        good = Counter(a for a, r, f in zip(answers, right, flags, strict=True) if r and not f)
        best = good.most_common(1)[0][1] if good else 0
        rates.append(best / len(valid) if valid else 0.0)
        valid_rates.append(len(valid) / len(answers))
    return np.array(rates), np.array(valid_rates)


def columns(votes: Votes, chosen: slice) -> Votes:
    """The same problems with only the samples in ``chosen`` (what MAKER's claim reads)."""
    return dataclasses.replace(
        votes,
        answers=tuple(row[chosen] for row in votes.answers),
        correct=votes.correct[:, chosen],
        weak=None,
        tokens=votes.tokens[:, chosen],
        confidence=votes.confidence[:, chosen],
        flagged=votes.flagged[:, chosen],
        traces=tuple(row[chosen] for row in votes.traces),
    )


def maker(votes: Votes, settings: Settings, out: Path) -> Finding:
    """First-to-ahead-by-k: votes spent and success against k; k_min's prediction.

    The samples are split in two: the first half picks the problems the process can solve (the
    right answer holds a majority, with wrong votes against it) and estimates p; the second half
    is voted on. Picking and voting on the same samples would make success certain by
    construction. A vote that reaches its cap without a lead of k is a failure (MAKER would
    draw on; the bank has no more), not the leader's win.
    """
    half = votes.samples // 2
    picking, voting = columns(votes, slice(0, half)), columns(votes, slice(half, None))
    rates, valid_rates = vote_rates(picking)
    wrong_votes = (~picking.correct & ~picking.flagged).any(axis=1)
    solvable = (rates > 0.5) & wrong_votes
    steps = int(solvable.sum())
    if steps < 2:
        return Finding(
            "MAKER",
            votes.name,
            NOT_TESTABLE,
            f"the right answer holds a majority of the votes, with wrong votes against it, on "
            f"{steps} problems (2 needed)",
            numbers={"problems": votes.size, "solvable": steps},
        )
    p_mean = float(rates[solvable].mean())
    k_pred = maker_k_min(min(p_mean, 1 - 1e-9), MAKER_TARGET, steps)
    margins = list(range(1, max(4, min(k_pred, half // 2)) + 1))
    rows = _ahead_rows(voting, margins, solvable, rates, valid_rates, settings)
    measured_k = next((r["margin"] for r in rows if r["all_steps"] >= MAKER_TARGET), None)
    at_pred = next((r for r in rows if r["margin"] == k_pred), None)
    rising = all(a["votes"][0] <= b["votes"][0] for a, b in itertools.pairwise(rows))
    # The walk to a lead of k_min must fit in the samples there are, or the bank cannot say.
    fits = at_pred is not None and at_pred["predicted_votes"] <= 0.8 * half
    holds = fits and at_pred is not None and at_pred["all_steps"] >= MAKER_TARGET
    verdict = (REPRODUCED if holds and rising else NOT_REPRODUCED) if fits else NOT_TESTABLE
    numbers = {
        "problems": votes.size,
        "solvable": steps,
        "picked_on": half,
        "voted_on": votes.samples - half,
        "p_mean": p_mean,
        "target": MAKER_TARGET,
        "k_min_predicted": k_pred,
        "k_min_measured": measured_k,
        "walk_fits": fits,
        "margins": rows,
    }
    headline = (
        f"k_min predicted {k_pred}, measured {_k_text(measured_k)}; votes at k = "
        f"1..{margins[-1]}: " + ", ".join(f"{r['votes'][0]:.1f}" for r in rows)
    )
    figure = _plot_maker(voting, rows, k_pred, out)
    lines = _maker_lines(voting, numbers)
    return Finding("MAKER", votes.name, verdict, headline, lines, numbers, figure)


def ahead_replay(
    answers: Sequence[str | None],
    right: set[str],
    margin: int,
    orders: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """First-to-ahead-by-``margin`` over ``orders`` random orders of one problem's votes: the
    mean votes read and the share of orders whose winner is right (no lead by the end: a
    failure, every vote read) (pure, given ``rng``)."""
    spent, won = 0, 0
    for _ in range(orders):
        order = rng.permutation(len(answers))
        found = first_to_ahead_by_k([answers[i] for i in order], margin)
        spent += found[1] if found is not None else len(answers)
        won += found is not None and found[0] in right
    return spent / orders, won / orders


def _ahead_rows(
    votes: Votes,
    margins: Sequence[int],
    solvable: npt.NDArray[np.bool_],
    rates: FloatArray,
    valid_rates: FloatArray,
    settings: Settings,
) -> list[dict[str, Any]]:
    """Per margin, over the solvable problems: votes and success on ``votes`` (the voting
    half), and what p and the valid share (from the picking half) predict."""
    answers = [
        [None if f else a for a, f in zip(row, flags, strict=True)]
        for row, flags in zip(votes.answers, votes.flagged, strict=True)
    ]
    right = [
        {a for a, r in zip(row, good, strict=True) if r and a is not None}
        for row, good in zip(votes.answers, votes.correct, strict=True)
    ]
    chosen = np.flatnonzero(solvable)
    p = np.minimum(rates[solvable], 1 - 1e-9)
    rows: list[dict[str, Any]] = []
    for m in margins:
        rng = np.random.default_rng([settings.seed, m])
        replays = [ahead_replay(answers[i], right[i], m, settings.subsets, rng) for i in chosen]
        used = np.array([spent for spent, _ in replays])
        success = np.array([won for _, won in replays])
        predicted = np.array([maker_expected_votes(x, m) for x in p]) / valid_rates[solvable]
        rows.append(
            {
                "margin": m,
                "votes": mean_ci(used, settings),
                "predicted_votes": float(predicted.mean()),
                "predicted_votes_capped": float(np.minimum(predicted, votes.samples).mean()),
                "success": mean_ci(success, settings),
                "predicted_success": float(np.mean([maker_step_success(x, m) for x in p])),
                "all_steps": float(np.prod(success)),
            }
        )
    return rows


def _maker_lines(votes: Votes, numbers: Mapping[str, Any]) -> tuple[str, ...]:
    steps, p_mean, rows = numbers["solvable"], numbers["p_mean"], numbers["margins"]
    measured_k = numbers["k_min_measured"]
    return (
        f"picked on samples 0-{numbers['picked_on'] - 1}, voted on the other "
        f"{numbers['voted_on']}: {steps} of {votes.size} problems have p > 1/2 and some wrong "
        f"vote among the first (p: the right answer's share of the valid votes; mean "
        f"{p_mean:.3f}); red flags: no answer, or cut off at the token limit; a vote with no lead "
        "of k by its last sample fails",
        *(
            f"k = {r['margin']}: votes {fmt(*r['votes'], pct=False)} (worst case "
            f"{r['predicted_votes']:.2f}, capped at {votes.samples}: "
            f"{r['predicted_votes_capped']:.2f}); success {fmt(*r['success'])} (predicted "
            f"{fmt(r['predicted_success'])}); all {steps} right {fmt(r['all_steps'])}"
            for r in rows
        ),
        f"k_min for all {steps} steps right with probability {MAKER_TARGET} at p = {p_mean:.3f}: "
        f"predicted {numbers['k_min_predicted']}, measured "
        + (str(measured_k) if measured_k is not None else f"none up to {rows[-1]['margin']}"),
        f"criteria: at the predicted k_min all {steps} steps are right with probability >= "
        f"{MAKER_TARGET} on the bank (votes capped at {votes.samples}), and votes rise with k; "
        f"not testable when the walk to k_min needs more than 80% of the {votes.samples} votes "
        "there are (the worst-case prediction)" + ("" if numbers["walk_fits"] else ": so here"),
    )


def _plot_maker(votes: Votes, rows: Sequence[Mapping[str, Any]], k_pred: int, out: Path) -> str:
    figure, (left, right) = plt.subplots(1, 2, figsize=(9.6, 4.0))
    margins = [r["margin"] for r in rows]
    means = np.array([r["votes"][0] for r in rows])
    errors = np.array(
        [[r["votes"][0] - r["votes"][1], r["votes"][2] - r["votes"][0]] for r in rows]
    )
    left.errorbar(margins, means, yerr=errors.T, fmt="ko-", ms=4, label="bank (capped)")
    left.plot(margins, [r["predicted_votes"] for r in rows], "C0--", label="k(2p_sub-1)/(2p-1)")
    left.axhline(votes.samples, color="0.5", lw=0.8, ls=":", label="cap")
    left.set_xlabel("margin k")
    left.set_ylabel("samples drawn per problem")
    left.legend(fontsize=7)
    right.plot(margins, [r["all_steps"] for r in rows], "ko-", ms=4, label="bank: all steps right")
    right.axhline(MAKER_TARGET, color="C3", lw=0.8, ls="--", label=f"target {MAKER_TARGET}")
    right.axvline(k_pred, color="C0", lw=0.8, ls=":", label=f"k_min predicted ({k_pred})")
    right.set_xlabel("margin k")
    right.set_ylim(0, 1.02)
    right.legend(fontsize=7)
    figure.suptitle(f"MAKER first-to-ahead-by-k on {votes.name} ({votes.size} problems)")
    return _save(figure, out, f"maker-{votes.name}.png")


# -- the report --------------------------------------------------------------------------------


def run_claims(sets: Mapping[str, Votes | None], settings: Settings, out: Path) -> list[Finding]:
    """Every claim on the sets it is tested on; too few problems give ``insufficient data``."""
    plan: list[tuple[str, str, Callable[[Votes, Settings, Path], Finding | list[Finding]]]] = [
        ("Large Language Monkeys", "humaneval", monkeys),
        ("Best-of-Majority", "gsm8k", best_of_majority),
        ("Best-of-Majority", "humaneval", best_of_majority),
        ("Adaptive-Consistency, ESC, DeepConf, DeepConf-low", "gsm8k", adaptive),
        ("Inference Scaling fLaws", "humaneval", flaws),
        ("MAKER", "gsm8k", maker),
        ("MAKER", "humaneval", maker),
    ]
    out.mkdir(parents=True, exist_ok=True)
    findings: list[Finding] = []
    for claim, name, test in plan:
        votes = sets.get(name)
        if votes is None or votes.size < settings.min_problems:
            claims = claim.split(", ")
            findings.extend(insufficient(one, votes, name, settings) for one in claims)
            continue
        started = time.perf_counter()
        try:
            found = test(votes, settings, out)
        except (ConfigError, DataError) as exc:
            # e.g. every problem solved by every sample: no law to fit, nothing to compare
            reason = f"{INSUFFICIENT}: {exc}"
            found = [Finding(one, name, reason, str(exc)) for one in claim.split(", ")]
        findings.extend(found if isinstance(found, list) else [found])
        print(f"{claim} on {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return findings


PAPERS = {
    "Large Language Monkeys": "Brown et al. 2024: coverage grows log-linearly with samples and "
    "follows an exponentiated power law exp(a k^b); fitted on few samples it extrapolates",
    "Best-of-Majority": "Di et al. 2025: best-of-N degrades as N grows (reward hacking), "
    "Best-of-Majority does not; majority voting is flat",
    "Adaptive-Consistency": "Aggarwal et al. 2023: stopping when the vote is settled (a Beta "
    "posterior) saves samples at the accuracy of majority voting",
    "ESC": "Li et al. 2024: stopping at the first unanimous window of 5 saves samples at the "
    "accuracy of majority voting",
    "DeepConf": "Fu et al. 2025: stopping low-confidence traces online saves tokens at the "
    "accuracy of majority voting",
    "DeepConf-low": "Fu et al. 2025, DeepConf-low (keep the top 10% by confidence): more tokens "
    "saved, at some risk to accuracy",
    "Inference Scaling fLaws": "Stroebl et al. 2024: with an imperfect verifier, resampling is "
    "capped by P(correct | passes) and the best number of samples is finite and shrinks as false "
    "positives cost more",
    "MAKER": "Meyerson et al. 2025: first-to-ahead-by-k voting needs k_min = "
    "ceil(ln(t^(-1/s) - 1) / ln((1-p)/p)) for s steps to all succeed with probability t, at "
    "about k / (2p - 1) votes per step",
}


def render(
    findings: Sequence[Finding], sets: Mapping[str, Votes | None], meta: Mapping[str, Any]
) -> str:
    """The Markdown report."""
    lines = [
        "# The seed papers' claims on the sample bank",
        "",
        f"Generated by `python benchmarks/reproduce.py` in {meta['seconds']:.1f} s from the bank "
        f"({meta['bank']}): "
        + "; ".join(
            f"{name}: {votes.size if votes else 0} of {PLANNED[name]} problems x {SAMPLES[name]} "
            "samples"
            for name, votes in sets.items()
        )
        + f". Intervals: 95% percentile bootstrap over problems ({meta['settings']['resamples']} "
        f"resamples; {meta['settings']['fit_resamples']} where each resample is refitted), seed "
        f"{meta['settings']['seed']}. The model: Qwen2.5-Coder-0.5B-Instruct at T = 0.8 "
        "(see `benchmarks/bank/README.md`). Every number is in `report.json`.",
        "",
        "| claim | set | verdict | in short |",
        "|---|---|---|---|",
    ]
    for f in findings:
        lines.append(f"| {f.claim} | {f.dataset} | **{f.verdict}** | {f.headline} |")
    shown: set[str] = set()
    for claim in dict.fromkeys(f.claim for f in findings):
        lines += ["", f"## {claim}", "", f"*{PAPERS[claim]}.*"]
        for f in (f for f in findings if f.claim == claim):
            lines += ["", f"**{f.dataset}: {f.verdict}.**{_provisional(f, sets)}", ""]
            lines += [f"- {line}" for line in f.lines] or [f"- {f.headline}"]
            if f.figure and f.figure not in shown:
                shown.add(f.figure)
                lines += ["", f"![{claim} on {f.dataset}]({f.figure})"]
    return "\n".join(lines) + "\n"


def _provisional(found: Finding, sets: Mapping[str, Votes | None]) -> str:
    """A note on a verdict drawn from part of a set (the bank is drawn over several sittings)."""
    votes = sets.get(found.dataset)
    if votes is None or found.verdict.startswith(INSUFFICIENT) or votes.size >= votes.planned:
        return ""
    return f" Provisional: {votes.size} of its {votes.planned} problems are in the bank so far."


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bank", type=Path, default=BANK, help="the bank's folder")
    parser.add_argument("--out", type=Path, default=OUT, help="where the report goes")
    parser.add_argument("--resamples", type=int, default=Settings.resamples)
    parser.add_argument("--fit-resamples", type=int, default=Settings.fit_resamples)
    parser.add_argument("--subsets", type=int, default=Settings.subsets)
    parser.add_argument("--min-problems", type=int, default=Settings.min_problems)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    args = parser.parse_args(argv)
    settings = Settings(
        resamples=args.resamples,
        fit_resamples=args.fit_resamples,
        subsets=args.subsets,
        min_problems=args.min_problems,
        seed=args.seed,
    )
    started = time.perf_counter()
    try:
        sets = {name: read_votes(name, args.bank) for name in SAMPLES}
    except DataError as exc:  # before the report folder is touched: the last report stays
        print(f"reproduce.py: the bank is refused: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.png"):
        old.unlink()
    findings = run_claims(sets, settings, args.out)
    meta = {
        "seconds": time.perf_counter() - started,
        "bank": _display(args.bank),
        "settings": settings.__dict__,
        "problems": {name: (votes.size if votes else 0) for name, votes in sets.items()},
    }
    (args.out / "report.md").write_text(render(findings, sets, meta), encoding="utf-8")
    payload = {
        **meta,
        "findings": [
            {
                "claim": f.claim,
                "dataset": f.dataset,
                "verdict": f.verdict,
                "headline": f.headline,
                "figure": f.figure,
                "numbers": f.numbers,
            }
            for f in findings
        ],
    }
    (args.out / "report.json").write_text(
        json.dumps(_jsonable(payload), indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    for f in findings:
        print(f"{f.claim:24s} {f.dataset:10s} {f.verdict}: {f.headline}")
    print(f"report: {args.out / 'report.md'} ({meta['seconds']:.1f} s)")
    return 0


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
