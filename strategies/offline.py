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
from ttscale.strategies.offline_parallel import (
    Mode,
    can_fork,
    check_mode,
    choose_mode,
    run_jobs,
)
from ttscale.strategies.offline_scan import (
    LANE_BUDGET,
    STATE_BUDGET,
    BoolArray,
    FloatArray,
    IntArray,
    OfflineSpec,
    PassAtK,
    keyed_scores,
    make_chunk,
    scan,
)

__all__ = [
    "DEFAULT_STRATEGIES",
    "OfflineResult",
    "PassAtK",
    "best_of_n_curve",
    "chunk_bounds",
    "encode_answers",
    "evaluate",
    "pass_at_k_curve",
    "per_problem_best_of_n",
    "per_problem_pass_at_k_curve",
    "tie_shares",
]

Method = Literal["expected", "replay"]

MAX_WORKERS = 8
"""The most threads :func:`evaluate` scans with by default."""


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


def tie_shares(correct: npt.ArrayLike, scores: npt.ArrayLike) -> FloatArray:
    """(P, N) in rank order (best score first): each sample's block's share of correct samples.

    A block is the samples of one problem with equal scores (NaN equal to -inf).
    """
    right = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    keyed = keyed_scores(np.atleast_2d(np.asarray(scores, dtype=np.float64)))
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
    parallel: Mode = "auto",
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

    ``workers`` scan groups of problems at once (default: the CPUs this process may use, at most
    :data:`MAX_WORKERS`): forked processes for large work where forking is safe, else threads
    (``parallel`` may insist on either; :mod:`ttscale.strategies.offline_parallel` says why). The
    results depend on neither.
    """
    workers = _resolve_workers(workers)
    check_mode(parallel)  # before any work
    # A (P, N) array of answers is read as one table, without a small array per problem.
    table = _as_table(answers, correct, scores) if traces is None else None
    problems = _as_problem_arrays(answers, correct, scores) if table is None else []
    count = len(table[0]) if table is not None else len(problems)
    specs = _resolve_specs(strategies, scores is not None, traces is not None)
    streams = _check_traces(traces, problems) if traces is not None else None
    confident = {name: s for name, s in specs.items() if isinstance(s, DeepConfConfig)}
    specs = {name: s for name, s in specs.items() if name not in confident}
    shortest = table[0].shape[1] if table is not None else min(p[0].size for p in problems)
    budgets = np.arange(1, shortest + 1) if ks is None else _budgets(ks, shortest)
    if subsets < 1:
        raise ConfigError(f"subsets must be >= 1, got {subsets}")
    replay = orders is not None
    chosen_orders = np.asarray(orders, dtype=np.int64) if replay else None
    by_length = {shortest: list(range(count))} if table is not None else _by_length(problems)
    shape = (count, budgets.size)
    rng = np.random.default_rng(seed)
    run = _Run(specs, budgets, chosen_orders, subsets, (workers, parallel), shape, rng)
    for _length, members in sorted(by_length.items()):
        run.scan_group(
            table if table is not None else _stack([problems[i] for i in members]), members
        )
    lanes = int(chosen_orders.shape[0]) if chosen_orders is not None else subsets
    errors = run.standard_errors(lanes)
    per_tokens: dict[str, FloatArray] = {}
    if confident:
        assert streams is not None
        for name, values in _deepconf_curves(
            problems, streams, confident, budgets, chosen_orders, seed
        ).items():
            run.per_problem[name], run.per_samples[name], per_tokens[name] = values
            errors[name] = standard_errors(values[0], 0 if replay else DEEPCONF_ORDERS)
    return OfflineResult(
        ks=budgets,
        accuracy={name: values.mean(axis=0) for name, values in run.per_problem.items()},
        samples_used={name: values.mean(axis=0) for name, values in run.per_samples.items()},
        problems=count,
        subsets=lanes,
        per_problem=run.per_problem,
        per_problem_samples=run.per_samples,
        per_problem_tokens=per_tokens,
        se={name: pair[0] for name, pair in errors.items()},
        mc_se={name: pair[1] for name, pair in errors.items()},
        method="replay" if replay else "expected",
    )


def _by_length(problems: list[Problem]) -> dict[int, list[int]]:
    """The problems' numbers by their sample counts."""
    by_length: dict[int, list[int]] = {}
    for number, problem in enumerate(problems):
        by_length.setdefault(problem[0].size, []).append(number)
    return by_length


@dataclass
class _Run:
    """One evaluation's per-problem results, filled a group of equal sample counts at a time."""

    specs: Mapping[str, OfflineSpec]
    budgets: IntArray
    orders: IntArray | None
    subsets: int
    workers: tuple[int, Mode]  # how many, and on what
    shape: tuple[int, int]
    rng: np.random.Generator  # the random orders of every group, one stream
    per_problem: dict[str, FloatArray] = field(default_factory=dict)
    per_samples: dict[str, FloatArray] = field(default_factory=dict)

    def scan_group(self, group: _Group, members: list[int]) -> None:
        """Evaluate the problems ``members`` (``group``, one sample count) into the results."""
        n = group[0].shape[1]
        if self.orders is not None:
            group_orders = self.orders
            _check_orders(group_orders, n)
        else:
            group = _relabel(group, self.rng)
            group_orders = _random_orders(self.rng, self.subsets, n)
        replay = self.orders is not None
        parts = _evaluate_group(
            group, self.specs, self.budgets, group_orders, replay, *self.workers
        )
        whole = len(members) == self.shape[0]  # the usual case: no copy
        for into, part in zip((self.per_problem, self.per_samples), parts, strict=True):
            for name, curve in part.items():
                if whole:
                    into[name] = curve
                else:
                    into.setdefault(name, np.zeros(self.shape))[members] = curve
        # A strategy that always draws k has drawn k on every problem: one read-only row.
        drew_k = np.broadcast_to(self.budgets.astype(np.float64), self.shape)
        for name in self.specs:
            self.per_samples.setdefault(name, drew_k)

    def standard_errors(self, lanes: int) -> dict[str, tuple[FloatArray, FloatArray]]:
        """Each strategy's standard errors (:func:`standard_errors`) over its ``lanes`` orders
        (none for exact values: closed forms, replayed orders)."""
        return {
            name: standard_errors(
                self.per_problem[name],
                0 if self.orders is not None or _closed_form(spec) else lanes,
            )
            for name, spec in self.specs.items()
        }


def _deepconf_curves(
    problems: list[Problem],
    streams: list[list[StoredTrace]],
    confident: Mapping[str, DeepConfConfig],
    budgets: IntArray,
    orders: IntArray | None,
    seed: int,
) -> dict[str, tuple[FloatArray, FloatArray, FloatArray]]:
    """Each DeepConf config's per-problem accuracy, samples and tokens (see :func:`evaluate`)."""
    # Its own random stream, so the other curves stay as they are; one set of orders for
    # every DeepConf config, so that two of them compare paired.
    rng = np.random.default_rng((seed, 19))
    drawn = [
        list(orders)
        if orders is not None
        else [rng.permutation(answers.size) for _ in range(DEEPCONF_ORDERS)]
        for answers, _, _ in problems
    ]
    return {
        name: _deepconf_values(problems, streams, config, budgets, drawn)
        for name, config in confident.items()
    }


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
    parallel: Mode = "auto",
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
    bounds = chunk_bounds(answers, orders.shape[0], workers) if scanned else []

    accuracy: dict[str, FloatArray] = {name: np.empty((problems, steps.size)) for name in scanned}
    used: dict[str, FloatArray] = {name: np.empty((problems, steps.size)) for name in stopping}
    lanes = orders.shape[0]

    def scan_chunk(bound: tuple[int, int]) -> tuple[list[FloatArray], list[FloatArray]]:
        """One chunk's accuracy and samples drawn, (chunk problems, K) per strategy."""
        totals, drawn = scan(make_chunk(answers, correct, scores, *bound), orders, scanned, wanted)
        return (
            [totals[name][steps].T / lanes for name in scanned],
            [drawn[name][steps].T / lanes for name in stopping],
        )

    def closed_curves() -> None:
        accuracy.update(
            {name: _closed_curve(c, correct, scores, budgets) for name, c in closed.items()}
        )

    jobs = [functools.partial(scan_chunk, bound) for bound in bounds]
    mode = choose_mode(parallel, answers.size * lanes, min(workers, len(jobs)), can_fork(), n)
    # Chunks' rows are disjoint: each chunk's values are written into its rows.
    for (start, stop), (rights, draws) in zip(
        bounds, run_jobs(jobs, mode, workers, meanwhile=closed_curves), strict=True
    ):
        for name, values in zip(scanned, rights, strict=True):
            accuracy[name][start:stop] = values
        for name, values in zip(stopping, draws, strict=True):
            used[name][start:stop] = values
    return accuracy, used


def chunk_bounds(
    answers: IntArray, lanes_per_problem: int, pieces: int = 1
) -> list[tuple[int, int]]:
    """Runs of problems whose per-answer and per-lane state stay within the memory budgets
    together, and at least ``pieces`` runs (of about equal size) where there are that many
    problems."""
    distinct_per_problem = answers.max(axis=1) + 1
    most = max(1, -(-len(answers) // max(pieces, 1)))
    bounds = []
    start = 0
    while start < len(answers):
        stop = start + 1
        width = int(distinct_per_problem[start]) + 1
        while stop < len(answers) and stop - start < most:
            wider = max(width, int(distinct_per_problem[stop]) + 1)
            lanes = (stop + 1 - start) * lanes_per_problem
            if lanes * wider > STATE_BUDGET or lanes > LANE_BUDGET:
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
