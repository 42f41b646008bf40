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

_NEVER = np.iinfo(np.int32).max  # "never stops" in the Beta rule's table
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
    """Problems scanned together, laid out for :func:`_scan`.

    ``answers``, ``correct``, ``ranks`` and ``scores`` are (N, P), transposed so that one step's
    samples are whole rows. ``answers`` are dense ids 0..D-1, with D (``distinct``) standing for
    "no answer"; ``ranks`` give each sample's rank by (score desc, index asc); ``score_by_rank``
    (P, N) is each problem's scores in rank order.
    """

    answers: IntArray
    correct: BoolArray
    scores: FloatArray | None
    ranks: IntArray | None
    score_by_rank: FloatArray | None
    distinct: int


@dataclass
class _Stopping:
    """A sequential strategy's lanes: which still draw, and sums over the lanes that stopped."""

    live: BoolArray
    live_bit: npt.NDArray[np.unsignedinteger[Any]]  # the first-member bit where live, else 0
    live_count: int
    stopped_right: int = 0
    stopped_samples: int = 0


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
    of every lane lives in flat arrays indexed by ``answer * lanes + lane``: answer-major, so the
    few popular answers' rows stay in cache. A group's key packs three fields into one unsigned
    integer, ``count | first | best``: ``first`` is ``(mask - first index) << 1`` plus whether that
    sample is correct, ``best`` the same for the group's best-ranked member. One integer comparison
    is "more votes, then lower first index" (first indices differ between groups, so ``best`` never
    decides), and whether a lane's pick is correct is a bit of a key: no gather at scoring time.
    The answerless row stays zero (its samples carry no bits), so it can never lead. Every update
    is branch-free (maxima and arithmetic blends), since masked copies with unpredictable masks
    cost several times as much at this size.
    """
    n, problems = chunk.answers.shape
    subsets = orders.shape[0]
    none = chunk.distinct
    shape = (subsets, problems)
    lanes = subsets * problems
    bits = max(1, int(n).bit_length())
    field = bits + 1  # first and best: a position and a correct bit
    count_shift = 2 * field
    if count_shift + bits > 64:
        raise ConfigError(f"offline evaluation handles up to {2**20 - 1} samples per problem")
    key_type: type[np.unsignedinteger[Any]] = np.uint32 if count_shift + bits <= 32 else np.uint64
    mask = (1 << bits) - 1
    field_mask = (1 << field) - 1
    count_mask = mask << field  # the count field in keys shifted right by ``field``
    first_bit = 1 << field  # is the group's first member correct; bit 0: its best member

    weighted = [name for name, c in specs.items() if isinstance(c, MajorityConfig) and c.weighted]
    boms = {name: c for name, c in specs.items() if isinstance(c, BestOfMajorityConfig)}
    adaptives = {name: c for name, c in specs.items() if isinstance(c, AdaptiveConfig)}
    aheads = {name: c for name, c in specs.items() if isinstance(c, AheadByKConfig)}
    need_best = bool(weighted or boms)
    means = any(c.group_score == "mean" for c in boms.values())
    need_weight = bool(weighted) or means
    need_second = bool(aheads) or any(c.rule == "beta" for c in adaptives.values())
    need_runs = any(c.rule == "esc" for c in adaptives.values())
    if need_best and (chunk.ranks is None or chunk.scores is None):
        raise ConfigError("weighted majority and best_of_majority need scores")

    # Per sample, (N, P): its bits in its group's key (zero for answerless samples).
    valid = chunk.answers < none
    index = np.arange(n, dtype=np.int64)[:, None]
    first_field = ((mask - index) << 1) | chunk.correct
    best_field = (
        ((mask - chunk.ranks) << 1) | chunk.correct
        if chunk.ranks is not None
        else np.zeros_like(first_field)
    )
    word = np.where(valid, (1 << count_shift) | (first_field << field) | best_field, 0).astype(
        key_type
    )
    best_any = best_field.astype(key_type)  # answerless samples too: groups of one for BoM
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
    stopping = {
        name: _Stopping(
            live=np.ones(shape, dtype=bool),
            live_bit=np.full(shape, first_bit, dtype=key_type),
            live_count=lanes,
        )
        for name in [*adaptives, *aheads]
    }
    beta_tables = {
        name: _beta_min_top(n, c.threshold).astype(key_type)
        for name, c in adaptives.items()
        if c.rule == "beta"
    }
    run_length = np.zeros(shape, dtype=key_type)
    previous = np.full(shape, -1, dtype=np.int64)
    lane_problem_offset = np.tile(np.arange(problems, dtype=np.int64) * n, subsets)

    def surviving_best(threshold: int, mean_scores: bool) -> npt.NDArray[Any]:
        """Every lane's winning best field from scratch (on a threshold change, or for mean)."""
        grid = keys.reshape(none + 1, lanes)[:none]
        count = grid >> count_shift
        survives = count >= max(threshold, 1)
        best = grid & field_mask
        if not mean_scores:
            # Only called with threshold > 1: answerless groups of one do not survive.
            winner: npt.NDArray[Any] = np.where(survives, best, 0).max(axis=0, initial=0)
            return winner.reshape(shape).astype(key_type)
        assert weight is not None and lone is not None and chunk.score_by_rank is not None
        sums = weight.reshape(none + 1, lanes)[:none]
        mean = np.where(survives, sums / np.maximum(count, 1), -np.inf)
        lone_best = lone.ravel() if threshold <= 1 else np.zeros(lanes, dtype=key_type)
        lone_known = lone_best > 0
        lone_rank = (mask - (lone_best >> 1).astype(np.int64)) * lone_known
        lone_score = np.where(
            lone_known, np.take(chunk.score_by_rank, lane_problem_offset + lone_rank), -np.inf
        )
        top = np.maximum(mean.max(axis=0, initial=-np.inf), lone_score)
        # Ties on the mean go to the group whose best member ranks first.
        tied: npt.NDArray[Any] = np.where(survives & (mean == top[None, :]), best, 0).max(
            axis=0, initial=0
        )
        tied = np.where(lone_known & (lone_score == top), np.maximum(tied, lone_best), tied)
        return tied.reshape(shape).astype(key_type)

    def settle(state: _Stopping, stops: BoolArray, taken: int) -> None:
        stops &= state.live
        fresh = int(np.count_nonzero(stops))
        if fresh:
            state.live ^= stops
            np.multiply(state.live, key_type(first_bit), out=state.live_bit)
            state.stopped_right += int(np.count_nonzero(lead[stops] & first_bit))
            state.stopped_samples += fresh * taken
            state.live_count -= fresh

    for step in range(n):
        taken = step + 1  # samples in the prefix
        columns = orders[:, step]  # the sample each order takes now, shared by all problems
        slot = slot_base[columns]  # (S, P): whole rows, a cheap gather
        slot += lane_offset
        arriving = word[columns]
        old = keys.take(slot)
        # One more vote, and the field-wise maxima of first and best: (count + 1, first) against
        # (count + 1, the arriving sample's first) in one maximum.
        upper = old >> field
        arriving_upper = arriving >> field
        joined = upper & count_mask
        joined += arriving_upper
        upper += arriving_upper & count_mask
        np.maximum(upper, joined, out=upper)
        key = upper << field
        if need_best:
            low = old & field_mask
            np.maximum(low, arriving & field_mask, out=low)
            key |= low
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
            mine += vote_weight[columns]
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
        if lone is not None:
            np.maximum(lone, best_any[columns] * (arriving == 0), out=lone)
        for name, bom_config in boms.items():
            threshold = survival_threshold(taken, bom_config.alpha, bom_config.min_count)
            state = bom_best[name]
            if bom_config.group_score == "mean":
                bom_best[name] = surviving_best(threshold, mean_scores=True)
            elif threshold <= 1:
                # Every group survives (and has since the start: the threshold never falls), so
                # the arriving sample competes on its own rank, answerless or not.
                np.maximum(state, best_any[columns], out=state)
            elif threshold != bom_threshold[name]:
                bom_best[name] = surviving_best(threshold, mean_scores=False)
            else:
                joins = key & field_mask
                joins *= (key >> count_shift) >= threshold
                np.maximum(state, joins, out=state)
            bom_threshold[name] = threshold

        if need_runs:
            run_length *= slot == previous
            run_length += 1
            run_length *= arriving > 0
            previous = slot
        for name, adaptive_config in adaptives.items():
            if taken % adaptive_config.batch_size != 0 or stopping[name].live_count == 0:
                continue
            if adaptive_config.rule == "beta":
                stops = (lead >> count_shift) >= beta_tables[name][second >> count_shift]
            else:
                stops = run_length >= adaptive_config.batch_size
            settle(stopping[name], stops, taken)
        for name, ahead_config in aheads.items():
            if stopping[name].live_count == 0:
                continue
            lead_by = lead >> count_shift
            lead_by -= second >> count_shift
            settle(stopping[name], lead_by >= ahead_config.margin, taken)

        if not wanted[step]:
            continue
        majority_right = None
        for name, config in specs.items():
            if isinstance(config, MajorityConfig) and not config.weighted:
                if majority_right is None:
                    majority_right = int(np.count_nonzero(lead & first_bit))
                totals[name][step] += majority_right
            elif isinstance(config, MajorityConfig):
                assert lead_weight_key is not None
                totals[name][step] += np.count_nonzero(lead_weight_key & 1)
            elif isinstance(config, BestOfMajorityConfig):
                chosen = bom_best[name]
                empty = chosen == 0
                if empty.any():  # no group survives: the mode's best member
                    chosen = np.where(empty, lead & field_mask, chosen)
                totals[name][step] += np.count_nonzero(chosen & 1)
            elif isinstance(config, AdaptiveConfig | AheadByKConfig):
                lanes_of = stopping[name]
                right = lanes_of.stopped_right
                if lanes_of.live_count:
                    right += int(np.count_nonzero(lead & lanes_of.live_bit))
                totals[name][step] += right
                used[name][step] += lanes_of.stopped_samples + lanes_of.live_count * taken


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
        correct=np.ascontiguousarray(correct[start:stop].T),
        scores=np.ascontiguousarray(scores[start:stop].T) if scores is not None else None,
        ranks=np.ascontiguousarray(chunk_ranks.T) if chunk_ranks is not None else None,
        score_by_rank=(
            np.take_along_axis(scores[start:stop], rank_order, axis=1)
            if scores is not None and rank_order is not None
            else None
        ),
        distinct=max(distinct, 0),
    )
