"""Selection and stopping rules (pure functions), with property tests."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttscale import laws
from ttscale.errors import ConfigError
from ttscale.strategies.selection import (
    group_answers,
    select_best_of_majority,
    select_best_of_n,
    select_majority,
    survival_threshold,
)
from ttscale.strategies.stopping import (
    beta_majority_probability,
    beta_rule_stops,
    first_to_ahead_by_k,
    lead,
    maker_expected_votes,
    maker_k_min,
    maker_step_success,
    top_two,
    unanimous,
    votes_needed_for_lead,
)


class SameNumber:
    """Treats answers equal when they parse to the same float (a stand-in math verifier)."""

    def equivalent(self, a: str, b: str) -> bool:
        try:
            return float(a) == float(b)
        except ValueError:
            return False


# -- selection ---------------------------------------------------------------------------------


def test_majority_counts_ties_and_none() -> None:
    answers = ["b", "a", None, "a", "b", None, None]
    top = select_majority(answers, 2)
    assert [g.answer for g in top] == ["b", "a"]  # tie on 2 votes: "b" was seen first
    assert top[0].members == (0, 4)
    assert select_majority([None, None]) == []
    weighted = select_majority(["a", "a", "b"], weights=[0.1, 0.1, 0.9])
    assert weighted[0].answer == "b"


def test_equivalence_merges_groups() -> None:
    answers = ["0.5", "1/2", "0.50", "2"]  # strings differ; SameNumber merges 0.5 and 0.50
    groups = group_answers(answers, equivalence=SameNumber())
    assert sorted(g.count for g in groups) == [1, 1, 2]
    top = select_majority(["1", "1.0", "2", "2", "x"], equivalence=SameNumber())
    assert top[0].count == 2 and top[0].answer == "1"  # 1 and 1.0 merge: a 2-2 tie, 1 first
    top = select_majority(["1", "1.0", "2", "2", "1.00"], equivalence=SameNumber())
    assert top[0].answer == "1" and top[0].count == 3


def test_best_of_n_ties_go_to_the_lowest_index() -> None:
    assert select_best_of_n([0.5, 0.9, 0.9, 0.1], 2) == [1, 2]
    assert select_best_of_n([0.5, 0.9, 0.9], 1, indices=[7, 9, 3]) == [2]
    assert select_best_of_n([float("nan"), 0.1]) == [1]
    distinct = select_best_of_n([0.9, 0.8, 0.7], 2, answers=["a", "a", "b"])
    assert distinct == [0, 2]
    with pytest.raises(ConfigError):
        select_best_of_n([1.0], 0)


def test_best_of_majority_threshold_group_score_and_fallback() -> None:
    answers = ["a", "a", "a", "b", "c"]
    scores = [0.2, 0.3, 0.1, 0.9, 0.8]
    groups, fell_back = select_best_of_majority(answers, scores, alpha=0.5)
    assert [g.answer for g in groups] == ["a"] and not fell_back
    groups, _ = select_best_of_majority(answers, scores, 3, alpha=0.0)
    assert [g.answer for g in groups] == ["b", "c", "a"]
    groups, _ = select_best_of_majority(
        ["a", "a", "b", "b"], [0.9, 0.0, 0.6, 0.6], group_score="mean"
    )
    assert groups[0].answer == "b"
    groups, fell_back = select_best_of_majority(answers, scores, min_count=4)
    assert fell_back and [g.answer for g in groups] == ["a"]
    assert survival_threshold(10, 0.3) == 3
    assert survival_threshold(10, 0.31) == 4
    assert survival_threshold(10, 0.0, 2) == 2


answer_lists = st.lists(st.sampled_from(["a", "b", "c", "d", None]), min_size=1, max_size=30)
dyadic = st.integers(min_value=0, max_value=8).map(lambda v: v / 4)  # sums are exact


@st.composite
def scored(draw: st.DrawFn) -> tuple[list[str | None], list[float], list[int]]:
    answers = draw(answer_lists)
    scores = draw(st.lists(dyadic, min_size=len(answers), max_size=len(answers)))
    return answers, scores, list(range(len(answers)))


@settings(max_examples=150, deadline=None)
@given(data=scored(), seed=st.randoms(use_true_random=False), k=st.integers(1, 3))
def test_selection_does_not_change_when_candidates_are_reordered(
    data: tuple[list[str | None], list[float], list[int]], seed: object, k: int
) -> None:
    answers, scores, indices = data
    order = list(range(len(answers)))
    seed.shuffle(order)  # type: ignore[attr-defined]
    shuffled = (
        [answers[p] for p in order],
        [scores[p] for p in order],
        [indices[p] for p in order],
    )

    def chosen_indices(a: list[str | None], s: list[float], i: list[int]) -> list[object]:
        bon = [i[p] for p in select_best_of_n(s, k, indices=i)]
        maj = [(g.answer, g.first_index) for g in select_majority(a, k, indices=i)]
        wmaj = [(g.answer, g.count) for g in select_majority(a, k, weights=s, indices=i)]
        bom_groups, _ = select_best_of_majority(a, s, k, alpha=0.2, indices=i)
        bom = [sorted(i[p] for p in g.members) for g in bom_groups]
        mean_groups, _ = select_best_of_majority(
            a, s, k, min_count=2, group_score="mean", indices=i
        )
        mean = [sorted(i[p] for p in g.members) for g in mean_groups]
        return [bon, maj, wmaj, bom, mean]

    assert chosen_indices(*data) == chosen_indices(*shuffled)


@settings(max_examples=150, deadline=None)
@given(data=scored(), k=st.integers(1, 4))
def test_best_of_majority_with_alpha_zero_is_best_of_n(
    data: tuple[list[str | None], list[float], list[int]], k: int
) -> None:
    answers, scores, _ = data
    groups, fell_back = select_best_of_majority(answers, scores, k, alpha=0.0)
    bom_best = [min(g.members, key=lambda p: (-scores[p], p)) for g in groups]
    assert not fell_back
    assert bom_best == select_best_of_n(scores, k, answers=answers)
    assert bom_best[0] == select_best_of_n(scores, 1)[0]


@given(answer=st.text(min_size=1), n=st.integers(1, 20), k=st.integers(1, 3))
def test_majority_over_identical_answers_returns_that_answer(answer: str, n: int, k: int) -> None:
    groups = select_majority([answer] * n, k)
    assert len(groups) == 1 and groups[0].answer == answer and groups[0].count == n


# -- stopping ----------------------------------------------------------------------------------


def test_beta_probability_matches_scipy_and_known_values() -> None:
    assert beta_majority_probability(0, 0) == Fraction(1, 2)
    assert beta_majority_probability(1, 0) == Fraction(3, 4)
    assert beta_majority_probability(4, 0) == Fraction(31, 32)
    special = pytest.importorskip("scipy.special")
    for a in range(0, 25, 3):
        for b in range(0, 25, 4):
            expected = 1.0 - float(special.betainc(a + 1, b + 1, 0.5))
            assert math.isclose(float(beta_majority_probability(a, b)), expected, abs_tol=1e-12)


def test_beta_rule_and_esc_window() -> None:
    assert not beta_rule_stops([3], 0.95)  # 15/16 < 0.95
    assert beta_rule_stops([4], 0.95)
    assert not beta_rule_stops([4, 1], 0.95)
    assert not beta_rule_stops([], 0.95)
    assert top_two([1, 5, 3]) == (5, 3)
    assert unanimous(["a", "a"]) and not unanimous(["a", "b"]) and not unanimous([None, None])
    assert not unanimous([])
    with pytest.raises(ConfigError, match="threshold"):
        beta_rule_stops([1], 1.0)


def test_first_to_ahead_by_k_and_batch_sizing() -> None:
    assert first_to_ahead_by_k(["a", "b", "a", "a", "a"], 2) == ("a", 4)
    assert first_to_ahead_by_k(["a", None, "a"], 2) == ("a", 3)
    assert first_to_ahead_by_k(["a", "b"], 2) is None
    assert votes_needed_for_lead([], 3) == 3
    assert votes_needed_for_lead([2, 1], 3) == 2
    assert votes_needed_for_lead([5, 1], 3) == 1


@settings(max_examples=200, deadline=None)
@given(answers=st.lists(st.sampled_from(["a", "b", "c", None]), max_size=60), k=st.integers(1, 4))
def test_ahead_by_k_never_stops_before_the_lead_is_k(answers: list[str | None], k: int) -> None:
    found = first_to_ahead_by_k(answers, k)
    for read in range(len(answers) + 1):
        counts: dict[str, int] = {}
        for answer in answers[:read]:
            if answer is not None:
                counts[answer] = counts.get(answer, 0) + 1
        if found is not None and read == found[1]:
            assert lead(counts.values()) >= k
            assert max(counts, key=lambda a: counts[a]) == found[0]
            break
        assert lead(counts.values()) < k  # no earlier prefix had the lead
    else:
        assert found is None


def test_maker_formulas() -> None:
    # One implementation, in ttscale.laws, re-exported by the stopping rules.
    assert maker_step_success is laws.maker_step_success
    assert math.isclose(maker_step_success(0.9, 3), 1 / (1 + (1 / 9) ** 3))
    # Gambler's ruin: k (2 p_sub - 1) / (2p - 1), MAKER's k / (2p - 1) as p_sub -> 1.
    assert math.isclose(maker_expected_votes(0.75, 3), 3 * (2 * 27 / 28 - 1) / 0.5)
    assert maker_expected_votes(0.99, 3) == pytest.approx(3 / 0.98, rel=1e-5)
    assert maker_k_min(0.99, 0.95, 1_000_000) >= 3
    assert maker_k_min(0.6, 0.9, 10, 1) > maker_k_min(0.9, 0.9, 10, 1)
