"""Stopping rules for sequential voting, as plain functions over vote counts and answer lists.

- Adaptive-Consistency (Aggarwal et al. 2023): with ``a`` and ``b`` the votes of the two leading
  answers, stop once P(p > 1/2) >= threshold for p ~ Beta(a + 1, b + 1).
- ESC (Li et al. 2024): stop at the first window of samples that all give the same answer.
- MAKER (Meyerson et al. 2025): first-to-ahead-by-k; the first answer to lead every other by k wins.
  Its formulas (per-step success, expected votes, k_min, expected cost) live in :mod:`ttscale.laws`
  and are re-exported here (importing that module does not import scipy).

The Beta probability uses the identity, for integer parameters, between the Beta CDF and a
binomial tail: for X ~ Beta(a + 1, b + 1), P(X > 1/2) = P(Binomial(a + b + 1, 1/2) <= a). That sum
is exact in integer arithmetic, so no scipy is needed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from fractions import Fraction

from ttscale.errors import ConfigError
from ttscale.laws import (
    maker_expected_cost,
    maker_expected_votes,
    maker_k_min,
    maker_step_success,
)

__all__ = [
    "beta_majority_probability",
    "beta_rule_stops",
    "first_to_ahead_by_k",
    "lead",
    "maker_expected_cost",
    "maker_expected_votes",
    "maker_k_min",
    "maker_step_success",
    "top_two",
    "unanimous",
    "votes_needed_for_lead",
]


def beta_majority_probability(a: int, b: int) -> Fraction:
    """P(p > 1/2) for p ~ Beta(a + 1, b + 1), exactly: sum_{j<=a} C(a+b+1, j) / 2^(a+b+1)."""
    if a < 0 or b < 0:
        raise ConfigError(f"vote counts must be >= 0, got a={a}, b={b}")
    trials = a + b + 1
    return Fraction(sum(math.comb(trials, j) for j in range(a + 1)), 2**trials)


def top_two(counts: Iterable[int]) -> tuple[int, int]:
    """The largest and second-largest of ``counts`` (zeros when missing)."""
    first = second = 0
    for count in counts:
        if count > first:
            first, second = count, first
        elif count > second:
            second = count
    return first, second


def beta_rule_stops(counts: Iterable[int], threshold: float) -> bool:
    """Adaptive-Consistency's Beta rule over the votes per answer."""
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
    a, b = top_two(counts)
    if a == 0:
        return False
    return beta_majority_probability(a, b) >= Fraction(threshold)


def unanimous(window: Sequence[str | None]) -> bool:
    """ESC's rule: a non-empty window in which every sample gives the same (non-None) answer."""
    return bool(window) and window[0] is not None and all(a == window[0] for a in window)


def lead(counts: Iterable[int]) -> int:
    """How far the leading answer is ahead of the runner-up."""
    first, second = top_two(counts)
    return first - second


def votes_needed_for_lead(counts: Iterable[int], margin: int) -> int:
    """The fewest further votes after which some answer could lead by ``margin`` (at least 1).

    Drawing exactly this many before looking again cannot overshoot first-to-ahead-by-k: no answer
    can reach the margin part way through such a batch.
    """
    return max(1, margin - lead(counts))


def first_to_ahead_by_k(answers: Iterable[str | None], margin: int) -> tuple[str, int] | None:
    """The first answer to lead every other by ``margin`` votes, and how many answers were read.

    ``None`` answers (red-flagged samples) do not vote but are counted as read.
    """
    if margin < 1:
        raise ConfigError(f"margin must be >= 1, got {margin}")
    counts: Counter[str] = Counter()
    for read, answer in enumerate(answers, start=1):
        if answer is None:
            continue
        counts[answer] += 1
        if lead(counts.values()) >= margin:
            return counts.most_common(1)[0][0], read
    return None
