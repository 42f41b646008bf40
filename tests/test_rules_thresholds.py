"""Every selection and stopping rule at its threshold and at its smallest input, by hand."""

from __future__ import annotations

from fractions import Fraction

import pytest

from ttscale.errors import ConfigError
from ttscale.strategies.selection import (
    best_member,
    group_answers,
    rank_by_score,
    select_best_of_majority,
    select_best_of_n,
    select_majority,
    survival_threshold,
    vote_counts,
)
from ttscale.strategies.stopping import (
    beta_majority_probability,
    beta_rule_stops,
    first_to_ahead_by_k,
    lead,
    top_two,
    unanimous,
    votes_needed_for_lead,
)


def test_beta_rule_exactly_at_its_threshold() -> None:
    # a = 1, b = 0: P = (C(2,0) + C(2,1)) / 4 = 3/4; a = 2, b = 1: P = (1 + 4 + 6) / 16 = 11/16.
    assert beta_majority_probability(1, 0) == Fraction(3, 4)
    assert beta_majority_probability(2, 1) == Fraction(11, 16)
    assert beta_rule_stops([1], 0.75)  # >=: equal stops
    assert not beta_rule_stops([1], 0.75 + 1e-12)
    assert beta_rule_stops([2, 1], 0.6875) and not beta_rule_stops([2, 1], 0.6876)
    assert beta_rule_stops([1, 0, 0], 0.5)  # zeros are not votes
    assert not beta_rule_stops([0, 0], 0.01)  # no votes: nothing settled, however low
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="threshold"):
            beta_rule_stops([3], bad)
    with pytest.raises(ConfigError, match="vote counts"):
        beta_majority_probability(-1, 0)
    with pytest.raises(ConfigError, match="vote counts"):
        beta_majority_probability(0, -1)


def test_unanimous_at_its_smallest_window() -> None:
    assert unanimous(["a"])  # a window of one is unanimous
    assert not unanimous([None])
    assert not unanimous([])
    assert not unanimous(["a", None]) and not unanimous([None, "a"])
    assert unanimous(("b", "b", "b"))


def test_top_two_lead_and_batch_size_at_their_edges() -> None:
    assert top_two([]) == (0, 0)
    assert top_two([4]) == (4, 0)
    assert top_two([2, 2]) == (2, 2)  # a tie is a second as large as the first
    assert top_two([1, 3, 3, 2]) == (3, 3)
    assert lead([5, 5]) == 0 and lead([6, 5, 1]) == 1
    assert votes_needed_for_lead([4, 1], 3) == 1  # already ahead by 3: still draw at least one
    assert votes_needed_for_lead([3, 1], 3) == 1
    assert votes_needed_for_lead([1, 1], 3) == 3


def test_first_to_ahead_by_k_at_its_margin() -> None:
    assert first_to_ahead_by_k(["x"], 1) == ("x", 1)  # margin 1: the first vote decides
    assert first_to_ahead_by_k([None, "x"], 1) == ("x", 2)  # red flags are read, not counted
    assert first_to_ahead_by_k([], 1) is None
    assert first_to_ahead_by_k(["a", "b", "b", "a", "a", "a"], 2) == ("a", 6)
    assert first_to_ahead_by_k(["a", "b", "b", "b"], 2) == ("b", 4)
    with pytest.raises(ConfigError, match="margin"):
        first_to_ahead_by_k(["a"], 0)


def test_survival_threshold_at_whole_and_fractional_counts() -> None:
    assert survival_threshold(10, 0.3) == 3  # 0.3 * 10 is 3, not 3.0000000000000004 -> 4
    assert survival_threshold(10, 0.31) == 4
    assert survival_threshold(10, 0.0) == 0
    assert survival_threshold(10, 0.0, 2) == 2
    assert survival_threshold(10, 0.5, 2) == 5  # the stricter applies
    assert survival_threshold(10, 0.1, 3) == 3
    assert survival_threshold(1, 0.005) == 1
    assert survival_threshold(200, 0.005) == 1 and survival_threshold(201, 0.005) == 2


def test_majority_at_its_smallest_inputs() -> None:
    assert select_majority([]) == []
    assert select_majority([None, None]) == []
    (only,) = select_majority(["7"])
    assert (only.answer, only.members, only.first_index, only.count) == ("7", (0,), 0, 1)
    # A tie in votes goes to the group drawn first; by index, not by position in the list.
    assert select_majority(["a", "b"])[0].answer == "a"
    assert select_majority(["a", "b"], indices=[5, 2])[0].answer == "b"
    # Weights decide first, then more members, then the first index.
    assert select_majority(["a", "b", "b"], weights=[3.0, 1.0, 1.0])[0].answer == "a"
    assert select_majority(["a", "b", "b"], weights=[2.0, 1.0, 1.0])[0].answer == "b"
    assert select_majority(["a", "b"], weights=[1.0, 1.0], indices=[1, 0])[0].answer == "b"
    assert [g.answer for g in select_majority(["a", "b", "b", "c"], 2)] == ["b", "a"]
    with pytest.raises(ConfigError, match="k must be"):
        select_majority(["a"], 0)
    with pytest.raises(ConfigError, match="weights"):
        select_majority(["a"], weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="indices"):
        select_majority(["a"], indices=[0, 1])
    assert vote_counts(group_answers(["x", None, "x", "y"])) == {"x": 2, "y": 1}


def test_best_of_n_and_ranks_at_ties_and_nan() -> None:
    assert rank_by_score([0.5, 0.5, 0.9]) == [2, 0, 1]
    assert rank_by_score([0.5, 0.5], indices=[3, 1]) == [1, 0]
    assert rank_by_score([float("nan"), -1.0]) == [1, 0]  # NaN ranks last
    assert select_best_of_n([0.1]) == [0]
    assert select_best_of_n([0.2, 0.9, 0.9], k=2) == [1, 2]
    assert select_best_of_n([0.9, 0.8, 0.7], k=2, answers=["a", "a", "b"]) == [0, 2]
    assert select_best_of_n([0.9, 0.8], k=2, answers=[None, None]) == [0, 1]
    assert select_best_of_n([0.9, 0.8], k=5, answers=["a", "a"]) == [0]
    assert best_member([0, 1, 2], [0.5, 0.7, 0.7], [2, 9, 4]) == 2
    assert best_member([0, 1], None, [3, 1]) == 1
    with pytest.raises(ConfigError, match="k must be"):
        select_best_of_n([0.1], 0)
    with pytest.raises(ConfigError, match="answers"):
        select_best_of_n([0.1], answers=["a", "b"])


def test_best_of_majority_at_its_threshold() -> None:
    answers = ["a", "a", "a", "b", "b", None]
    scores = [0.2, 0.3, 0.1, 0.9, 0.4, 1.0]
    # min_count 2: a (max 0.3) and b (0.9) survive, the answerless one does not; b wins.
    groups, fell_back = select_best_of_majority(answers, scores, min_count=2)
    assert [g.answer for g in groups] == ["b"] and not fell_back
    # Exactly at the threshold: alpha 0.5 of 6 is 3, a has 3 and survives alone.
    groups, _ = select_best_of_majority(answers, scores, alpha=0.5)
    assert [g.answer for g in groups] == ["a"]
    # Above every group: the mode.
    groups, fell_back = select_best_of_majority(answers, scores, min_count=4)
    assert [g.answer for g in groups] == ["a"] and fell_back
    # alpha 0: the answerless sample is a group of one and has the best score.
    groups, _ = select_best_of_majority(answers, scores)
    assert groups[0].answer is None and groups[0].members == (5,)
    # Mean group score: b (0.65) over a (0.2); ties on the score go to the best member's rank.
    groups, _ = select_best_of_majority(answers, scores, min_count=2, group_score="mean")
    assert groups[0].answer == "b"
    tied, _ = select_best_of_majority(["a", "b"], [0.5, 0.5], indices=[4, 1])
    assert tied[0].answer == "b"
    with pytest.raises(ConfigError, match="group_score"):
        select_best_of_majority(answers, scores, group_score="median")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="scores"):
        select_best_of_majority(answers, scores[:2])
    with pytest.raises(ConfigError, match="k must be"):
        select_best_of_majority(answers, scores, 0)


class SameNumber:
    """Answers are equivalent when they are the same number (1 and 1.0)."""

    def equivalent(self, a: str, b: str) -> bool:
        return float(a) == float(b)


def test_a_merged_group_is_named_after_its_commonest_then_first_drawn_answer() -> None:
    # 1.0 and 1 both twice: the tie goes to the one whose *first* sample came first (1.0 at 0),
    # not to the one whose last sample came first (1 at 2).
    (group,) = group_answers(["1.0", "1", "1", "1.0"], equivalence=SameNumber())
    assert group.answer == "1.0" and group.members == (0, 1, 2, 3) and group.first_index == 0
    (group,) = group_answers(
        ["1.0", "1", "1", "1.0"], indices=[3, 2, 1, 0], equivalence=SameNumber()
    )
    assert group.answer == "1.0"  # by index: 1.0 has index 0 (and 3), 1 has 1 and 2
    (group,) = group_answers(["1", "1.0", "1.0"], equivalence=SameNumber())
    assert group.answer == "1.0"  # more samples first


def test_majority_selects_one_group_unless_asked_for_more() -> None:
    assert [g.answer for g in select_majority(["a", "b", "a"])] == ["a"]
    assert [g.answer for g in select_majority(["a", "b", "a"], 2)] == ["a", "b"]  # the control
