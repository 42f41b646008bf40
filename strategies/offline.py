"""Offline evaluation: every strategy's expected accuracy at every budget k from stored samples.

Input per problem: the N stored samples' answers (int ids or strings; a negative id or ``None``
means no answer could be extracted), whether each is correct, and optionally each one's verifier
score. Output: for every budget k <= N and every strategy, the accuracy of the strategy's top-1
selection averaged over problems and over random k-subsets of the samples, never over "the first k".

- ``pass_at_k`` (coverage: any of the k correct) and ``best_of_n`` have closed forms and are exact:
  pass@k = 1 - C(N - c, k) / C(N, k); best-of-N sorts the samples by (score desc, index asc), a
  total order, so the subset's best is the sample of rank r with probability
  C(N - 1 - r, k - 1) / C(N, k), and the expectation is one matrix product for all k.
- The voting strategies are averaged over ``subsets`` random orders of the samples: the first k of a
  uniformly random order is a uniformly random k-subset, so one pass over an order gives a subset
  for every k. The same orders serve every problem (the samples of one problem are exchangeable,
  so sharing orders between problems leaves each problem's estimate unbiased). The pass keeps
  running vote counts for all (problem, order) lanes at once in numpy, and updates each lane's
  winner in O(1) per sample: within a step only one answer's key changes, and only for the better.
- ``adaptive`` and ``ahead_by_k`` run their stopping rule along each order; budget k is their cap,
  and :attr:`OfflineResult.samples_used` holds the mean samples they drew.

Strategies are given by their online configs (:class:`MajorityConfig` and so on), so the same
settings drive both; options about drawing (``samples``, ``params``, ``extractor``) do not apply
here. Ties break exactly as online (by lowest sample index), so at k = N the order-free strategies
give exactly the online result on all N samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ttscale.errors import ConfigError, DataError
from ttscale.strategies.adaptive import AdaptiveConfig
from ttscale.strategies.ahead_by_k import AheadByKConfig
from ttscale.strategies.base import StrategyConfig
from ttscale.strategies.best_of_majority import BestOfMajorityConfig
from ttscale.strategies.best_of_n import BestOfNConfig
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
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_NEVER = np.iinfo(np.int32).max  # "no such sample/rank yet" in int32 state arrays
# Lanes times distinct answers per chunk: bounds the memory of the per-answer state arrays.
_STATE_BUDGET = 1_500_000


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

_NEEDS_SCORES = (BestOfNConfig, BestOfMajorityConfig)


@dataclass(frozen=True)
class OfflineResult:
    """Accuracy (and mean samples drawn) per budget, one array aligned with ``ks`` per strategy."""

    ks: IntArray
    accuracy: Mapping[str, FloatArray]
    samples_used: Mapping[str, FloatArray]
    problems: int
    subsets: int
    notes: Mapping[str, str] = field(default_factory=dict)

    def at(self, name: str, k: int) -> float:
        """The accuracy of ``name`` at budget ``k``."""
        where = np.flatnonzero(self.ks == k)
        if where.size == 0:
            raise ConfigError(f"budget {k} was not evaluated; ks run {self.ks[0]}..{self.ks[-1]}")
        return float(self.accuracy[name][where[0]])


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


def pass_at_k_curve(correct_counts: npt.ArrayLike, n: int, ks: npt.ArrayLike) -> FloatArray:
    """Mean unbiased pass@k over problems with ``correct_counts`` correct of ``n``, per k."""
    counts = np.asarray(correct_counts, dtype=np.int64)
    budgets = np.asarray(ks, dtype=np.int64)
    log_fact = _log_factorials(n)
    wrong = (n - counts)[None, :]
    k = budgets[:, None]
    fail = np.exp(_log_comb(log_fact, wrong, k) - _log_comb(log_fact, np.full_like(k, n), k))
    result: FloatArray = (1.0 - fail).mean(axis=1)
    return result


def best_of_n_curve(correct_by_rank: npt.ArrayLike, ks: npt.ArrayLike) -> FloatArray:
    """Mean best-of-k accuracy; ``correct_by_rank[p, r]``: is problem p's rank-r sample correct.

    Rank 0 is the best sample by (score desc, index asc). The best of a random k-subset has rank r
    with probability C(N - 1 - r, k - 1) / C(N, k).
    """
    table = np.asarray(correct_by_rank, dtype=np.float64)
    n = table.shape[1]
    budgets = np.asarray(ks, dtype=np.int64)[:, None]
    ranks = np.arange(n, dtype=np.int64)[None, :]
    log_fact = _log_factorials(n)
    weights = np.exp(
        _log_comb(log_fact, n - 1 - ranks, budgets - 1)
        - _log_comb(log_fact, np.full_like(budgets, n), budgets)
    )
    result: FloatArray = (weights @ table.T).mean(axis=1)
    return result


def _ranks(scores: FloatArray) -> IntArray:
    """Per problem row: each sample's rank by (score desc, index asc); NaN scores rank last."""
    keyed = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-keyed, axis=1, kind="stable")  # stable: equal scores keep index order
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :], axis=1)
    return ranks


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
    """Problems scanned together.

    ``answers`` (N, P), transposed so that one step's samples are whole rows: dense ids 0..D-1,
    with D (``distinct``) standing for "no answer". ``ranks`` (N, P) give each sample's rank by
    (score desc, index asc); ``sample_at_rank`` and ``score_by_rank`` are (P, N).
    """

    answers: npt.NDArray[np.int64]
    correct: BoolArray
    scores: FloatArray | None
    ranks: npt.NDArray[np.int64] | None
    sample_at_rank: IntArray | None
    score_by_rank: FloatArray | None
    distinct: int


def _scan(
    chunk: _Chunk,
    orders: IntArray,
    specs: Mapping[str, StrategyConfig],
    wanted: BoolArray,
    totals: dict[str, FloatArray],
    used: dict[str, FloatArray],
) -> None:
    """Add each strategy's correct-count (summed over lanes) at every wanted step to ``totals``.

    A lane is one (order, problem) pair; lanes are laid out (S, P). The vote state of every answer
    of every lane lives in flat arrays indexed by ``lane * width + answer``. A group's key packs
    three fields into one integer, ``count | mask - first index | mask - best rank`` (``bits``
    each), so that "more votes, then lower first index" is a single integer comparison, the group's
    best-scored member comes with it (no second gather), and the answerless column (which starts
    far below zero) can never lead. Selections use in-place masked copies (``np.copyto``), much
    cheaper than ``np.where`` at this size.
    """
    n, problems = chunk.answers.shape
    subsets = orders.shape[0]
    none = chunk.distinct
    width = none + 1
    shape = (subsets, problems)
    lanes = subsets * problems
    bits = max(1, int(n).bit_length())
    if 3 * bits > 62:
        raise ConfigError(f"offline evaluation handles up to {2**20 - 1} samples per problem")
    mask = (1 << bits) - 1
    increment = 1 << bits  # one vote, in the units of the key shifted right by ``bits``
    base = (np.arange(lanes, dtype=np.int64) * width).reshape(shape)
    correct_flat = chunk.correct.ravel()
    problem_offset = (np.arange(problems, dtype=np.int64) * n)[None, :]
    lane_problem_offset = np.tile(np.arange(problems, dtype=np.int64) * n, subsets)
    order_first = mask - orders  # the low bits a sample puts in its group's key

    keys = np.zeros((lanes, width), dtype=np.int64)
    keys[:, none] = -((n + 2) << (2 * bits))  # stays negative after n arrivals: never leads
    keys = keys.ravel()
    lead_key = np.zeros(shape, dtype=np.int64)  # 0: no leader yet
    lead_answer = np.full(shape, -1, dtype=np.int64)
    second_key = np.zeros(shape, dtype=np.int64)

    weighted = [name for name, c in specs.items() if isinstance(c, MajorityConfig) and c.weighted]
    boms = {name: c for name, c in specs.items() if isinstance(c, BestOfMajorityConfig)}
    adaptives = {name: c for name, c in specs.items() if isinstance(c, AdaptiveConfig)}
    aheads = {name: c for name, c in specs.items() if isinstance(c, AheadByKConfig)}
    need_best = bool(weighted or boms)
    need_weight = bool(weighted) or any(c.group_score == "mean" for c in boms.values())
    need_second = bool(aheads) or any(c.rule == "beta" for c in adaptives.values())
    need_runs = any(c.rule == "esc" for c in adaptives.values())
    if need_best and (chunk.ranks is None or chunk.scores is None):
        raise ConfigError("weighted majority and best_of_majority need scores")

    weight = None
    vote_weight = None
    if need_weight:
        assert chunk.scores is not None
        weight = np.zeros(lanes * width, dtype=np.float64)
        # Answerless samples carry -inf so their column can never outweigh a real answer.
        vote_weight = np.where(chunk.answers < none, chunk.scores.T, -np.inf)
    w_leads = {
        name: (np.full(shape, -1.0), np.zeros(shape, dtype=np.int64), np.full(shape, -1))
        for name in weighted
    }
    bom_rank = {name: np.full(shape, _NEVER, dtype=np.int64) for name in boms}
    bom_threshold = dict.fromkeys(boms, 0)
    stop_step = {name: np.full(shape, _NEVER, dtype=np.int64) for name in [*adaptives, *aheads]}
    stop_sample = {name: np.zeros(shape, dtype=np.int64) for name in [*adaptives, *aheads]}
    beta_tables = {
        name: _beta_min_top(n, c.threshold) for name, c in adaptives.items() if c.rule == "beta"
    }
    run_length = np.zeros(shape, dtype=np.int64)
    previous = np.full(shape, -1, dtype=np.int64)

    def right_at(sample: IntArray, present: BoolArray) -> BoolArray:
        found = np.take(correct_flat, problem_offset + sample * present)
        result: BoolArray = present & found
        return result

    def right_by_rank(rank: IntArray) -> BoolArray:
        assert chunk.sample_at_rank is not None
        present = rank < _NEVER
        sample = np.take(chunk.sample_at_rank, problem_offset + rank * present)
        return right_at(sample, present)

    def best_of(key: IntArray) -> IntArray:
        """The best rank held in keys; _NEVER where the key is no group's (no leader)."""
        rank = mask - (key & mask)
        rank[key <= 0] = _NEVER
        return rank

    def bom_recompute(config: BestOfMajorityConfig, threshold: int) -> IntArray:
        """Every lane's winning best rank from scratch (on a threshold change, or for mean)."""
        grid = (lanes, width)
        count = keys.reshape(grid)[:, :-1] >> (2 * bits)
        best = mask - (keys.reshape(grid)[:, :-1] & mask)
        survives = (count >= threshold) & (count > 0)
        # Answerless samples are groups of one; the none column holds their best rank.
        lone_rank = np.where(
            keys.reshape(grid)[:, -1] & mask > 0, mask - (keys.reshape(grid)[:, -1] & mask), _NEVER
        )
        lone = lone_rank if threshold <= 1 else np.full(lanes, _NEVER)
        if config.group_score == "max":
            winner: IntArray = np.minimum(
                np.where(survives, best, _NEVER).min(axis=1, initial=_NEVER), lone
            )
            return winner.reshape(shape)
        assert weight is not None and chunk.score_by_rank is not None
        mean = np.where(survives, weight.reshape(grid)[:, :-1] / np.maximum(count, 1), -np.inf)
        lone_known = lone < _NEVER
        lone_score = np.take(chunk.score_by_rank, lane_problem_offset + lone * lone_known)
        lone_mean = np.where(lone_known, lone_score, -np.inf)
        top = np.maximum(mean.max(axis=1, initial=-np.inf), lone_mean)
        # Ties on the mean go to the group whose best member ranks first.
        tied: IntArray = np.where(survives & (mean == top[:, None]), best, _NEVER).min(
            axis=1, initial=_NEVER
        )
        tied = np.where(lone_known & (lone_mean == top), np.minimum(tied, lone), tied)
        return tied.reshape(shape)

    for step in range(n):
        taken = step + 1  # samples in the prefix
        columns = orders[:, step]  # the sample each order takes now, shared by all problems
        answer = chunk.answers[columns]  # (S, P): whole rows, a cheap gather
        slot = (base + answer).ravel()
        old = np.take(keys, slot).reshape(shape)
        # One more vote; the group's first index becomes min(first, this index) and its best rank
        # min(best, this sample's rank): field-wise maxima of the "mask - value" fields.
        upper = old >> bits
        np.maximum(upper, (upper & ~mask) + order_first[:, step, None], out=upper)
        upper += increment
        key = upper << bits
        rank = None
        if need_best:
            assert chunk.ranks is not None
            rank = chunk.ranks[columns]
            key |= np.maximum(old & mask, mask - rank)
        keys[slot] = key.ravel()
        better = key > lead_key  # the leader's own key always grows, so it stays "better"
        if need_second:
            grown = np.maximum(second_key, key)
            overtaken = better & (answer != lead_answer)
            np.copyto(grown, lead_key, where=overtaken)
            np.copyto(grown, second_key, where=better & ~overtaken)
            second_key = grown
        np.maximum(lead_key, key, out=lead_key)
        np.copyto(lead_answer, answer, where=better)

        group_rank = mask - (key & mask) if need_best else None
        if weight is not None:
            assert vote_weight is not None
            mine = np.take(weight, slot).reshape(shape) + vote_weight[columns]
            weight[slot] = mine.ravel()
            for name in weighted:
                lead_weight, lead_tie, lead_by_weight = w_leads[name]
                w_better = (mine > lead_weight) | ((mine == lead_weight) & (key > lead_tie))
                np.copyto(lead_weight, mine, where=w_better)
                np.copyto(lead_tie, key, where=w_better)
                np.copyto(lead_by_weight, answer, where=w_better)
        for name, bom_config in boms.items():
            assert rank is not None and group_rank is not None
            threshold = survival_threshold(taken, bom_config.alpha, bom_config.min_count)
            if bom_config.group_score == "mean" or threshold != bom_threshold[name]:
                bom_rank[name] = bom_recompute(bom_config, threshold)
                bom_threshold[name] = threshold
            elif threshold <= 1:
                # Every group survives: the arriving sample competes on its own rank.
                np.minimum(bom_rank[name], rank, out=bom_rank[name])
            else:
                joins = (key >> (2 * bits)) >= threshold
                np.copyto(bom_rank[name], group_rank, where=joins & (group_rank < bom_rank[name]))

        if need_runs:
            valid = answer < none
            run_length = np.where(valid & (answer == previous), run_length + 1, valid)
            previous = answer
        for name, adaptive_config in adaptives.items():
            if taken % adaptive_config.batch_size != 0:
                continue
            if adaptive_config.rule == "beta":
                stops = (lead_key >> (2 * bits)) >= beta_tables[name][second_key >> (2 * bits)]
            else:
                stops = run_length >= adaptive_config.batch_size
            fresh = stops & (stop_step[name] == _NEVER)
            np.copyto(stop_step[name], taken, where=fresh)
            np.copyto(stop_sample[name], mask - ((lead_key >> bits) & mask), where=fresh)
        for name, ahead_config in aheads.items():
            lead_by = (lead_key >> (2 * bits)) - (second_key >> (2 * bits))
            stops = lead_by >= ahead_config.margin
            fresh = stops & (stop_step[name] == _NEVER)
            np.copyto(stop_step[name], taken, where=fresh)
            np.copyto(stop_sample[name], mask - ((lead_key >> bits) & mask), where=fresh)

        if not wanted[step]:
            continue
        has_leader = lead_key > 0
        lead_first = mask - ((lead_key >> bits) & mask)
        majority_right = right_at(lead_first, has_leader)
        for name, config in specs.items():
            if isinstance(config, MajorityConfig) and not config.weighted:
                totals[name][step] += np.count_nonzero(majority_right)
            elif isinstance(config, MajorityConfig):
                chosen = best_of(w_leads[name][1])
                totals[name][step] += np.count_nonzero(right_by_rank(chosen))
            elif isinstance(config, BestOfMajorityConfig):
                chosen = bom_rank[name]
                if (chosen == _NEVER).any():  # no group survives: the mode's best member
                    mode = best_of(lead_key)
                    chosen = np.where(chosen < _NEVER, chosen, mode)
                totals[name][step] += np.count_nonzero(right_by_rank(chosen))
            elif isinstance(config, AdaptiveConfig | AheadByKConfig):
                stopped = stop_step[name] <= taken
                if stopped.any():
                    sample = np.where(stopped, stop_sample[name], lead_first)
                    right = right_at(sample, stopped | has_leader)
                else:
                    right = majority_right
                totals[name][step] += np.count_nonzero(right)
                used[name][step] += np.minimum(stop_step[name], taken).sum()


def _random_orders(subsets: int, n: int, seed: int) -> IntArray:
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((subsets, n)), axis=1).astype(np.int64)


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
) -> OfflineResult:
    """Expected top-1 accuracy of each strategy at each budget k, from stored samples.

    ``answers``, ``correct`` and ``scores`` hold one row per problem (a 2-D array, or a list of
    1-D arrays of any lengths; budgets then run up to the shortest). ``strategies`` maps names to
    configs (or lists names of :data:`DEFAULT_STRATEGIES`); by default every default strategy that
    the data allows (score-based ones need scores). ``ks`` defaults to every k from 1 to N.
    ``subsets`` random orders (seeded by ``seed``) are averaged; ``orders`` (an (S, N) array of
    permutations) replaces them, e.g. to replay the order the samples were drawn in.
    """
    problems = _as_problem_arrays(answers, correct, scores)
    has_scores = scores is not None
    specs = _resolve_specs(strategies, has_scores)
    shortest = min(p[0].size for p in problems)
    budgets = np.arange(1, shortest + 1) if ks is None else np.asarray(ks, dtype=np.int64)
    if budgets.ndim != 1 or budgets.size == 0 or budgets.min() < 1 or budgets.max() > shortest:
        raise ConfigError(f"ks must be budgets in 1..{shortest}, got {budgets!r}")
    if subsets < 1:
        raise ConfigError(f"subsets must be >= 1, got {subsets}")

    accuracy = {name: np.zeros(budgets.size) for name in specs}
    samples_used = {name: np.zeros(budgets.size) for name in specs}
    by_length: dict[int, list[tuple[IntArray, BoolArray, FloatArray | None]]] = {}
    for problem in problems:
        by_length.setdefault(problem[0].size, []).append(problem)
    chosen_orders = None if orders is None else np.asarray(orders, dtype=np.int64)

    for n, group in by_length.items():
        share = len(group) / len(problems)
        group_orders = (
            chosen_orders if chosen_orders is not None else _random_orders(subsets, n, seed)
        )
        if group_orders.ndim != 2 or group_orders.shape[1] != n:
            raise ConfigError(f"orders must have shape (subsets, {n}), got {group_orders.shape}")
        if not (np.sort(group_orders, axis=1) == np.arange(n)[None, :]).all():
            raise ConfigError("every row of orders must be a permutation of 0..N-1")
        part_acc, part_used = _evaluate_group(group, specs, budgets, group_orders)
        for name in specs:
            accuracy[name] += share * part_acc[name]
            samples_used[name] += share * part_used[name]
    return OfflineResult(
        ks=budgets,
        accuracy=accuracy,
        samples_used=samples_used,
        problems=len(problems),
        subsets=int(chosen_orders.shape[0]) if chosen_orders is not None else subsets,
    )


def _resolve_specs(
    strategies: Mapping[str, OfflineSpec] | Sequence[str] | None, has_scores: bool
) -> dict[str, OfflineSpec]:
    if strategies is None:
        return {
            name: spec
            for name, spec in DEFAULT_STRATEGIES.items()
            if has_scores or not _needs_scores(spec)
        }
    if not isinstance(strategies, Mapping):
        unknown = [name for name in strategies if name not in DEFAULT_STRATEGIES]
        if unknown:
            raise ConfigError(
                f"strategies: unknown name(s) {unknown}; known: {', '.join(DEFAULT_STRATEGIES)}"
            )
        strategies = {name: DEFAULT_STRATEGIES[name] for name in strategies}
    specs = dict(strategies)
    for name, spec in specs.items():
        if not isinstance(
            spec,
            PassAtK
            | BestOfNConfig
            | MajorityConfig
            | BestOfMajorityConfig
            | AdaptiveConfig
            | AheadByKConfig,
        ):
            raise ConfigError(f"strategies: {name!r} has no offline evaluation ({spec!r})")
        if isinstance(spec, StrategyConfig) and spec.k != 1:
            raise ConfigError(f"strategies: {name!r} has k={spec.k}; offline scores top-1 only")
        if _needs_scores(spec) and not has_scores:
            raise ConfigError(f"strategies: {name!r} needs scores")
    return specs


def _needs_scores(spec: OfflineSpec) -> bool:
    return isinstance(spec, _NEEDS_SCORES) or (isinstance(spec, MajorityConfig) and spec.weighted)


def _evaluate_group(
    group: list[tuple[IntArray, BoolArray, FloatArray | None]],
    specs: Mapping[str, OfflineSpec],
    budgets: IntArray,
    orders: IntArray,
) -> tuple[dict[str, FloatArray], dict[str, FloatArray]]:
    n = group[0][0].size
    answers = np.stack([p[0] for p in group])
    correct = np.stack([p[1] for p in group])
    scores = np.stack([p[2] for p in group]) if group[0][2] is not None else None  # type: ignore[misc]
    ranks = _ranks(scores) if scores is not None else None
    sums_scores = any(
        (isinstance(spec, MajorityConfig) and spec.weighted)
        or (isinstance(spec, BestOfMajorityConfig) and spec.group_score == "mean")
        for spec in specs.values()
    )
    if sums_scores and scores is not None and not (np.isfinite(scores) & (scores >= 0)).all():
        # Running sums stay monotone only for non-negative weights, which the O(1) update needs.
        raise DataError("weighted majority and mean group scores need finite scores >= 0 offline")
    steps = budgets - 1
    accuracy: dict[str, FloatArray] = {}
    used: dict[str, FloatArray] = {}
    scanned: dict[str, StrategyConfig] = {}
    for name, spec in specs.items():
        used[name] = budgets.astype(np.float64)
        if isinstance(spec, PassAtK):
            accuracy[name] = pass_at_k_curve(correct.sum(axis=1), n, budgets)
        elif isinstance(spec, BestOfNConfig):
            assert ranks is not None
            by_rank = np.take_along_axis(correct, np.argsort(ranks, axis=1), axis=1)
            accuracy[name] = best_of_n_curve(by_rank, budgets)
        else:
            scanned[name] = spec
    if not scanned:
        return accuracy, used

    wanted = np.zeros(n, dtype=bool)
    wanted[steps] = True
    distinct_per_problem = answers.max(axis=1) + 1
    lanes_per_problem = orders.shape[0]
    chunks: list[_Chunk] = []
    start = 0
    while start < len(group):
        # Grow the chunk while its per-answer state stays within the memory budget.
        stop = start + 1
        width = int(distinct_per_problem[start]) + 1
        while stop < len(group):
            wider = max(width, int(distinct_per_problem[stop]) + 1)
            if (stop + 1 - start) * lanes_per_problem * wider > _STATE_BUDGET:
                break
            width = wider
            stop += 1
        chunks.append(_make_chunk(answers, correct, scores, ranks, start, stop))
        start = stop

    def scan(chunk: _Chunk) -> tuple[dict[str, FloatArray], dict[str, FloatArray]]:
        totals = {name: np.zeros(n) for name in scanned}
        drawn = {name: np.zeros(n) for name in scanned}
        _scan(chunk, orders, scanned, wanted, totals, drawn)
        return totals, drawn

    # Scanning chunks on threads was measured slower on two cores: the per-step numpy calls are
    # too small for the GIL releases to pay, and the chunks compete for the cache.
    parts = [scan(chunk) for chunk in chunks]
    totals = {name: sum((part[0][name] for part in parts), np.zeros(n)) for name in scanned}
    drawn = {name: sum((part[1][name] for part in parts), np.zeros(n)) for name in scanned}
    lanes = len(group) * lanes_per_problem
    for name, spec in scanned.items():
        accuracy[name] = totals[name][steps] / lanes
        if isinstance(spec, AdaptiveConfig | AheadByKConfig):
            used[name] = drawn[name][steps] / lanes
    return accuracy, used


def _make_chunk(
    answers: IntArray,
    correct: BoolArray,
    scores: FloatArray | None,
    ranks: IntArray | None,
    start: int,
    stop: int,
) -> _Chunk:
    """Problems ``start:stop`` laid out for :func:`_scan`."""
    chunk_answers = answers[start:stop]
    distinct = int(chunk_answers.max()) + 1 if chunk_answers.size else 0
    dense = np.where(chunk_answers < 0, distinct, chunk_answers)
    chunk_ranks = ranks[start:stop] if ranks is not None else None
    rank_order = np.argsort(chunk_ranks, axis=1) if chunk_ranks is not None else None
    return _Chunk(
        answers=np.ascontiguousarray(dense.T),
        correct=correct[start:stop],
        scores=scores[start:stop] if scores is not None else None,
        ranks=np.ascontiguousarray(chunk_ranks.T) if chunk_ranks is not None else None,
        sample_at_rank=rank_order,
        score_by_rank=(
            np.take_along_axis(scores[start:stop], rank_order, axis=1)
            if scores is not None and rank_order is not None
            else None
        ),
        distinct=max(distinct, 0),
    )
