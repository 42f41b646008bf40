"""The voting scan of offline evaluation: every (order, problem) lane stepped through its order.

:func:`scan` runs the strategies that vote or stop along an order (majority, weighted majority,
Best-of-Majority, adaptive and ahead-by-k stopping; pass@k and best-of-N too when orders are
replayed) over a chunk of problems at once and counts, per problem and step, the lanes whose
pick is correct. :func:`ttscale.strategies.offline.evaluate` cuts the problems into chunks
(:func:`make_chunk`), scans them on threads and averages the counts; its
docstring says what the numbers mean. Everything here is numpy over whole lanes, one step at a
time, with the per-step work split by job in :class:`_Scan`'s methods.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ttscale.errors import ConfigError
from ttscale.strategies.adaptive import AdaptiveConfig
from ttscale.strategies.ahead_by_k import AheadByKConfig
from ttscale.strategies.base import StrategyConfig
from ttscale.strategies.best_of_majority import BestOfMajorityConfig
from ttscale.strategies.best_of_n import BestOfNConfig
from ttscale.strategies.majority import MajorityConfig
from ttscale.strategies.selection import survival_threshold

__all__ = [
    "LANE_BUDGET",
    "STATE_BUDGET",
    "BoolArray",
    "FloatArray",
    "IntArray",
    "OfflineSpec",
    "PassAtK",
    "ScanChunk",
    "keyed_scores",
    "make_chunk",
    "scan",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_NEVER = np.iinfo(np.int32).max  # "never stops" in the Beta rule's table

STATE_BUDGET = 1_500_000
"""Lanes times distinct answers per chunk: bounds the memory of the per-answer state arrays."""

LANE_BUDGET = 1 << 17
"""Lanes per chunk: bounds the memory of the per-lane state (about 120 bytes a lane), which the
per-answer budget alone leaves unbounded when problems have few distinct answers."""


@dataclass(frozen=True)
class PassAtK:
    """Coverage: the fraction of problems where any of the k samples is correct (an oracle)."""


OfflineSpec = StrategyConfig | PassAtK
"""What offline evaluation runs: an online strategy's config, or coverage."""


def keyed_scores(scores: FloatArray) -> FloatArray:
    """Scores ready to sort: NaN (a sample the verifier could not score) as -inf, last."""
    # NaN must not poison a sort: a sample the verifier could not score ranks with -inf, last.
    return np.where(np.isnan(scores), -np.inf, scores)


def _score_levels(scores: FloatArray) -> tuple[IntArray, FloatArray]:
    """Per problem row: each sample's dense score level (0 lowest) and the score of each level."""
    keyed = keyed_scores(scores)
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


# -- a chunk and the state of its lanes ---------------------------------------------------------


@dataclass
class ScanChunk:
    """Problems scanned together, laid out for :func:`scan`.

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
    def of(cls, chunk: ScanChunk, orders: IntArray) -> _LevelIndex:
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
    """Bit fields of a group's key: ``count | first | best`` (see :class:`_Scan`)."""

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


# -- the scan ------------------------------------------------------------------------------------


def scan(
    chunk: ScanChunk,
    orders: IntArray,
    specs: Mapping[str, OfflineSpec],
    wanted: BoolArray,
) -> tuple[dict[str, IntArray], dict[str, IntArray]]:
    """Each strategy's correct lanes per problem at every wanted step: (N, P) counts over orders.

    Also returns, for the sequential strategies, the samples their lanes drew (summed likewise).
    A lane is one (order, problem) pair; lanes are laid out (S, P). See :class:`_Scan`.
    """
    state = _Scan(chunk, orders, specs)
    for step in range(state.n):
        state.step(step, bool(wanted[step]))
    return state.totals, state.drawn


class _Scan:
    """The vote state of every lane of a chunk, stepped one sample at a time.

    The vote state of every answer of every lane lives in flat arrays indexed by ``answer * lanes
    + lane``: answer-major, so the few popular answers' rows stay in cache. A group's key packs
    three fields into one unsigned integer, ``count | first | best``: ``first`` is ``(mask -
    position of its first-drawn member) << 1`` plus whether that member is correct; ``best`` the
    same for its best member by (score level, earliest position), with the level on top. One
    integer comparison is "more votes, then drawn first" (first positions differ between groups,
    so ``best`` never decides), and whether a lane's pick is correct is a bit of a key: no gather
    at scoring time. Every lane takes its sample at the same position in a step, so the position
    bits are one scalar per step. The answerless row has count 0 and no correct bits, so it can
    never lead a lane that has an answer. Every update is branch-free (maxima and arithmetic
    blends), since masked copies with unpredictable masks cost several times as much at this size.
    """

    def __init__(
        self, chunk: ScanChunk, orders: IntArray, specs: Mapping[str, OfflineSpec]
    ) -> None:
        self.chunk = chunk
        self.orders = orders
        self.specs = specs
        subsets = orders.shape[0]
        self.n, self.problems = n, problems = chunk.answers.shape
        self.none = chunk.distinct
        self.shape = (subsets, problems)
        self.lanes = subsets * problems
        self._sort_specs(specs)
        if self.need_best and (chunk.levels is None or chunk.scores is None):
            raise ConfigError("best-of-N, weighted majority and best_of_majority need scores")
        self.layout = layout = _Layout.for_samples(n, self.need_best)
        # Where no problem has a right and a wrong sample of equal score, equal best levels never
        # differ in correctness, so no tie between groups' best members needs its draw order.
        self.ties = self.need_best and _mixed_ties(chunk)
        self.key_type = layout.key_type
        self.count_shift = layout.count_shift
        self.field_mask = (1 << layout.best_width) - 1
        self.count_one = self.key_type(1 << layout.count_shift)
        self._lay_out_samples()
        self._start_state()
        self.by_level = _LevelIndex.of(chunk, orders) if self.ties else None
        self.totals = {name: np.zeros((n, problems), dtype=np.int64) for name in specs}
        self.drawn = {name: np.zeros((n, problems), dtype=np.int64) for name in self.stopping}

    def _sort_specs(self, specs: Mapping[str, OfflineSpec]) -> None:
        """Which strategies run, and what state they need."""
        items = specs.items()
        self.weighted = [n for n, c in items if isinstance(c, MajorityConfig) and c.weighted]
        self.boms = {n: c for n, c in items if isinstance(c, BestOfMajorityConfig)}
        self.adaptives = {n: c for n, c in items if isinstance(c, AdaptiveConfig)}
        self.aheads = {n: c for n, c in items if isinstance(c, AheadByKConfig)}
        self.bests = [n for n, c in items if isinstance(c, BestOfNConfig)]
        self.coverages = [n for n, c in items if isinstance(c, PassAtK)]
        self.need_best = bool(self.weighted or self.boms or self.bests)
        self.means = any(c.group_score == "mean" for c in self.boms.values())
        self.need_weight = bool(self.weighted) or self.means
        self.need_second = bool(self.aheads) or any(
            c.rule == "beta" for c in self.adaptives.values()
        )
        self.need_runs = any(c.rule == "esc" for c in self.adaptives.values())

    def _lay_out_samples(self) -> None:
        """Per sample, (N, P): its bits in its group's key, positions left out (zero if
        answerless), and where its vote goes."""
        chunk, layout, key_type = self.chunk, self.layout, self.key_type
        valid = chunk.answers < self.none
        self.valid = valid
        best_static = (
            ((chunk.levels + 1) << 1) | chunk.correct
            if chunk.levels is not None
            else np.zeros_like(chunk.answers)
        )
        first_static = (valid & chunk.correct).astype(np.int64) << layout.best_width
        word = np.where(
            valid,
            (1 << layout.count_shift) | first_static | (best_static if self.need_best else 0),
            0,
        )
        self.word = word.astype(key_type)
        self.best_any = best_static.astype(key_type)  # answerless too: groups of one for BoM
        positions = layout.mask - np.arange(self.n, dtype=np.int64)
        self.step_bits = (positions << (layout.best_width + 1)).astype(key_type)
        problems = np.arange(self.problems, dtype=np.int64)
        self.slot_base = chunk.answers * self.lanes + problems[None, :]
        self.lane_offset = (np.arange(self.shape[0], dtype=np.int64) * self.problems)[:, None]
        self.lane_problem_offset = np.tile(problems * self.n, self.shape[0])

    def _start_state(self) -> None:
        """Every lane's state before its first sample."""
        shape, key_type, rows = self.shape, self.key_type, (self.none + 1) * self.lanes
        self.keys = np.zeros(rows, dtype=key_type)
        self.lead = np.zeros(shape, dtype=key_type)
        self.second = np.zeros(shape, dtype=key_type)
        self.weight = self.vote_weight = self.lead_weight = self.lead_weight_key = None
        if self.need_weight:
            assert self.chunk.scores is not None
            self.weight = np.zeros(rows, dtype=np.float64)
            # Answerless samples carry -inf so their row can never outweigh a real answer.
            self.vote_weight = np.where(self.valid, self.chunk.scores, -np.inf)
            self.lead_weight = np.full(shape, -1.0)
            self.lead_weight_key = np.zeros(shape, dtype=key_type)
        self.lone = np.zeros(shape, dtype=key_type) if self.means else None
        self.bom_best = {name: np.zeros(shape, dtype=key_type) for name in self.boms}
        self.bom_threshold = dict.fromkeys(self.boms, 0)
        self.best_seen = np.zeros(shape, dtype=key_type) if self.bests else None
        self.covered = np.zeros(shape, dtype=bool) if self.coverages else None
        first_bit = self.layout.first_bit
        self.stopping = {
            name: _Stopping.start(shape, key_type, first_bit)
            for name in [*self.adaptives, *self.aheads]
        }
        self.beta_tables = {
            name: _beta_min_top(self.n, c.threshold).astype(key_type)
            for name, c in self.adaptives.items()
            if c.rule == "beta"
        }
        self.run_length = np.zeros(shape, dtype=key_type)
        self.previous = np.full(shape, -1, dtype=np.int64)
        self.scratch = np.empty(shape, dtype=key_type)  # masked keys, reused every step

    # -- one step --------------------------------------------------------------------------------

    def step(self, step: int, wanted: bool) -> None:
        """Every lane takes its order's sample at ``step``; counts are kept where ``wanted``."""
        taken = step + 1  # samples in the prefix
        columns = self.orders[:, step]  # the sample each order takes now, shared by all problems
        slot = np.take(self.slot_base, columns, axis=0)  # (S, P): whole rows, a cheap gather
        slot += self.lane_offset
        arriving = np.take(self.word, columns, axis=0)
        arriving += self.step_bits[step]
        key = self._vote(slot, arriving)
        if self.weight is not None:
            self._weigh(slot, key, columns)
        # The arriving sample's own best field, answerless or not (its group of one).
        alone = self.best_any[:0]
        if self.lone is not None or self.best_seen is not None or self.boms:
            alone = np.take(self.best_any, columns, axis=0)
        if self.lone is not None:
            _keep_earlier(self.lone, alone * ((arriving >> self.count_shift) == 0))
        if self.best_seen is not None:
            _keep_earlier(self.best_seen, alone)
        if self.covered is not None:
            self.covered |= np.take(self.chunk.correct, columns, axis=0)
        for name, config in self.boms.items():
            self._best_of_majority(name, config, taken, key, alone)
        if self.need_runs:
            self.run_length *= slot == self.previous
            self.run_length += 1
            self.run_length *= arriving >> self.count_shift  # an answerless sample breaks the run
            self.previous = slot
        self._stop(taken, key)
        if wanted:
            self._count(step, taken)

    def _vote(self, slot: IntArray, arriving: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """One more vote for each lane's group, and its best member; the lead and runner-up.

        A strictly higher level replaces the best member, an equal one keeps the earlier-drawn
        member (so its field needs no position). Then the arriving sample's own key wins only
        where the group was empty: an existing group has more votes, or (the answerless row, no
        votes) an earlier first member."""
        old = self.keys.take(slot)
        key: npt.NDArray[Any] = arriving & self.count_one
        key += old
        if self.need_best:
            low = old & self.field_mask
            arrived = arriving & self.field_mask
            change = arrived - low  # modular: added back only where it is a rise
            low |= 1
            change *= arrived > low
            key += change
        np.maximum(key, arriving, out=key)
        self.keys[slot] = key
        if self.need_second:
            # A group other than the leader: the runner-up becomes the lesser of it and the
            # leader, if more than the runner-up. The leader's own vote changes nothing.
            challenger = np.minimum(key, self.lead)
            challenger *= old != self.lead
            np.maximum(self.second, challenger, out=self.second)
        np.maximum(self.lead, key, out=self.lead)
        return key

    def _weigh(self, slot: IntArray, key: npt.NDArray[Any], columns: IntArray) -> None:
        """The groups' score sums, and weighted majority's leader (ties to the key order)."""
        weight, vote_weight = self.weight, self.vote_weight
        lead_weight, lead_weight_key = self.lead_weight, self.lead_weight_key
        assert weight is not None and vote_weight is not None
        assert lead_weight is not None and lead_weight_key is not None
        mine = weight.take(slot)
        mine += np.take(vote_weight, columns, axis=0)
        weight[slot] = mine
        if self.weighted:
            better = mine > lead_weight
            tie = mine == lead_weight
            tie &= key > lead_weight_key
            better |= tie
            np.maximum(lead_weight, mine, out=lead_weight)
            change = key - lead_weight_key  # modular: the blend below is exact
            change *= better
            lead_weight_key += change

    def _best_of_majority(
        self,
        name: str,
        config: BestOfMajorityConfig,
        taken: int,
        key: npt.NDArray[Any],
        alone: npt.NDArray[Any],
    ) -> None:
        """Best-of-Majority's pick: the best member among the groups at the threshold or more."""
        threshold = survival_threshold(taken, config.alpha, config.min_count)
        state = self.bom_best[name]
        if config.group_score == "mean":
            self.bom_best[name] = self._surviving_mean_best(threshold, taken)
        elif threshold <= 1:
            # Every group survives (and has since the start: the threshold never falls), so
            # the arriving sample competes on its own rank, answerless or not.
            _keep_earlier(state, alone)
        elif threshold != self.bom_threshold[name]:
            self.bom_best[name] = self._surviving_best(threshold, taken)
        else:
            votes = key >> self.count_shift
            joins = key & self.field_mask
            joins *= votes >= threshold
            if self.ties:
                self._order_joining_ties(state, joins, votes == threshold, threshold, taken)
            _keep_earlier(state, joins)
        self.bom_threshold[name] = threshold

    def _order_joining_ties(
        self,
        state: npt.NDArray[Any],
        joins: npt.NDArray[Any],
        at_threshold: BoolArray,
        threshold: int,
        taken: int,
    ) -> None:
        """A group surviving from now on may hold, at the state's level, a member drawn before
        the state's: only the draw order can tell. Few lanes have a group at exactly the
        threshold, so only those are looked at."""
        at = np.flatnonzero(at_threshold)
        flat = state.reshape(-1)
        joined, held = joins.reshape(-1)[at], flat[at]
        clash = (joined >> 1) == (held >> 1)
        clash &= ((joined ^ held) & 1) == 1
        mixed = at[clash]
        if mixed.size:
            flat[mixed] = self._earliest(mixed, flat[mixed] >> 1, taken, self._counted(threshold))

    def _stop(self, taken: int, key: npt.NDArray[Any]) -> None:
        """The stopping rules of adaptive and ahead-by-k, on the lanes still drawing."""
        count_shift = self.count_shift
        for name, adaptive in self.adaptives.items():
            lanes_of = self.stopping[name]
            if taken % adaptive.batch_size != 0 or lanes_of.live_total == 0:
                continue
            picks = lanes_of.view(self.lead)
            if adaptive.rule == "beta":
                seconds = lanes_of.view(self.second) >> count_shift
                stops = (picks >> count_shift) >= np.take(self.beta_tables[name], seconds)
            else:
                stops = lanes_of.view(self.run_length) >= adaptive.batch_size
                if adaptive.answer == "window":
                    picks = lanes_of.view(key)  # the group the unanimous window voted for
            lanes_of.settle(stops, taken, picks)
        for name, ahead in self.aheads.items():
            lanes_of = self.stopping[name]
            if lanes_of.live_total == 0:
                continue
            picks = lanes_of.view(self.lead)
            lead_by = picks >> count_shift
            lead_by -= lanes_of.view(self.second) >> count_shift
            lanes_of.settle(lead_by >= ahead.margin, taken, picks)

    def _count(self, step: int, taken: int) -> None:
        """Per problem, the lanes whose pick is correct after ``taken`` samples."""
        totals, scratch = self.totals, self.scratch
        self._count_votes(step)
        for name in self.coverages:
            assert self.covered is not None
            totals[name][step] = _per_problem(self.covered)
        for name in self.bests:
            assert self.best_seen is not None
            np.bitwise_and(self.best_seen, 1, out=scratch)
            _count_bits(scratch, 1, out=totals[name][step])
        for name, lanes_of in self.stopping.items():
            totals[name][step] = lanes_of.right_now(self.lead, scratch)
            self.drawn[name][step] = lanes_of.stopped_samples + lanes_of.live_count * taken

    def _count_votes(self, step: int) -> None:
        """The fixed-sample voting strategies' correct lanes; ``scratch`` (S, P) takes each
        strategy's masked keys in turn (one pass, no new array)."""
        scratch, first_bit, majority_right = self.scratch, self.layout.first_bit, None
        for name, config in self.specs.items():
            chosen = None
            if isinstance(config, MajorityConfig) and not config.weighted:
                if majority_right is None:
                    np.bitwise_and(self.lead, first_bit, out=scratch)
                    majority_right = _count_bits(scratch, first_bit)
                self.totals[name][step] = majority_right
            elif isinstance(config, MajorityConfig):
                chosen = self.lead_weight_key
            elif isinstance(config, BestOfMajorityConfig):
                chosen = self.bom_best[name]
                empty = chosen == 0
                if empty.any():  # no group survives: the mode's best member
                    chosen = np.where(empty, self.lead & self.field_mask, chosen)
            if chosen is not None:
                np.bitwise_and(chosen, 1, out=scratch)
                _count_bits(scratch, 1, out=self.totals[name][step])

    # -- ties between best members, by draw order (rare) -----------------------------------------

    def _earliest(
        self, chosen: IntArray, level: npt.NDArray[Any], taken: int, allowed: Any
    ) -> npt.NDArray[Any]:
        """For lanes ``chosen`` (flat) whose best candidates tie at ``level`` (level + 1) with
        right and wrong members: the best field of the earliest-drawn sample at that level that
        ``allowed(answers, lanes, samples, problems)`` admits. Rare, and only the samples of that
        level are looked at, so it is exact at little cost."""
        by_level, chunk = self.by_level, self.chunk
        assert by_level is not None
        problem = chosen % self.problems
        samples, present = by_level.samples(problem, level.astype(np.int64) - 1)
        column = problem[:, None]
        drawn_at = by_level.position[(chosen // self.problems)[:, None], samples]
        fits = present & (drawn_at < taken)
        fits &= allowed(chunk.answers[samples, column], chosen[:, None], samples, column)
        first = np.where(fits, drawn_at, self.n).argmin(axis=1)
        right = chunk.correct[samples[np.arange(chosen.size), first], problem]
        fields: npt.NDArray[Any] = ((level.astype(np.int64) << 1) | right).astype(self.key_type)
        return fields

    def _counted(self, threshold: int) -> Any:
        """Admits the samples of groups with at least ``threshold`` votes."""
        keys, none, lanes, count_shift = self.keys, self.none, self.lanes, self.count_shift

        def allowed(said: IntArray, lane: IntArray, _: IntArray, __: IntArray) -> BoolArray:
            count = keys[np.minimum(said, none) * lanes + lane] >> count_shift
            fits: BoolArray = (said < none) & (count >= threshold)
            return fits

        return allowed

    def _settled(
        self, winner: npt.NDArray[Any], candidates: npt.NDArray[Any], taken: int, allowed: Any
    ) -> npt.NDArray[Any]:
        """``winner`` (the max of ``candidates``, (G, lanes) best fields or 0), with the lanes
        whose top level holds right and wrong candidates resolved by draw order."""
        if not self.ties:
            return winner
        level = winner >> 1
        at_top = (candidates >> 1 == level[None, :]) & (candidates > 0)
        wrong = (at_top & ((candidates & 1) == 0)).any(axis=0)
        mixed = np.flatnonzero(wrong & ((winner & 1) == 1))
        if mixed.size:
            winner = winner.copy()
            winner[mixed] = self._earliest(mixed, level[mixed], taken, allowed)
        return winner

    def _surviving_best(self, threshold: int, taken: int) -> npt.NDArray[Any]:
        """Every lane's winning best field from scratch, on a threshold change (> 1: answerless
        groups of one do not survive)."""
        grid = self.keys.reshape(self.none + 1, self.lanes)[: self.none]
        survives = grid >> self.count_shift >= max(threshold, 1)
        candidates = np.where(survives, grid & self.field_mask, 0)
        winner = candidates.max(axis=0, initial=0)
        winner = self._settled(winner, candidates, taken, self._counted(threshold))
        return winner.reshape(self.shape).astype(self.key_type)

    def _surviving_mean_best(self, threshold: int, taken: int) -> npt.NDArray[Any]:
        """Every lane's winning best field by the groups' mean score (ties to the group whose
        best member ranks first); an answerless sample is a group of one while every group
        survives."""
        chunk, lanes, none, lone, weight = self.chunk, self.lanes, self.none, self.lone, self.weight
        assert weight is not None and lone is not None and chunk.score_by_level is not None
        assert chunk.scores is not None
        grid = self.keys.reshape(none + 1, lanes)[:none]
        count = grid >> self.count_shift
        survives = count >= max(threshold, 1)
        sums = weight.reshape(none + 1, lanes)[:none]
        mean = np.where(survives, sums / np.maximum(count, 1), -np.inf)
        lone_best = lone.ravel() if threshold <= 1 else np.zeros(lanes, dtype=self.key_type)
        lone_known = lone_best > 0
        lone_level = (lone_best >> 1).astype(np.int64) - 1
        lone_score = np.where(
            lone_known,
            np.take(chunk.score_by_level, self.lane_problem_offset + np.maximum(lone_level, 0)),
            -np.inf,
        )
        top = np.maximum(mean.max(axis=0, initial=-np.inf), lone_score)
        candidates = np.where(survives & (mean == top[None, :]), grid & self.field_mask, 0)
        lone_in = np.where(lone_known & (lone_score == top), lone_best, 0)
        candidates = np.vstack([candidates, lone_in[None, :]])
        allowed = self._mean_admits(threshold, top, lone_known)
        winner = self._settled(candidates.max(axis=0, initial=0), candidates, taken, allowed)
        return winner.reshape(self.shape).astype(self.key_type)

    def _mean_admits(self, threshold: int, top: FloatArray, lone_known: BoolArray) -> Any:
        """Admits the samples of groups whose mean is ``top`` and the lone answerless best."""
        keys, weight, scores = self.keys, self.weight, self.chunk.scores
        none, lanes, count_shift = self.none, self.lanes, self.count_shift
        assert weight is not None and scores is not None

        def allowed(
            said: IntArray, lane: IntArray, sample: IntArray, column: IntArray
        ) -> BoolArray:
            slot_of = np.minimum(said, none) * lanes + lane
            group_count = keys[slot_of] >> count_shift
            group_mean = weight[slot_of] / np.maximum(group_count, 1)
            in_group = (said < none) & (group_count >= max(threshold, 1))
            in_group &= group_mean == top[lane]
            alone_ok = (said == none) & lone_known[lane] & (scores[sample, column] == top[lane])
            fits: BoolArray = in_group | alone_ok
            return fits

        return allowed


def _per_problem(hits: BoolArray) -> IntArray:
    """Lanes set per problem of (S, P) flags. Summing bytes into a narrow type is several times
    faster than count_nonzero or a sum that widens each byte to 64 bits."""
    narrow = np.uint16 if hits.shape[0] < 2**16 else np.int64
    counts: IntArray = hits.view(np.uint8).sum(axis=0, dtype=narrow).astype(np.int64)
    return counts


def _count_bits(masked: npt.NDArray[Any], bit: int, out: IntArray | None = None) -> IntArray:
    """Lanes per problem of (S, P) keys masked to one bit ``bit`` (each 0 or ``bit``), summed in
    the keys' own type where it cannot overflow (a widening sum costs several times as much),
    into ``out`` if given (a row of counts: one call fewer, and no new array)."""
    fits = masked.shape[0] * bit < 2 ** (8 * masked.dtype.itemsize)
    total = masked.sum(axis=0, dtype=masked.dtype if fits else np.uint64)
    shift = bit.bit_length() - 1  # bit is a power of two
    counts: IntArray = np.right_shift(total, shift, out=out, casting="unsafe", dtype=total.dtype)
    return counts if out is not None else counts.astype(np.int64)


def _keep_earlier(state: npt.NDArray[Any], arriving: npt.NDArray[Any]) -> None:
    """``state`` takes ``arriving`` best fields only at a strictly higher level (in place)."""
    arriving = arriving * (arriving > (state | 1))
    np.maximum(state, arriving, out=state)


def _mixed_ties(chunk: ScanChunk) -> bool:
    """Whether some problem has a right and a wrong sample of equal score: only then does the
    order between equal scores change a pick's correctness."""
    assert chunk.levels is not None
    n, problems = chunk.levels.shape
    block = (chunk.levels + np.arange(problems)[None, :] * n).ravel()
    sizes = np.bincount(block, minlength=n * problems)
    right = np.bincount(block, weights=chunk.correct.ravel(), minlength=n * problems)
    return bool(((right > 0) & (right < sizes)).any())


# -- chunks ------------------------------------------------------------------------------------


def make_chunk(
    answers: IntArray,
    correct: BoolArray,
    scores: FloatArray | None,
    start: int,
    stop: int,
) -> ScanChunk:
    """Problems ``start:stop`` laid out for :func:`scan` (score levels are computed here, so
    that chunks on threads share that work too)."""
    levels = _score_levels(scores[start:stop]) if scores is not None else None
    chunk_answers = answers[start:stop]
    distinct = int(chunk_answers.max()) + 1 if chunk_answers.size else 0
    dense = np.where(chunk_answers < 0, distinct, chunk_answers)
    return ScanChunk(
        answers=np.ascontiguousarray(dense.T),
        correct=np.ascontiguousarray(correct[start:stop].T),
        scores=np.ascontiguousarray(scores[start:stop].T) if scores is not None else None,
        levels=np.ascontiguousarray(levels[0].T) if levels is not None else None,
        score_by_level=levels[1] if levels is not None else None,
        distinct=max(distinct, 0),
    )
