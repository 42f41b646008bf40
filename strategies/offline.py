"""Offline evaluation: every strategy's expected accuracy at every budget k from stored samples.

Input per problem: the N stored samples' answers (int ids or strings; a negative id or ``None``
means no answer could be extracted), whether each is correct, and optionally each one's verifier
score. Output (:class:`OfflineResult`): for every budget k <= N and every strategy, the accuracy of
the strategy's top-1 selection per problem and averaged over problems, with standard errors.

What "accuracy at k" means: the strategy run online on k samples drawn in a uniformly random order
from the N stored ones. Online, ties go to the sample drawn first (lowest sample index), so over
random orders a tie is broken uniformly at random, never by the position a sample was *stored* at.

- ``pass_at_k`` (coverage: any of the k correct) and ``best_of_n`` have closed forms and are exact:
  pass@k = 1 - C(N - c, k) / C(N, k). For best-of-N, group the samples into blocks of equal score
  (NaN ranks with -inf, last); the subset's best block is the block B with probability
  (C(N - above(B), k) - C(N - above(B) - |B|, k)) / C(N, k), and within it the first drawn, a
  uniform pick, is correct with probability (correct in B) / |B|. Giving every sample of a block
  the block's share of correct samples and weighting rank r by C(N - 1 - r, k - 1) / C(N, k) is
  that sum, so the expectation is one matrix product for all k.
- The voting strategies are averaged over ``subsets`` random orders per problem: the first k of a
  uniformly random order is a uniformly random k-subset in random order, so one pass over an order
  gives a draw for every k. Problem p's order s is ``relabel_p`` after ``shared_s``: every lane is
  a uniform permutation, a problem's orders are independent, and any two lanes of different
  problems are independent (given the shared order, two independent relabelings are independent
  uniform permutations), so the lanes are pairwise independent and the Monte Carlo error of the
  mean over problems is that of fully independent orders. Drawing 500 x 100 full permutations
  instead would cost more than the whole scan. Ties go to the earliest position in the order.
- The pass keeps running vote counts for all (order, problem) lanes at once in numpy, and updates
  each lane's winner in O(1) per sample: within a step only one answer's key changes, and only for
  the better.
- ``adaptive`` and ``ahead_by_k`` run their stopping rule along each order; budget k is their cap,
  and :attr:`OfflineResult.samples_used` holds the mean samples they drew.

Uncertainty: ``per_problem[name]`` (P, K) holds each problem's value (its exact expectation, or the
mean over its orders). ``se`` is the standard error of the mean over problems, sd(values, ddof=1) /
sqrt(P): the problems are a sample of the task (Madaan et al. 2024, "Quantifying Variance in
Evaluation Benchmarks") and the sample variance of noisy per-problem values holds both the spread
between problems and the Monte Carlo error of the orders, so one figure covers both. ``mc_se`` is
the Monte Carlo part alone, sqrt(sum_p v_p (1 - v_p) / (S - 1)) / P for S orders (the lane outcomes
are 0 or 1). :meth:`OfflineResult.ci` is a seeded percentile bootstrap over problems
(:func:`ttscale.estimators.bootstrap_ci`).

``orders`` (an (S, N) array of permutations) replays those orders instead, e.g. the order the
samples were drawn in: then *every* strategy, pass@k and best-of-N included, runs along each order
(pass@k: any correct in the prefix; best-of-N: the prefix's best score, ties to the earliest), and
``method`` is ``"replay"``; at k = N with the identity order each result is the online one.

Strategies are given by their online configs (:class:`MajorityConfig` and so on), so the same
settings drive both; options about drawing (``samples``, ``params``, ``extractor``) do not apply
here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ttscale.errors import ConfigError, DataError
from ttscale.estimators import bootstrap_ci
from ttscale.strategies.adaptive import AdaptiveConfig
from ttscale.strategies.ahead_by_k import AheadByKConfig
from ttscale.strategies.base import StrategyConfig
from ttscale.strategies.best_of_majority import BestOfMajorityConfig
from ttscale.strategies.best_of_n import BestOfNConfig
from ttscale.strategies.deepconf import (
    DeepConfConfig,
    StoredTrace,
    simulate_offline,
    simulate_online,
)
from ttscale.strategies.majority import MajorityConfig
from ttscale.strategies.selection import survival_threshold

__all__ = [
    "DEFAULT_STRATEGIES",
    "OfflineResult",
    "PassAtK",
    "best_of_n_curve",
    "encode_answers",
    "evaluate",
    "pass_at_k_curve",
    "per_problem_best_of_n",
    "per_problem_pass_at_k_curve",
    "tie_shares",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Method = Literal["expected", "replay"]

_NEVER = np.iinfo(np.int32).max  # "never stops" in the Beta rule's table
# Lanes times distinct answers per chunk: bounds the memory of the per-answer state arrays.
_STATE_BUDGET = 1_500_000

MAX_WORKERS = 8
"""The most threads :func:`evaluate` scans with by default."""


@dataclass(frozen=True)
class PassAtK:
    """Coverage: the fraction of problems where any of the k samples is correct (an oracle)."""


OfflineSpec = StrategyConfig | PassAtK

DEFAULT_STRATEGIES: Mapping[str, OfflineSpec] = {
    "pass_at_k": PassAtK(),
    "best_of_n": BestOfNConfig(),
    "majority": MajorityConfig(),
    "weighted_majority": MajorityConfig(weighted=True),
    "best_of_majority": BestOfMajorityConfig(alpha=0.005),
    "adaptive": AdaptiveConfig(),
    "ahead_by_k": AheadByKConfig(),
}
"""What :func:`evaluate` runs when no strategies are named (score-based ones need scores)."""

TRACE_STRATEGIES: Mapping[str, OfflineSpec] = {
    "deepconf": DeepConfConfig(mode="offline"),
    "deepconf_online": DeepConfConfig(mode="online"),
}
"""Strategies that read each sample's token confidences: :func:`evaluate` runs them by name, or
by default, when it is given ``traces``."""

DEEPCONF_ORDERS = 20
"""Random draw orders per problem for DeepConf: a Python replay per order and budget, so fewer
than the vectorised scan's; its Monte Carlo error is in the standard errors like the others'."""

_NEEDS_SCORES = (BestOfNConfig, BestOfMajorityConfig)


@dataclass(frozen=True)
class OfflineResult:
    """Accuracy per budget, per problem and with standard errors; arrays aligned with ``ks``.

    ``accuracy[name]`` and ``samples_used[name]`` are (K,) means over problems;
    ``per_problem[name]`` and ``per_problem_samples[name]`` are (P, K), rows in input order;
    ``per_problem_tokens[name]`` (P, K) the completion tokens spent, for the strategies replayed
    over token streams (DeepConf);
    ``se`` and ``mc_se`` are (K,) (see the module docstring). ``method`` is ``"expected"``
    (random orders and closed forms) or ``"replay"`` (the orders given).
    """

    ks: IntArray
    accuracy: Mapping[str, FloatArray]
    samples_used: Mapping[str, FloatArray]
    problems: int
    subsets: int
    per_problem: Mapping[str, FloatArray] = field(default_factory=dict)
    per_problem_samples: Mapping[str, FloatArray] = field(default_factory=dict)
    per_problem_tokens: Mapping[str, FloatArray] = field(default_factory=dict)
    se: Mapping[str, FloatArray] = field(default_factory=dict)
    mc_se: Mapping[str, FloatArray] = field(default_factory=dict)
    method: Method = "expected"
    notes: Mapping[str, str] = field(default_factory=dict)

    def _where(self, k: int) -> int:
        where = np.flatnonzero(self.ks == k)
        if where.size == 0:
            raise ConfigError(f"budget {k} was not evaluated; ks run {self.ks[0]}..{self.ks[-1]}")
        return int(where[0])

    def at(self, name: str, k: int) -> float:
        """The accuracy of ``name`` at budget ``k``."""
        return float(self.accuracy[name][self._where(k)])

    def se_at(self, name: str, k: int) -> float:
        """The standard error of :meth:`at` (problems and Monte Carlo together)."""
        return float(self.se[name][self._where(k)])

    def ci(
        self, name: str, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
    ) -> tuple[FloatArray, FloatArray]:
        """Percentile bootstrap interval over problems at every k: ``(low, high)``, seeded."""
        return bootstrap_ci(
            self.per_problem[name], n_resamples=n_resamples, confidence=confidence, seed=seed
        )


def standard_errors(per_problem: FloatArray, lanes: int) -> tuple[FloatArray, FloatArray]:
    """``(se, mc_se)`` per column of (P, K) per-problem values from ``lanes`` 0/1 draws each.

    ``lanes`` 0 means the values are exact (no Monte Carlo part); with one lane the Monte Carlo
    spread is unknown, and with one problem the spread between problems: those are NaN.
    """
    values = np.asarray(per_problem, dtype=np.float64)
    count = values.shape[0]
    if count > 1:
        se = values.std(axis=0, ddof=1) / math.sqrt(count)
    else:
        se = np.full(values.shape[1], np.nan)
    if lanes == 0:
        mc = np.zeros(values.shape[1])
    elif lanes == 1:
        mc = np.full(values.shape[1], np.nan)  # one draw per problem: no spread to measure
    else:
        mc = np.sqrt((values * (1.0 - values)).sum(axis=0) / (lanes - 1)) / count
    return np.asarray(se, dtype=np.float64), np.asarray(mc, dtype=np.float64)


# -- input -------------------------------------------------------------------------------------


def encode_answers(answers: Sequence[Any] | npt.ArrayLike) -> IntArray:
    """Dense answer ids 0..D-1 in order of first appearance; -1 where there is no answer.

    Accepts ints (negative = no answer) or strings/objects (``None`` = no answer).
    """
    values = np.asarray(answers)
    if values.ndim != 1:
        raise DataError(f"answers of one problem must be one-dimensional, got shape {values.shape}")
    encoded = np.full(values.shape[0], -1, dtype=np.int64)
    if values.dtype.kind in "iu":
        present = values >= 0
        _, first, inverse = np.unique(values[present], return_index=True, return_inverse=True)
        # Renumber by first appearance so ids do not depend on the values' sort order.
        renumber = np.empty(first.size, dtype=np.int64)
        renumber[np.argsort(first, kind="stable")] = np.arange(first.size)
        encoded[present] = renumber[inverse]
        return encoded
    ids: dict[Any, int] = {}
    for position, value in enumerate(values.tolist()):
        if value is None:
            continue
        encoded[position] = ids.setdefault(value, len(ids))
    return encoded


def _as_table(
    answers: Sequence[Any] | npt.ArrayLike,
    correct: Sequence[Any] | npt.ArrayLike,
    scores: Sequence[Any] | npt.ArrayLike | None,
) -> tuple[IntArray, BoolArray, FloatArray | None] | None:
    """Answers given as a 2-D array, with correctness (and scores) of its shape, as (P, N)
    arrays; None for any other input (read problem by problem instead)."""
    if not isinstance(answers, np.ndarray) or answers.ndim != 2 or answers.shape[1] == 0:
        return None
    right = np.asarray(correct, dtype=bool)
    graded = np.asarray(scores, dtype=np.float64) if scores is not None else None
    if right.shape != answers.shape or (graded is not None and graded.shape != answers.shape):
        return None  # the problem-by-problem reading names the problem that does not fit
    encoded = np.empty(answers.shape, dtype=np.int64)
    for row, values in enumerate(answers):
        encoded[row] = encode_answers(values)
    return encoded, right, graded


def _as_problem_arrays(
    answers: Sequence[Any] | npt.ArrayLike,
    correct: Sequence[Any] | npt.ArrayLike,
    scores: Sequence[Any] | npt.ArrayLike | None,
) -> list[tuple[IntArray, BoolArray, FloatArray | None]]:
    rows_answers = list(answers)  # type: ignore[arg-type]
    rows_correct = list(correct)  # type: ignore[arg-type]
    rows_scores = list(scores) if scores is not None else None  # type: ignore[arg-type]
    if len(rows_correct) != len(rows_answers):
        raise DataError(
            f"{len(rows_answers)} problems of answers but {len(rows_correct)} of correct"
        )
    if rows_scores is not None and len(rows_scores) != len(rows_answers):
        raise DataError(f"{len(rows_answers)} problems of answers but {len(rows_scores)} of scores")
    problems = []
    for number, row in enumerate(rows_answers):
        encoded = encode_answers(row)
        right = np.asarray(rows_correct[number], dtype=bool)
        if right.shape != encoded.shape:
            raise DataError(f"problem {number}: {right.size} correctness flags for {encoded.size}")
        graded: FloatArray | None = None
        if rows_scores is not None:
            graded = np.asarray(rows_scores[number], dtype=np.float64)
            if graded.shape != encoded.shape:
                raise DataError(f"problem {number}: {graded.size} scores for {encoded.size}")
        if encoded.size == 0:
            raise DataError(f"problem {number} has no samples")
        problems.append((encoded, right, graded))
    return problems


# -- closed forms ------------------------------------------------------------------------------


def _log_factorials(n: int) -> FloatArray:
    return np.array([math.lgamma(i + 1) for i in range(n + 1)], dtype=np.float64)


def _log_comb(log_fact: FloatArray, n: IntArray, m: IntArray) -> FloatArray:
    valid = (m >= 0) & (m <= n)
    safe_n = np.where(valid, n, 0)
    safe_m = np.where(valid, m, 0)
    out = log_fact[safe_n] - log_fact[safe_m] - log_fact[safe_n - safe_m]
    return np.where(valid, out, -np.inf)


def _budgets(ks: npt.ArrayLike, n: int) -> IntArray:
    budgets = np.atleast_1d(np.asarray(ks, dtype=np.int64))
    if budgets.ndim != 1 or budgets.size == 0 or budgets.min() < 1 or budgets.max() > n:
        raise ConfigError(f"ks must be budgets in 1..{n} (the samples per problem), got {ks!r}")
    return budgets


def per_problem_pass_at_k_curve(
    correct_counts: npt.ArrayLike, n: int, ks: npt.ArrayLike
) -> FloatArray:
    """Unbiased pass@k of each problem with ``correct_counts`` correct of ``n``: (P, K)."""
    counts = np.atleast_1d(np.asarray(correct_counts, dtype=np.int64))
    if counts.size and (counts.min() < 0 or counts.max() > n):
        raise ConfigError(f"correct counts must lie in 0..{n}, got {counts.min()}..{counts.max()}")
    budgets = _budgets(ks, n)
    log_fact = _log_factorials(n)
    wrong = (n - counts)[:, None]
    k = budgets[None, :]
    fail = np.exp(_log_comb(log_fact, wrong, k) - _log_comb(log_fact, np.full_like(k, n), k))
    return np.asarray(1.0 - fail, dtype=np.float64)


def pass_at_k_curve(correct_counts: npt.ArrayLike, n: int, ks: npt.ArrayLike) -> FloatArray:
    """Mean unbiased pass@k over problems with ``correct_counts`` correct of ``n``, per k."""
    result: FloatArray = per_problem_pass_at_k_curve(correct_counts, n, ks).mean(axis=0)
    return result


def _rank_weights(n: int, budgets: IntArray) -> FloatArray:
    """(K, N): the probability that rank r is the best of a random k-subset of N ranked items."""
    ranks = np.arange(n, dtype=np.int64)[None, :]
    column = budgets[:, None]
    log_fact = _log_factorials(n)
    return np.exp(
        _log_comb(log_fact, n - 1 - ranks, column - 1)
        - _log_comb(log_fact, np.full_like(column, n), column)
    )


def best_of_n_curve(correct_by_rank: npt.ArrayLike, ks: npt.ArrayLike) -> FloatArray:
    """Mean best-of-k accuracy; ``correct_by_rank[p, r]``: is problem p's rank-r sample correct.

    Rank 0 is the best sample. The best of a random k-subset has rank r with probability
    C(N - 1 - r, k - 1) / C(N, k). Entries may be fractions: :func:`tie_shares` gives every
    member of a block of equal scores the block's share of correct samples, which makes the
    result exact for tied scores broken at random.
    """
    table = np.asarray(correct_by_rank, dtype=np.float64)
    weights = _rank_weights(table.shape[1], _budgets(ks, table.shape[1]))
    result: FloatArray = (weights @ table.T).mean(axis=1)
    return result


def _keyed(scores: FloatArray) -> FloatArray:
    # NaN must not poison a sort: a sample the verifier could not score ranks with -inf, last.
    return np.where(np.isnan(scores), -np.inf, scores)


def tie_shares(correct: npt.ArrayLike, scores: npt.ArrayLike) -> FloatArray:
    """(P, N) in rank order (best score first): each sample's block's share of correct samples.

    A block is the samples of one problem with equal scores (NaN equal to -inf).
    """
    right = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    keyed = _keyed(np.atleast_2d(np.asarray(scores, dtype=np.float64)))
    if right.shape != keyed.shape:
        raise DataError(f"correct has shape {right.shape} but scores {keyed.shape}")
    problems, n = keyed.shape
    order = np.argsort(-keyed, axis=1, kind="stable")
    ranked = np.take_along_axis(keyed, order, axis=1)
    starts = np.ones((problems, n), dtype=np.int64)
    starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    block = np.cumsum(starts, axis=1) - 1 + (np.arange(problems) * n)[:, None]
    flat = block.ravel()
    sums = np.bincount(flat, weights=np.take_along_axis(right, order, axis=1).ravel())
    sizes = np.bincount(flat)
    shares: FloatArray = (sums[flat] / sizes[flat]).reshape(problems, n)
    return shares


def per_problem_best_of_n(
    correct: npt.ArrayLike, scores: npt.ArrayLike, ks: npt.ArrayLike
) -> FloatArray:
    """Exact best-of-k accuracy of each problem, ties broken at random: (P, K)."""
    shares = tie_shares(correct, scores)
    weights = _rank_weights(shares.shape[1], _budgets(ks, shares.shape[1]))
    return np.asarray((weights @ shares.T).T, dtype=np.float64)


def _score_levels(scores: FloatArray) -> tuple[IntArray, FloatArray]:
    """Per problem row: each sample's dense score level (0 lowest) and the score of each level."""
    keyed = _keyed(scores)
    order = np.argsort(keyed, axis=1, kind="stable")
    ranked = np.take_along_axis(keyed, order, axis=1)
    steps = np.zeros(keyed.shape, dtype=np.int64)
    steps[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    dense = np.cumsum(steps, axis=1)
    levels = np.empty_like(dense)
    np.put_along_axis(levels, order, dense, axis=1)
    by_level = np.full(keyed.shape, -np.inf)
    np.put_along_axis(by_level, dense, ranked, axis=1)  # repeated levels write equal scores
    return levels, by_level


@functools.lru_cache(maxsize=16)
def _beta_min_top(n: int, threshold: float) -> IntArray:
    """For b = 0..n: the fewest top votes a with P(p > 1/2 | Beta(a+1, b+1)) >= threshold.

    Uses P = P(Binomial(a+b+1, 1/2) <= a) and the recursion F_{m+1}(x) = (F_m(x) + F_m(x-1)) / 2
    for the binomial CDFs; ``_NEVER`` where no a <= n - b reaches the threshold.
    """
    rows = n + 2
    cdf = np.zeros((rows, rows), dtype=np.float64)
    cdf[0, :] = 1.0  # Binomial(0, 1/2) is 0: its CDF is 1 at every x >= 0
    for m in range(1, rows):
        cdf[m, 1:] = (cdf[m - 1, 1:] + cdf[m - 1, :-1]) / 2.0
        cdf[m, 0] = cdf[m - 1, 0] / 2.0
    top = np.arange(n + 1)[None, :]
    second = np.arange(n + 1)[:, None]
    trials = np.minimum(top + second + 1, rows - 1)
    probability = cdf[trials, np.minimum(top, rows - 1)]
    reaches = (probability >= threshold) & (top + second <= n)
    minimum = np.where(reaches.any(axis=1), reaches.argmax(axis=1), _NEVER)
    # With no votes at all nothing is settled, however low the threshold.
    return np.maximum(minimum, 1).astype(np.int64)


# -- the scan over random orders ---------------------------------------------------------------


@dataclass
class _Chunk:
    """Problems scanned together, laid out for :func:`_scan`.

    ``answers``, ``correct``, ``levels`` and ``scores`` are (N, P), transposed so that one step's
    samples are whole rows. ``answers`` are dense ids 0..D-1, with D (``distinct``) standing for
    "no answer"; ``levels`` are each sample's dense score level (0 lowest); ``score_by_level``
    (P, N) is the score of each level.
    """

    answers: IntArray
    correct: BoolArray
    scores: FloatArray | None
    levels: IntArray | None
    score_by_level: FloatArray | None
    distinct: int


_SPARSE_AT = 16
"""A sequential strategy looks at its live lanes by list once at most 1/16 of them still draw."""


@dataclass
class _Stopping:
    """A sequential strategy's lanes: which still draw, and per-problem sums over stopped lanes.

    While many lanes draw, ``live`` (S, P) flags them and ``live_bit`` is the first-member bit
    where live, else 0. Once few are left, ``sparse`` lists them (flat lane numbers) and the rules
    read those lanes only (:meth:`view`): most lanes of a stopping rule stop within a few samples.
    """

    live: BoolArray
    live_bit: npt.NDArray[Any]
    live_total: int
    live_count: IntArray
    stopped_right: IntArray
    stopped_samples: IntArray
    first_bit: int
    sparse: IntArray | None = None

    @classmethod
    def start(cls, shape: tuple[int, int], key_type: Any, first_bit: int) -> _Stopping:
        subsets, problems = shape
        return cls(
            live=np.ones(shape, dtype=bool),
            live_bit=np.full(shape, first_bit, dtype=key_type),
            live_total=subsets * problems,
            live_count=np.full(problems, subsets, dtype=np.int64),
            stopped_right=np.zeros(problems, dtype=np.int64),
            stopped_samples=np.zeros(problems, dtype=np.int64),
            first_bit=first_bit,
        )

    @property
    def problems(self) -> int:
        return int(self.live.shape[1])

    def view(self, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``values`` (S, P) at the lanes still drawing: all lanes while dense, else the list."""
        return values if self.sparse is None else values.reshape(-1)[self.sparse]

    def settle(self, stops: BoolArray, taken: int, picks: npt.NDArray[Any]) -> None:
        """Stop the lanes in ``stops`` (shaped as :meth:`view`), each answering with its group
        key in ``picks`` (likewise)."""
        if self.sparse is not None:
            self._settle_listed(stops, taken, picks)
            return
        stops &= self.live
        fresh = int(np.count_nonzero(stops))
        if not fresh:
            return
        self.live ^= stops
        np.multiply(self.live, self.live_bit.dtype.type(self.first_bit), out=self.live_bit)
        right = (picks & self.first_bit) != 0
        right &= stops
        self.stopped_right += _per_problem(right)
        per_problem = _per_problem(stops)
        self.stopped_samples += per_problem * taken
        self.live_count -= per_problem
        self.live_total -= fresh
        if self.live_total * _SPARSE_AT <= self.live.size:
            self.sparse = np.flatnonzero(self.live)

    def _settle_listed(self, stops: BoolArray, taken: int, picks: npt.NDArray[Any]) -> None:
        assert self.sparse is not None
        fresh = int(np.count_nonzero(stops))
        if not fresh:
            return
        problem = self.sparse[stops] % self.problems
        right = (picks[stops] & self.first_bit) != 0
        self.stopped_right += np.bincount(problem[right], minlength=self.problems)
        per_problem = np.bincount(problem, minlength=self.problems)
        self.stopped_samples += per_problem * taken
        self.live_count -= per_problem
        self.live_total -= fresh
        self.sparse = self.sparse[~stops]

    def right_now(self, lead: npt.NDArray[Any], scratch: npt.NDArray[Any]) -> IntArray:
        """Per problem, the lanes answering right now: stopped ones, and live ones by ``lead``."""
        right: IntArray = self.stopped_right.copy()
        if self.live_total == 0:
            return right
        if self.sparse is None:
            np.bitwise_and(lead, self.live_bit, out=scratch)
            right += _count_bits(scratch, self.first_bit)
        else:
            hits = (lead.reshape(-1)[self.sparse] & self.first_bit) != 0
            right += np.bincount(self.sparse[hits] % self.problems, minlength=self.problems)
        return right


@dataclass
class _LevelIndex:
    """Each problem's samples grouped by score level, and each sample's position in each order:
    what resolving a tie between best members by draw order needs."""

    keys: IntArray  # (P * N,) ascending: problem * (N + 1) + level
    members: IntArray  # (P * N,) the sample of each key
    position: IntArray  # (S, N) where each sample is drawn in each order
    width: int

    @classmethod
    def of(cls, chunk: _Chunk, orders: IntArray) -> _LevelIndex:
        assert chunk.levels is not None
        n, problems = chunk.levels.shape
        by_level = np.argsort(chunk.levels, axis=0, kind="stable")
        levels = np.take_along_axis(chunk.levels, by_level, axis=0)
        keys = (levels + np.arange(problems)[None, :] * (n + 1)).T.ravel()
        return cls(keys, by_level.T.ravel(), np.argsort(orders, axis=1), n + 1)

    def samples(self, problem: IntArray, level: IntArray) -> tuple[IntArray, BoolArray]:
        """(m, B) samples of each problem at each level, padded, and which are real."""
        wanted = problem * self.width + level
        start = np.searchsorted(self.keys, wanted, side="left")
        stop = np.searchsorted(self.keys, wanted, side="right")
        span = np.arange(int((stop - start).max(initial=1)))[None, :]
        present = span < (stop - start)[:, None]
        picked = np.take(self.members, start[:, None] + span, mode="clip")  # padding: any
        return picked, present


@dataclass
class _Layout:
    """Bit fields of a group's key: ``count | first | best`` (see :func:`_scan`)."""

    bits: int
    best_width: int
    count_shift: int
    key_type: type[np.unsignedinteger[Any]]

    @classmethod
    def for_samples(cls, n: int, need_best: bool) -> _Layout:
        """Field widths for N samples: 32 bits up to 1023 samples, else 64."""
        bits = max(1, int(n).bit_length())
        best_width = bits + 1 if need_best else 0  # a level + 1 (<= N) and a correct bit
        count_shift = best_width + bits + 1  # first: a position and a correct bit
        if count_shift + bits > 64:
            raise ConfigError(f"offline evaluation handles up to {2**20 - 1} samples per problem")
        wide = count_shift + bits > 32
        return cls(bits, best_width, count_shift, np.uint64 if wide else np.uint32)

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    @property
    def first_bit(self) -> int:
        """Whether the group's first-drawn member is correct."""
        return 1 << self.best_width


def _scan(
    chunk: _Chunk,
    orders: IntArray,
    specs: Mapping[str, OfflineSpec],
    wanted: BoolArray,
) -> tuple[dict[str, IntArray], dict[str, IntArray]]:
    """Each strategy's correct lanes per problem at every wanted step: (N, P) counts over orders.

    Also returns, for the sequential strategies, the samples their lanes drew (summed likewise).
    A lane is one (order, problem) pair; lanes are laid out (S, P). The vote state of every answer
    of every lane lives in flat arrays indexed by ``answer * lanes + lane``: answer-major, so the
    few popular answers' rows stay in cache. A group's key packs three fields into one unsigned
    integer, ``count | first | best``: ``first`` is ``(mask - position of its first-drawn member)
    << 1`` plus whether that member is correct; ``best`` the same for its best member by (score
    level, earliest position), with the level on top. One integer comparison is "more votes, then
    drawn first" (first positions differ between groups, so ``best`` never decides), and whether a
    lane's pick is correct is a bit of a key: no gather at scoring time. Every lane takes its
    sample at the same position in a step, so the position bits are one scalar per step. The
    answerless row has count 0 and no correct bits, so it can never lead a lane that has an
    answer. Every update is branch-free (maxima and arithmetic blends), since masked copies with
    unpredictable masks cost several times as much at this size.
    """
    n, problems = chunk.answers.shape
    subsets = orders.shape[0]
    none = chunk.distinct
    shape = (subsets, problems)
    lanes = subsets * problems

    weighted = [name for name, c in specs.items() if isinstance(c, MajorityConfig) and c.weighted]
    boms = {name: c for name, c in specs.items() if isinstance(c, BestOfMajorityConfig)}
    adaptives = {name: c for name, c in specs.items() if isinstance(c, AdaptiveConfig)}
    aheads = {name: c for name, c in specs.items() if isinstance(c, AheadByKConfig)}
    bests = [name for name, c in specs.items() if isinstance(c, BestOfNConfig)]
    coverages = [name for name, c in specs.items() if isinstance(c, PassAtK)]
    need_best = bool(weighted or boms or bests)
    means = any(c.group_score == "mean" for c in boms.values())
    need_weight = bool(weighted) or means
    need_second = bool(aheads) or any(c.rule == "beta" for c in adaptives.values())
    need_runs = any(c.rule == "esc" for c in adaptives.values())
    if need_best and (chunk.levels is None or chunk.scores is None):
        raise ConfigError("best-of-N, weighted majority and best_of_majority need scores")

    layout = _Layout.for_samples(n, need_best)
    # Where no problem has a right and a wrong sample of equal score, equal best levels never
    # differ in correctness, so no tie between groups' best members needs its draw order.
    ties = need_best and _mixed_ties(chunk)
    key_type = layout.key_type
    mask, best_width, count_shift = layout.mask, layout.best_width, layout.count_shift
    field_mask = (1 << best_width) - 1
    first_bit = layout.first_bit

    # Per sample, (N, P): its bits in its group's key, positions left out (zero if answerless).
    valid = chunk.answers < none
    best_static = (
        ((chunk.levels + 1) << 1) | chunk.correct
        if chunk.levels is not None
        else np.zeros_like(chunk.answers)
    )
    first_static = (valid & chunk.correct).astype(np.int64) << best_width
    word = np.where(
        valid, (1 << count_shift) | first_static | (best_static if need_best else 0), 0
    ).astype(key_type)
    best_any = best_static.astype(key_type)  # answerless samples too: groups of one for BoM
    positions = mask - np.arange(n, dtype=np.int64)
    step_bits = (positions << (best_width + 1)).astype(key_type)
    slot_base = chunk.answers * lanes + np.arange(problems, dtype=np.int64)[None, :]
    lane_offset = (np.arange(subsets, dtype=np.int64) * problems)[:, None]

    keys = np.zeros((none + 1) * lanes, dtype=key_type)
    lead = np.zeros(shape, dtype=key_type)
    second = np.zeros(shape, dtype=key_type)

    weight = vote_weight = lead_weight = lead_weight_key = None
    if need_weight:
        assert chunk.scores is not None
        weight = np.zeros((none + 1) * lanes, dtype=np.float64)
        # Answerless samples carry -inf so their row can never outweigh a real answer.
        vote_weight = np.where(valid, chunk.scores, -np.inf)
        lead_weight = np.full(shape, -1.0)
        lead_weight_key = np.zeros(shape, dtype=key_type)
    lone = np.zeros(shape, dtype=key_type) if means else None  # best answerless sample
    bom_best = {name: np.zeros(shape, dtype=key_type) for name in boms}
    bom_threshold = dict.fromkeys(boms, 0)
    best_seen = np.zeros(shape, dtype=key_type) if bests else None
    covered = np.zeros(shape, dtype=bool) if coverages else None
    stopping = {name: _Stopping.start(shape, key_type, first_bit) for name in [*adaptives, *aheads]}
    beta_tables = {
        name: _beta_min_top(n, c.threshold).astype(key_type)
        for name, c in adaptives.items()
        if c.rule == "beta"
    }
    run_length = np.zeros(shape, dtype=key_type)
    previous = np.full(shape, -1, dtype=np.int64)
    lane_problem_offset = np.tile(np.arange(problems, dtype=np.int64) * n, subsets)
    totals = {name: np.zeros((n, problems), dtype=np.int64) for name in specs}
    drawn = {name: np.zeros((n, problems), dtype=np.int64) for name in stopping}

    by_level = _LevelIndex.of(chunk, orders) if ties else None

    def earliest(
        chosen: IntArray, level: npt.NDArray[Any], taken: int, allowed: Any
    ) -> npt.NDArray[Any]:
        """For lanes ``chosen`` (flat) whose best candidates tie at ``level`` (level + 1) with
        right and wrong members: the best field of the earliest-drawn sample at that level that
        ``allowed(answers, lanes, samples, problems)`` admits. Rare, and only the samples of that
        level are looked at, so it is exact at little cost."""
        assert by_level is not None
        problem = chosen % problems
        samples, present = by_level.samples(problem, level.astype(np.int64) - 1)
        column = problem[:, None]
        drawn_at = by_level.position[(chosen // problems)[:, None], samples]
        fits = present & (drawn_at < taken)
        fits &= allowed(chunk.answers[samples, column], chosen[:, None], samples, column)
        first = np.where(fits, drawn_at, n).argmin(axis=1)
        right = chunk.correct[samples[np.arange(chosen.size), first], problem]
        fields: npt.NDArray[Any] = ((level.astype(np.int64) << 1) | right).astype(key_type)
        return fields

    def counted(threshold: int) -> Any:
        def allowed(said: IntArray, lane: IntArray, _: IntArray, __: IntArray) -> BoolArray:
            count = keys[np.minimum(said, none) * lanes + lane] >> count_shift
            fits: BoolArray = (said < none) & (count >= threshold)
            return fits

        return allowed

    def settled(
        winner: npt.NDArray[Any],
        candidates: npt.NDArray[Any],
        taken: int,
        allowed: Any,
    ) -> npt.NDArray[Any]:
        """``winner`` (the max of ``candidates``, (G, lanes) best fields or 0), with the lanes
        whose top level holds right and wrong candidates resolved by draw order."""
        if not ties:
            return winner
        level = winner >> 1
        at_top = (candidates >> 1 == level[None, :]) & (candidates > 0)
        wrong = (at_top & ((candidates & 1) == 0)).any(axis=0)
        mixed = np.flatnonzero(wrong & ((winner & 1) == 1))
        if mixed.size:
            winner = winner.copy()
            winner[mixed] = earliest(mixed, level[mixed], taken, allowed)
        return winner

    def surviving_best(threshold: int, mean_scores: bool, taken: int) -> npt.NDArray[Any]:
        """Every lane's winning best field from scratch (on a threshold change, or for mean)."""
        grid = keys.reshape(none + 1, lanes)[:none]
        count = grid >> count_shift
        survives = count >= max(threshold, 1)
        best = grid & field_mask
        if not mean_scores:
            # Only called with threshold > 1: answerless groups of one do not survive.
            candidates = np.where(survives, best, 0)
            winner = candidates.max(axis=0, initial=0)
            winner = settled(winner, candidates, taken, counted(threshold))
            return winner.reshape(shape).astype(key_type)
        assert weight is not None and lone is not None and chunk.score_by_level is not None
        assert chunk.scores is not None
        sums = weight.reshape(none + 1, lanes)[:none]
        mean = np.where(survives, sums / np.maximum(count, 1), -np.inf)
        lone_best = lone.ravel() if threshold <= 1 else np.zeros(lanes, dtype=key_type)
        lone_known = lone_best > 0
        lone_level = (lone_best >> 1).astype(np.int64) - 1
        lone_score = np.where(
            lone_known,
            np.take(chunk.score_by_level, lane_problem_offset + np.maximum(lone_level, 0)),
            -np.inf,
        )
        top = np.maximum(mean.max(axis=0, initial=-np.inf), lone_score)
        # Ties on the mean go to the group whose best member ranks first.
        candidates = np.where(survives & (mean == top[None, :]), best, 0)
        lone_in = np.where(lone_known & (lone_score == top), lone_best, 0)
        candidates = np.vstack([candidates, lone_in[None, :]])
        scores_of = chunk.scores

        def allowed(
            said: IntArray, lane: IntArray, sample: IntArray, column: IntArray
        ) -> BoolArray:
            slot_of = np.minimum(said, none) * lanes + lane
            group_count = keys[slot_of] >> count_shift
            assert weight is not None
            group_mean = weight[slot_of] / np.maximum(group_count, 1)
            in_group = (said < none) & (group_count >= max(threshold, 1))
            in_group &= group_mean == top[lane]
            alone_ok = (said == none) & lone_known[lane] & (scores_of[sample, column] == top[lane])
            fits: BoolArray = in_group | alone_ok
            return fits

        winner = settled(candidates.max(axis=0, initial=0), candidates, taken, allowed)
        return winner.reshape(shape).astype(key_type)

    scratch = np.empty(shape, dtype=key_type)  # the tally's masked keys, reused every step
    count_one = key_type(1 << count_shift)
    for step in range(n):
        taken = step + 1  # samples in the prefix
        columns = orders[:, step]  # the sample each order takes now, shared by all problems
        slot = np.take(slot_base, columns, axis=0)  # (S, P): whole rows, a cheap gather
        slot += lane_offset
        arriving = np.take(word, columns, axis=0)
        arriving += step_bits[step]
        old = keys.take(slot)
        # One more vote, and the best member: a strictly higher level replaces it, an equal one
        # keeps the earlier-drawn member (so its field needs no position). Then the arriving
        # sample's own key wins only where the group was empty: an existing group has more votes,
        # or (the answerless row, no votes) an earlier first member.
        key = arriving & count_one
        key += old
        if need_best:
            low = old & field_mask
            arrived = arriving & field_mask
            change = arrived - low  # modular: added back only where it is a rise
            low |= 1
            change *= arrived > low
            key += change
        np.maximum(key, arriving, out=key)
        keys[slot] = key
        if need_second:
            # A group other than the leader: the runner-up becomes the lesser of it and the
            # leader, if more than the runner-up. The leader's own vote changes nothing.
            challenger = np.minimum(key, lead)
            challenger *= old != lead
            np.maximum(second, challenger, out=second)
        np.maximum(lead, key, out=lead)

        if weight is not None:
            assert vote_weight is not None and lead_weight is not None
            assert lead_weight_key is not None
            mine = weight.take(slot)
            mine += np.take(vote_weight, columns, axis=0)
            weight[slot] = mine
            if weighted:
                better = mine > lead_weight
                tie = mine == lead_weight
                tie &= key > lead_weight_key
                better |= tie
                np.maximum(lead_weight, mine, out=lead_weight)
                change = key - lead_weight_key  # modular: the blend below is exact
                change *= better
                lead_weight_key += change
        # The arriving sample's own best field, answerless or not (its group of one).
        alone = best_any[:0]
        if lone is not None or best_seen is not None or boms:
            alone = np.take(best_any, columns, axis=0)
        if lone is not None:
            _keep_earlier(lone, alone * ((arriving >> count_shift) == 0))
        if best_seen is not None:
            _keep_earlier(best_seen, alone)
        if covered is not None:
            covered |= np.take(chunk.correct, columns, axis=0)
        for name, bom_config in boms.items():
            threshold = survival_threshold(taken, bom_config.alpha, bom_config.min_count)
            state = bom_best[name]
            if bom_config.group_score == "mean":
                bom_best[name] = surviving_best(threshold, True, taken)
            elif threshold <= 1:
                # Every group survives (and has since the start: the threshold never falls), so
                # the arriving sample competes on its own rank, answerless or not.
                _keep_earlier(state, alone)
            elif threshold != bom_threshold[name]:
                bom_best[name] = surviving_best(threshold, False, taken)
            else:
                votes = key >> count_shift
                joins = key & field_mask
                joins *= votes >= threshold
                if ties:
                    # A group surviving from now on may hold, at the state's level, a member
                    # drawn before the state's: only the draw order can tell. Few lanes have
                    # a group at exactly the threshold, so only those are looked at.
                    at = np.flatnonzero(votes == threshold)
                    flat = state.reshape(-1)
                    joined, held = joins.reshape(-1)[at], flat[at]
                    clash = (joined >> 1) == (held >> 1)
                    clash &= ((joined ^ held) & 1) == 1
                    mixed = at[clash]
                    if mixed.size:
                        flat[mixed] = earliest(mixed, flat[mixed] >> 1, taken, counted(threshold))
                _keep_earlier(state, joins)
            bom_threshold[name] = threshold

        if need_runs:
            run_length *= slot == previous
            run_length += 1
            run_length *= arriving >> count_shift  # an answerless sample breaks the run
            previous = slot
        for name, adaptive_config in adaptives.items():
            lanes_of = stopping[name]
            if taken % adaptive_config.batch_size != 0 or lanes_of.live_total == 0:
                continue
            picks = lanes_of.view(lead)
            if adaptive_config.rule == "beta":
                seconds = lanes_of.view(second) >> count_shift
                stops = (picks >> count_shift) >= np.take(beta_tables[name], seconds)
            else:
                stops = lanes_of.view(run_length) >= adaptive_config.batch_size
                if adaptive_config.answer == "window":
                    picks = lanes_of.view(key)  # the group the unanimous window voted for
            lanes_of.settle(stops, taken, picks)
        for name, ahead_config in aheads.items():
            lanes_of = stopping[name]
            if lanes_of.live_total == 0:
                continue
            picks = lanes_of.view(lead)
            lead_by = picks >> count_shift
            lead_by -= lanes_of.view(second) >> count_shift
            lanes_of.settle(lead_by >= ahead_config.margin, taken, picks)

        if wanted[step]:
            _tally(step, specs, totals, lead, layout, lead_weight_key, bom_best, scratch)
            for name in coverages:
                assert covered is not None
                totals[name][step] = _per_problem(covered)
            for name in bests:
                assert best_seen is not None
                np.bitwise_and(best_seen, 1, out=scratch)
                totals[name][step] = _count_bits(scratch, 1)
            for name, lanes_of in stopping.items():
                totals[name][step] = lanes_of.right_now(lead, scratch)
                drawn[name][step] = lanes_of.stopped_samples + lanes_of.live_count * taken
    return totals, drawn


def _per_problem(hits: BoolArray) -> IntArray:
    """Lanes set per problem of (S, P) flags. Summing bytes into a narrow type is several times
    faster than count_nonzero or a sum that widens each byte to 64 bits."""
    narrow = np.uint16 if hits.shape[0] < 2**16 else np.int64
    counts: IntArray = hits.view(np.uint8).sum(axis=0, dtype=narrow).astype(np.int64)
    return counts


def _count_bits(masked: npt.NDArray[Any], bit: int) -> IntArray:
    """Lanes per problem of (S, P) keys masked to one bit ``bit`` (each 0 or ``bit``), summed in
    the keys' own type where it cannot overflow (a widening sum costs several times as much)."""
    fits = masked.shape[0] * bit < 2 ** (8 * masked.dtype.itemsize)
    total = masked.sum(axis=0, dtype=masked.dtype if fits else np.uint64)
    counts: IntArray = (total // bit).astype(np.int64)
    return counts


def _keep_earlier(state: npt.NDArray[Any], arriving: npt.NDArray[Any]) -> None:
    """``state`` takes ``arriving`` best fields only at a strictly higher level (in place)."""
    arriving = arriving * (arriving > (state | 1))
    np.maximum(state, arriving, out=state)


def _mixed_ties(chunk: _Chunk) -> bool:
    """Whether some problem has a right and a wrong sample of equal score: only then does the
    order between equal scores change a pick's correctness."""
    assert chunk.levels is not None
    n, problems = chunk.levels.shape
    block = (chunk.levels + np.arange(problems)[None, :] * n).ravel()
    sizes = np.bincount(block, minlength=n * problems)
    right = np.bincount(block, weights=chunk.correct.ravel(), minlength=n * problems)
    return bool(((right > 0) & (right < sizes)).any())


def _tally(
    step: int,
    specs: Mapping[str, OfflineSpec],
    totals: dict[str, IntArray],
    lead: npt.NDArray[Any],
    layout: _Layout,
    lead_weight_key: npt.NDArray[Any] | None,
    bom_best: Mapping[str, npt.NDArray[Any]],
    scratch: npt.NDArray[Any],
) -> None:
    """Per problem, the lanes whose pick is correct now, for the fixed-sample voting strategies.

    ``scratch`` (S, P) takes each strategy's masked keys in turn (one pass, no new array)."""
    majority_right = None
    for name, config in specs.items():
        if isinstance(config, MajorityConfig) and not config.weighted:
            if majority_right is None:
                np.bitwise_and(lead, layout.first_bit, out=scratch)
                majority_right = _count_bits(scratch, layout.first_bit)
            totals[name][step] = majority_right
        elif isinstance(config, MajorityConfig):
            assert lead_weight_key is not None
            np.bitwise_and(lead_weight_key, 1, out=scratch)
            totals[name][step] = _count_bits(scratch, 1)
        elif isinstance(config, BestOfMajorityConfig):
            chosen = bom_best[name]
            empty = chosen == 0
            if empty.any():  # no group survives: the mode's best member
                chosen = np.where(empty, lead & ((1 << layout.best_width) - 1), chosen)
            np.bitwise_and(chosen, 1, out=scratch)
            totals[name][step] = _count_bits(scratch, 1)


def _random_orders(rng: np.random.Generator, subsets: int, n: int) -> IntArray:
    return np.argsort(rng.random((subsets, n)), axis=1).astype(np.int64)


def _check_orders(orders: IntArray, n: int) -> None:
    if orders.ndim != 2 or orders.shape[1] != n:
        raise ConfigError(f"orders must have shape (subsets, {n}), got {orders.shape}")
    if not (np.sort(orders, axis=1) == np.arange(n)[None, :]).all():
        raise ConfigError("every row of orders must be a permutation of 0..N-1")


Problem = tuple[IntArray, BoolArray, FloatArray | None]


def evaluate(
    answers: Sequence[Any] | npt.ArrayLike,
    correct: Sequence[Any] | npt.ArrayLike,
    scores: Sequence[Any] | npt.ArrayLike | None = None,
    strategies: Mapping[str, OfflineSpec] | Sequence[str] | None = None,
    *,
    ks: Sequence[int] | npt.ArrayLike | None = None,
    subsets: int = 100,
    seed: int = 0,
    orders: npt.ArrayLike | None = None,
    traces: Sequence[Sequence[StoredTrace]] | None = None,
    workers: int | None = None,
) -> OfflineResult:
    """Expected top-1 accuracy of each strategy at each budget k, from stored samples.

    ``answers``, ``correct`` and ``scores`` hold one row per problem (a 2-D array, or a list of
    1-D arrays of any lengths; budgets then run up to the shortest). ``strategies`` maps names to
    configs (or lists names of :data:`DEFAULT_STRATEGIES`); by default every default strategy that
    the data allows (score-based ones need scores). ``ks`` defaults to every k from 1 to N.
    ``subsets`` random orders per problem (seeded by ``seed``) are averaged. ``orders`` (an
    (S, N) array of permutations) replays those orders for every strategy instead (the module
    docstring says what each mode computes).

    ``traces`` (per problem, its samples' :class:`~ttscale.strategies.deepconf.StoredTrace` in
    the order of ``answers``: token confidences and completion tokens) lets DeepConf run
    (:data:`TRACE_STRATEGIES`; any :class:`DeepConfConfig` by name): at budget k, its cap of
    ``samples``, over :data:`DEEPCONF_ORDERS` random orders per problem (or the ``orders``
    given), with a warm-up of at most k; the answers voted on are those of ``answers``.
    ``per_problem_tokens`` holds the completion tokens it spent (online: cut where its rule would
    have closed the stream).

    ``workers`` threads scan groups of problems at once (default: the CPUs this process may use,
    at most :data:`MAX_WORKERS`); the results do not depend on it.
    """
    workers = _resolve_workers(workers)
    # A (P, N) array of answers is read as one table, without a small array per problem.
    table = _as_table(answers, correct, scores) if traces is None else None
    problems = _as_problem_arrays(answers, correct, scores) if table is None else []
    count = len(table[0]) if table is not None else len(problems)
    has_scores = scores is not None
    specs = _resolve_specs(strategies, has_scores, traces is not None)
    streams = _check_traces(traces, problems) if traces is not None else None
    confident = {name: s for name, s in specs.items() if isinstance(s, DeepConfConfig)}
    specs = {name: s for name, s in specs.items() if name not in confident}
    shortest = table[0].shape[1] if table is not None else min(p[0].size for p in problems)
    budgets = np.arange(1, shortest + 1) if ks is None else _budgets(ks, shortest)
    if subsets < 1:
        raise ConfigError(f"subsets must be >= 1, got {subsets}")
    replay = orders is not None
    chosen_orders = np.asarray(orders, dtype=np.int64) if replay else None
    by_length: dict[int, list[int]] = {shortest: list(range(count))} if table is not None else {}
    for number, problem in enumerate(problems):
        by_length.setdefault(problem[0].size, []).append(number)

    rng = np.random.default_rng(seed)
    shape = (count, budgets.size)
    per_problem: dict[str, FloatArray] = {}
    per_samples: dict[str, FloatArray] = {}
    for n in sorted(by_length):
        members = by_length[n]
        group = table if table is not None else _stack([problems[number] for number in members])
        if chosen_orders is not None:
            group_orders = chosen_orders
            _check_orders(group_orders, n)
        else:
            group = _relabel(group, rng)
            group_orders = _random_orders(rng, subsets, n)
        part_acc, part_used = _evaluate_group(group, specs, budgets, group_orders, replay, workers)
        whole = len(members) == count  # the usual case: no copy
        for into, part in ((per_problem, part_acc), (per_samples, part_used)):
            for name, curve in part.items():
                if whole:
                    into[name] = curve
                else:
                    into.setdefault(name, np.zeros(shape))[members] = curve
    # A strategy that always draws k has drawn k on every problem: one read-only row, no copies.
    drew_k = np.broadcast_to(budgets.astype(np.float64), shape)
    per_samples = {name: per_samples.get(name, drew_k) for name in specs}

    lanes = int(chosen_orders.shape[0]) if chosen_orders is not None else subsets
    errors = {
        name: standard_errors(per_problem[name], 0 if replay or _closed_form(spec) else lanes)
        for name, spec in specs.items()
    }
    per_tokens: dict[str, FloatArray] = {}
    if confident:
        assert streams is not None
        # Its own random stream, so the other curves stay as they are; one set of orders for
        # every DeepConf config, so that two of them compare paired.
        rng = np.random.default_rng((seed, 19))
        drawn = [
            list(chosen_orders)
            if chosen_orders is not None
            else [rng.permutation(answers.size) for _ in range(DEEPCONF_ORDERS)]
            for answers, _, _ in problems
        ]
        for name, config in confident.items():
            values = _deepconf_values(problems, streams, config, budgets, drawn)
            per_problem[name], per_samples[name], per_tokens[name] = values
            count = 0 if replay else DEEPCONF_ORDERS
            errors[name] = standard_errors(per_problem[name], count)
    return OfflineResult(
        ks=budgets,
        accuracy={name: values.mean(axis=0) for name, values in per_problem.items()},
        samples_used={name: values.mean(axis=0) for name, values in per_samples.items()},
        problems=count,
        subsets=lanes,
        per_problem=per_problem,
        per_problem_samples=per_samples,
        per_problem_tokens=per_tokens,
        se={name: pair[0] for name, pair in errors.items()},
        mc_se={name: pair[1] for name, pair in errors.items()},
        method="replay" if replay else "expected",
    )


def _resolve_workers(workers: int | None) -> int:
    if workers is None:
        try:
            available = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            available = os.cpu_count() or 1
        return max(1, min(available, MAX_WORKERS))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a whole number >= 1, got {workers!r}")
    return workers


def _closed_form(spec: OfflineSpec) -> bool:
    return isinstance(spec, PassAtK | BestOfNConfig)


_Group = tuple[IntArray, BoolArray, FloatArray | None]
"""Problems with one sample count as (P, N) arrays: answers, correctness, scores."""


def _stack(problems: list[Problem]) -> _Group:
    answers = np.stack([problem[0] for problem in problems])
    correct = np.stack([problem[1] for problem in problems])
    graded = [problem[2] for problem in problems]
    scores = None if graded[0] is None else np.stack(graded)  # type: ignore[arg-type]
    return answers, correct, scores


def _relabel(group: _Group, rng: np.random.Generator) -> _Group:
    """Each problem's samples in a random stored order (its orders' ``relabel_p``)."""
    answers, correct, scores = group
    orders = rng.permuted(np.tile(np.arange(answers.shape[1]), (len(answers), 1)), axis=1)

    def moved(table: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.take_along_axis(table, orders, axis=1)

    return moved(answers), moved(correct), moved(scores) if scores is not None else None


def _resolve_specs(
    strategies: Mapping[str, OfflineSpec] | Sequence[str] | None,
    has_scores: bool,
    has_traces: bool = False,
) -> dict[str, OfflineSpec]:
    if strategies is None:
        known = {**DEFAULT_STRATEGIES, **(TRACE_STRATEGIES if has_traces else {})}
        return {name: spec for name, spec in known.items() if has_scores or not _needs_scores(spec)}
    if not isinstance(strategies, Mapping):
        named = {**DEFAULT_STRATEGIES, **TRACE_STRATEGIES}
        unknown = [name for name in strategies if name not in named]
        if unknown:
            raise ConfigError(f"strategies: unknown name(s) {unknown}; known: {', '.join(named)}")
        strategies = {name: named[name] for name in strategies}
    specs = dict(strategies)
    for name, spec in specs.items():
        if not isinstance(
            spec,
            PassAtK
            | BestOfNConfig
            | MajorityConfig
            | BestOfMajorityConfig
            | AdaptiveConfig
            | AheadByKConfig
            | DeepConfConfig,
        ):
            raise ConfigError(f"strategies: {name!r} has no offline evaluation ({spec!r})")
        if isinstance(spec, StrategyConfig) and spec.k != 1:
            raise ConfigError(f"strategies: {name!r} has k={spec.k}; offline scores top-1 only")
        if _needs_scores(spec) and not has_scores:
            raise ConfigError(f"strategies: {name!r} needs scores")
        if isinstance(spec, DeepConfConfig) and not has_traces:
            raise ConfigError(
                f"strategies: {name!r} needs every sample's token logprobs (traces=; a run "
                "drawn with ttscale solve --logprobs 20 keeps them)"
            )
    return specs


def _check_traces(
    traces: Sequence[Sequence[StoredTrace]], problems: list[Problem]
) -> list[list[StoredTrace]]:
    """Each problem's traces, checked against its samples, carrying its answer ids (so that two
    equal answers vote together however they were written)."""
    if len(traces) != len(problems):
        raise DataError(f"{len(problems)} problems of answers but {len(traces)} of traces")
    checked = []
    for number, (row, (answers, _, _)) in enumerate(zip(traces, problems, strict=True)):
        if len(row) != answers.size:
            raise DataError(f"problem {number}: {len(row)} traces for {answers.size} samples")
        checked.append(
            [
                StoredTrace(str(answer) if answer >= 0 else None, trace.confidences, trace.tokens)
                for trace, answer in zip(row, answers.tolist(), strict=True)
            ]
        )
    return checked


def _deepconf_values(
    problems: list[Problem],
    streams: list[list[StoredTrace]],
    config: DeepConfConfig,
    budgets: IntArray,
    orders: list[list[IntArray]],
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """DeepConf's per-problem accuracy, samples and completion tokens at every budget: (P, K)
    each, the mean over each problem's ``orders`` of a replay capped at k (see
    :func:`evaluate`)."""
    replay = simulate_online if config.mode == "online" else simulate_offline
    capped = [
        dataclasses.replace(config, samples=int(k), warmup=min(config.warmup, int(k)))
        for k in budgets
    ]
    shape = (len(problems), budgets.size)
    accuracy, samples, tokens = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for number, ((answers, right, _), traces) in enumerate(zip(problems, streams, strict=True)):
        drawn = orders[number]
        _check_orders(np.asarray(drawn), answers.size)
        good = {str(a) for a in answers[right & (answers >= 0)].tolist()}
        for order in drawn:
            ordered = [traces[i] for i in order.tolist()]
            for column, cap in enumerate(capped):
                outcome = replay(ordered[: cap.samples], cap)
                accuracy[number, column] += outcome.answer in good
                samples[number, column] += outcome.samples
                tokens[number, column] += outcome.tokens
        for values in (accuracy, samples, tokens):
            values[number] /= len(drawn)
    return accuracy, samples, tokens


def _needs_scores(spec: OfflineSpec) -> bool:
    return isinstance(spec, _NEEDS_SCORES) or (isinstance(spec, MajorityConfig) and spec.weighted)


def _evaluate_group(
    group: _Group,
    specs: Mapping[str, OfflineSpec],
    budgets: IntArray,
    orders: IntArray,
    replay: bool,
    workers: int = 1,
) -> tuple[dict[str, FloatArray], dict[str, FloatArray]]:
    """Per-problem accuracy (P, K) of problems with one sample count, and the samples drawn by
    the strategies that stop early (the others draw k)."""
    answers, correct, scores = group
    problems, n = answers.shape
    sums_scores = any(
        (isinstance(spec, MajorityConfig) and spec.weighted)
        or (isinstance(spec, BestOfMajorityConfig) and spec.group_score == "mean")
        for spec in specs.values()
    )
    if sums_scores and scores is not None and not (np.isfinite(scores) & (scores >= 0)).all():
        # Running sums stay monotone only for non-negative weights, which the O(1) update needs.
        raise DataError("weighted majority and mean group scores need finite scores >= 0 offline")
    steps = budgets - 1
    closed = {
        name: spec
        for name, spec in specs.items()
        if isinstance(spec, PassAtK | BestOfNConfig) and not replay
    }
    scanned = {name: spec for name, spec in specs.items() if name not in closed}
    stopping = [n for n, s in scanned.items() if isinstance(s, AdaptiveConfig | AheadByKConfig)]
    wanted = np.zeros(n, dtype=bool)
    wanted[steps] = True
    bounds = _chunk_bounds(answers, orders.shape[0], workers) if scanned else []

    def closed_curves() -> dict[str, FloatArray]:
        return {name: _closed_curve(c, correct, scores, budgets) for name, c in closed.items()}

    accuracy: dict[str, FloatArray] = {name: np.empty((problems, steps.size)) for name in scanned}
    used: dict[str, FloatArray] = {name: np.empty((problems, steps.size)) for name in stopping}
    lanes = orders.shape[0]

    def scan(bound: tuple[int, int]) -> None:
        """One chunk's counts, written into its rows at once (chunks' rows are disjoint)."""
        start, stop = bound
        totals, drawn = _scan(
            _make_chunk(answers, correct, scores, start, stop), orders, scanned, wanted
        )
        for name in scanned:
            accuracy[name][start:stop] = totals[name][steps].T / lanes
        for name in stopping:
            used[name][start:stop] = drawn[name][steps].T / lanes

    # numpy releases the GIL inside each call, so chunks scanned on threads overlap on several
    # cores (a chunk's state stays within the cache budget either way), and the closed forms
    # are computed meanwhile.
    if workers > 1 and bounds:
        with ThreadPoolExecutor(max_workers=min(workers, len(bounds))) as pool:
            running = [pool.submit(scan, bound) for bound in bounds]
            accuracy.update(closed_curves())
            for job in running:
                job.result()  # raises what the chunk's scan raised
    else:
        accuracy.update(closed_curves())
        for bound in bounds:
            scan(bound)
    return accuracy, used


def _chunk_bounds(
    answers: IntArray, lanes_per_problem: int, pieces: int = 1
) -> list[tuple[int, int]]:
    """Runs of problems whose per-answer state stays within the memory budget together, and at
    least ``pieces`` runs (of about equal size) where there are that many problems."""
    distinct_per_problem = answers.max(axis=1) + 1
    most = max(1, -(-len(answers) // max(pieces, 1)))
    bounds = []
    start = 0
    while start < len(answers):
        stop = start + 1
        width = int(distinct_per_problem[start]) + 1
        while stop < len(answers) and stop - start < most:
            wider = max(width, int(distinct_per_problem[stop]) + 1)
            if (stop + 1 - start) * lanes_per_problem * wider > _STATE_BUDGET:
                break
            width = wider
            stop += 1
        bounds.append((start, stop))
        start = stop
    return bounds


def _closed_curve(
    spec: OfflineSpec, correct: BoolArray, scores: FloatArray | None, budgets: IntArray
) -> FloatArray:
    """Per-problem pass@k or best-of-N at each budget, (P, K): exact expectations."""
    if isinstance(spec, PassAtK):
        return per_problem_pass_at_k_curve(correct.sum(axis=1), correct.shape[1], budgets)
    assert scores is not None
    return per_problem_best_of_n(correct, scores, budgets)


def _make_chunk(
    answers: IntArray,
    correct: BoolArray,
    scores: FloatArray | None,
    start: int,
    stop: int,
) -> _Chunk:
    """Problems ``start:stop`` laid out for :func:`_scan` (score levels are computed here, so
    that chunks on threads share that work too)."""
    levels = _score_levels(scores[start:stop]) if scores is not None else None
    chunk_answers = answers[start:stop]
    distinct = int(chunk_answers.max()) + 1 if chunk_answers.size else 0
    dense = np.where(chunk_answers < 0, distinct, chunk_answers)
    return _Chunk(
        answers=np.ascontiguousarray(dense.T),
        correct=np.ascontiguousarray(correct[start:stop].T),
        scores=np.ascontiguousarray(scores[start:stop].T) if scores is not None else None,
        levels=np.ascontiguousarray(levels[0].T) if levels is not None else None,
        score_by_level=levels[1] if levels is not None else None,
        distinct=max(distinct, 0),
    )
