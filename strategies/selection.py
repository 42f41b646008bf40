"""Selection rules as plain functions over plain data: votes, groups, best-of-N, Best-of-Majority.

Every function takes parallel sequences (one entry per candidate) and returns *positions* into
them. ``indices`` gives each candidate's sample index; ties are broken by it (lowest first), never
by position, so the selection does not depend on the order the candidates are listed in. Without
``indices`` the positions serve as indices.

A candidate whose answer is ``None`` (nothing could be extracted) never wins a vote. Best-of-N
ignores answers; Best-of-Majority treats each answerless candidate as a group of its own, so that
``alpha = 0`` is exactly best-of-N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ttscale.errors import ConfigError
from ttscale.strategies.extract import AnswerEquivalence

__all__ = [
    "AnswerGroup",
    "GroupScore",
    "best_member",
    "group_answers",
    "rank_by_score",
    "select_best_of_majority",
    "select_best_of_n",
    "select_majority",
    "select_unscored",
    "survival_threshold",
    "vote_counts",
]

GroupScore = Literal["max", "mean"]


@dataclass(frozen=True)
class AnswerGroup:
    """Candidates that share an answer.

    ``members`` are positions into the input, sorted by sample index; ``first_index`` is the
    smallest sample index among them (the tie-breaker between groups). ``answer`` is ``None`` only
    for the singleton groups Best-of-Majority makes of answerless candidates.
    """

    answer: str | None
    members: tuple[int, ...]
    first_index: int

    @property
    def count(self) -> int:
        return len(self.members)


def _indices(count: int, indices: Sequence[int] | None) -> Sequence[int]:
    if indices is None:
        return range(count)
    if len(indices) != count:
        raise ConfigError(f"indices has {len(indices)} entries for {count} candidates")
    return indices


def _score_key(score: float) -> float:
    # NaN must not poison a sort: a candidate the verifier could not score ranks last.
    return -math.inf if math.isnan(score) else score


def rank_by_score(scores: Sequence[float], indices: Sequence[int] | None = None) -> list[int]:
    """Positions sorted best first: highest score, then lowest sample index."""
    order = _indices(len(scores), indices)
    return sorted(range(len(scores)), key=lambda p: (-_score_key(scores[p]), order[p]))


def best_member(
    members: Sequence[int], scores: Sequence[float] | None, indices: Sequence[int]
) -> int:
    """The member to return for a group: best scored (ties: lowest index), else lowest index."""
    if scores is None:
        return min(members, key=lambda p: indices[p])
    return min(members, key=lambda p: (-_score_key(scores[p]), indices[p]))


def group_answers(
    answers: Sequence[str | None],
    *,
    indices: Sequence[int] | None = None,
    equivalence: AnswerEquivalence | None = None,
    singletons_for_none: bool = False,
) -> list[AnswerGroup]:
    """Group candidates by answer, ordered by each group's first sample index.

    With ``equivalence`` the groups of answers it finds equal are merged (the connected components
    of the "equivalent" relation over the distinct answers, so the result does not depend on the
    order of comparisons); a merged group is named after its most frequent answer (ties: the one
    seen first). Answerless candidates are dropped, or made singleton groups when
    ``singletons_for_none``.
    """
    order = _indices(len(answers), indices)
    by_answer: dict[str, list[int]] = {}
    loose: list[AnswerGroup] = []
    for position, answer in enumerate(answers):
        if answer is None:
            if singletons_for_none:
                loose.append(AnswerGroup(None, (position,), order[position]))
            continue
        by_answer.setdefault(answer, []).append(position)

    keys = list(by_answer)
    parent = list(range(len(keys)))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    if equivalence is not None:
        for i in range(len(keys)):
            for j in range(i + 1, len(keys)):
                if root(i) != root(j) and equivalence.equivalent(keys[i], keys[j]):
                    parent[root(j)] = root(i)

    components: dict[int, list[int]] = {}
    for node in range(len(keys)):
        components.setdefault(root(node), []).append(node)

    groups = list(loose)
    for nodes in components.values():
        members = sorted(
            (p for node in nodes for p in by_answer[keys[node]]), key=lambda p: order[p]
        )
        name = min(
            nodes,
            key=lambda node: (
                -len(by_answer[keys[node]]),
                min(order[p] for p in by_answer[keys[node]]),
            ),
        )
        groups.append(AnswerGroup(keys[name], tuple(members), order[members[0]]))
    groups.sort(key=lambda group: group.first_index)
    return groups


def vote_counts(groups: Sequence[AnswerGroup]) -> dict[str, int]:
    """Votes per answer, for traces."""
    return {str(group.answer): group.count for group in groups}


def _group_weight(group: AnswerGroup, weights: Sequence[float] | None) -> float:
    if weights is None:
        return float(group.count)
    # A vote the verifier could not score (NaN) weighs nothing; counts then break ties.
    return sum(weights[p] for p in group.members if not math.isnan(weights[p]))


def select_majority(
    answers: Sequence[str | None],
    k: int = 1,
    *,
    weights: Sequence[float] | None = None,
    indices: Sequence[int] | None = None,
    equivalence: AnswerEquivalence | None = None,
) -> list[AnswerGroup]:
    """The top ``k`` answer groups by votes (self-consistency), best first.

    Votes count 1 each, or ``weights[p]`` each when weights (verifier scores) are given. Ties go to
    more members, then to the group whose first sample index is lowest.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if weights is not None and len(weights) != len(answers):
        raise ConfigError(f"weights has {len(weights)} entries for {len(answers)} answers")
    groups = group_answers(answers, indices=indices, equivalence=equivalence)
    groups.sort(key=lambda g: (-_group_weight(g, weights), -g.count, g.first_index))
    return groups[:k]


def select_best_of_n(
    scores: Sequence[float],
    k: int = 1,
    *,
    indices: Sequence[int] | None = None,
    answers: Sequence[str | None] | None = None,
) -> list[int]:
    """Positions of the ``k`` highest-scored candidates, best first (ties: lowest index).

    With ``answers`` the selection skips a candidate whose answer an earlier pick already has, so
    that top-k for pass@k spends its k picks on distinct answers (answerless candidates are all
    distinct).
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    ranked = rank_by_score(scores, indices)
    if answers is None:
        return ranked[:k]
    if len(answers) != len(scores):
        raise ConfigError(f"answers has {len(answers)} entries for {len(scores)} scores")
    picked: list[int] = []
    seen: set[str] = set()
    for position in ranked:
        answer = answers[position]
        if answer is not None:
            if answer in seen:
                continue
            seen.add(answer)
        picked.append(position)
        if len(picked) == k:
            break
    return picked


def select_unscored(
    answers: Sequence[str | None], k: int = 1, *, indices: Sequence[int] | None = None
) -> list[int]:
    """Best-of-N's fallback when no candidate could be scored: majority voting.

    The first-drawn member of each of the ``k`` largest answer groups (ties: the group drawn
    first), then, for picks still missing (fewer answers than ``k``, or none extracted), the
    remaining candidates in the order they were drawn.
    """
    order = _indices(len(answers), indices)
    groups = select_majority(answers, k, indices=indices)
    picked = [best_member(group.members, None, order) for group in groups]
    rest = sorted((p for p in range(len(answers)) if p not in picked), key=lambda p: order[p])
    return (picked + rest)[:k]


def survival_threshold(total: int, alpha: float = 0.0, min_count: int | None = None) -> int:
    """The fewest members a group needs to survive Best-of-Majority's frequency filter.

    ``alpha`` is a fraction of the ``total`` samples (frequency >= alpha), ``min_count`` an
    absolute count; the stricter applies. A tiny tolerance keeps ``alpha * total`` that should be
    whole (0.3 * 10) from rounding up a count.
    """
    by_fraction = math.ceil(alpha * total - 1e-9) if alpha > 0 else 0
    return max(by_fraction, min_count or 0)


def select_best_of_majority(
    answers: Sequence[str | None],
    scores: Sequence[float],
    k: int = 1,
    *,
    alpha: float = 0.0,
    min_count: int | None = None,
    group_score: GroupScore = "max",
    indices: Sequence[int] | None = None,
    equivalence: AnswerEquivalence | None = None,
) -> tuple[list[AnswerGroup], bool]:
    """Best-of-Majority (Di et al. 2025): the top ``k`` frequent-enough groups by score.

    Groups with at least :func:`survival_threshold` members survive; they are ranked by the max
    or mean of their members' scores, ties going to the group whose best member ranks first by
    (score, index). When none survives, the mode (the majority group) is returned alone. Returns
    the groups, best first, and whether that fallback was taken.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if group_score not in ("max", "mean"):
        raise ConfigError(f"group_score must be 'max' or 'mean', got {group_score!r}")
    if len(scores) != len(answers):
        raise ConfigError(f"scores has {len(scores)} entries for {len(answers)} answers")
    order = _indices(len(answers), indices)
    groups = group_answers(
        answers, indices=order, equivalence=equivalence, singletons_for_none=True
    )
    threshold = survival_threshold(len(answers), alpha, min_count)
    surviving = [group for group in groups if group.count >= threshold]
    if not surviving:
        mode = select_majority(answers, 1, indices=order, equivalence=equivalence)
        return mode, True

    def rank(group: AnswerGroup) -> tuple[float, float, int]:
        # Members the verifier could not score (NaN) do not count; a group with none scored
        # ranks after every scored one.
        values = [scores[p] for p in group.members if not math.isnan(scores[p])]
        if not values:
            value = -math.inf
        else:
            value = max(values) if group_score == "max" else sum(values) / len(values)
        top = best_member(group.members, scores, order)
        return (-value, -_score_key(scores[top]), order[top])

    surviving.sort(key=rank)
    return surviving[:k], False
