"""Confidence measures against hand-computed examples, the online rule, and the verifier."""

from __future__ import annotations

import asyncio
import math

import pytest

from ttscale.confidence import (
    MEASURES,
    ConfidenceSettings,
    GroupConfidenceWatch,
    MissingLogprobs,
    bottom_confidence,
    group_confidences,
    lowest_group_confidence,
    mean_confidence,
    mean_logprob,
    measure,
    percentile,
    self_certainty,
    stop_position,
    tail_confidence,
    token_confidence,
    token_confidences,
)
from ttscale.errors import ConfigError, TTScaleError
from ttscale.registry import create
from ttscale.types import Candidate, Problem, TokenLogprob
from ttscale.verifiers.confidence import ConfidenceVerifier


def tok(logprob: float, *alternatives: float) -> TokenLogprob:
    """A token whose top list is the chosen token then ``alternatives``."""
    top = (("x", logprob), *((f"a{i}", value) for i, value in enumerate(alternatives)))
    return TokenLogprob("x", logprob, top)


def candidate(tokens: list[TokenLogprob] | None, index: int = 0) -> Candidate:
    return Candidate(text="t", index=index, logprobs=None if tokens is None else tuple(tokens))


# -- token confidence ------------------------------------------------------------------------


def test_token_confidence_is_the_negative_mean_of_the_top_k_logprobs() -> None:
    token = tok(-0.5, -1.0, -3.0)
    assert token_confidence(token) == pytest.approx((0.5 + 1.0 + 3.0) / 3)
    # top_k takes the k most likely, whatever order the server listed them in.
    shuffled = TokenLogprob("x", -0.5, (("b", -3.0), ("x", -0.5), ("a", -1.0)))
    assert token_confidence(shuffled, top_k=2) == pytest.approx(0.75)


def test_a_peaked_token_is_more_confident_than_a_flat_one() -> None:
    assert token_confidence(tok(-0.01, -6.0, -9.0)) > token_confidence(tok(-1.0, -1.1, -1.2))


# -- groups and trace scores -----------------------------------------------------------------

CONFS = [4.0, 2.0, 6.0, 1.0, 3.0]  # hand-picked token confidences


def trace_of(confidences: list[float]) -> list[TokenLogprob]:
    # One alternative equal to the chosen token: C_i = -logprob exactly.
    return [TokenLogprob("x", -c, (("x", -c),)) for c in confidences]


def test_group_confidences_are_sliding_window_means() -> None:
    assert group_confidences(CONFS, 2) == pytest.approx([3.0, 4.0, 3.5, 2.0])
    assert group_confidences(CONFS, 3) == pytest.approx([4.0, 3.0, 10 / 3])
    # Shorter than the window: one group, the mean of everything.
    assert group_confidences(CONFS, 10) == pytest.approx([16 / 5])


def test_trace_scores_by_hand() -> None:
    trace = trace_of(CONFS)
    settings = ConfidenceSettings(window=2, bottom_fraction=0.5, tail=2)
    assert token_confidences(trace) == pytest.approx(CONFS)
    assert mean_confidence(trace) == pytest.approx(16 / 5)
    assert lowest_group_confidence(trace, settings) == pytest.approx(2.0)
    # Groups 3, 4, 3.5, 2: the lowest half is {2, 3}.
    assert bottom_confidence(trace, settings) == pytest.approx(2.5)
    assert tail_confidence(trace, settings) == pytest.approx(2.0)
    # Bottom 10% of four groups is at least one group: the lowest.
    assert bottom_confidence(trace, ConfidenceSettings(window=2)) == pytest.approx(2.0)


def test_mean_logprob_needs_no_alternatives() -> None:
    tokens = [TokenLogprob("a", -0.2), TokenLogprob("b", -0.4)]
    assert mean_logprob(tokens) == pytest.approx(-0.3)
    with pytest.raises(MissingLogprobs, match="top"):
        token_confidences(tokens)


def test_self_certainty_by_hand() -> None:
    # The top 3 hold p = 0.4, 0.2, 0.2 (S = 0.8): renormalised 0.5, 0.25, 0.25.
    token = tok(math.log(0.4), math.log(0.2), math.log(0.2))
    exact = sum((1 / 3) * math.log((1 / 3) / q) for q in (0.5, 0.25, 0.25))  # KL(U_3 || q)
    assert self_certainty([token]) == pytest.approx(exact)
    # It is the token confidence plus log S - log k.
    relation = token_confidence(token) + math.log(0.8) - math.log(3)
    assert self_certainty([token]) == pytest.approx(relation)


def test_self_certainty_ranks_peaked_above_flat_and_stays_finite() -> None:
    peaked = [tok(-0.01, -6.0, -8.0)]
    flat = [tok(-1.0, -1.1, -1.2)]  # a top list summing past 1, as rounding servers send
    assert self_certainty(peaked) > self_certainty(flat) >= 0
    assert math.isfinite(self_certainty([tok(0.0, -40.0)]))
    # A uniform top k diverges from nothing.
    assert self_certainty([tok(-1.0, -1.0, -1.0)]) == pytest.approx(0.0)


def test_every_measure_fails_clearly_without_logprobs() -> None:
    for name in MEASURES:
        with pytest.raises(MissingLogprobs, match="logprobs") as caught:
            measure(name, candidate(None))
        assert isinstance(caught.value, TTScaleError)
    # Control: the same measures work once logprobs are there.
    for name in MEASURES:
        assert math.isfinite(measure(name, candidate(trace_of(CONFS))))
    with pytest.raises(ConfigError, match="unknown confidence measure"):
        measure("nope", candidate(trace_of(CONFS)))


def test_percentile_interpolates_like_numpy() -> None:
    np = pytest.importorskip("numpy")
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    for q in (0, 10, 37.5, 50, 90, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


# -- the online rule ---------------------------------------------------------------------------


def test_stop_position_is_where_the_window_mean_first_crosses() -> None:
    confidences = [5.0, 5.0, 5.0, 1.0, 1.0, 5.0]
    # Windows of 2: 5, 5, 3, 1, ... first below 2.5 is the window ending at token 5.
    assert stop_position(confidences, 2, 2.5) == 5
    assert stop_position(confidences, 2, 3.5) == 4
    # Never below: no stop; fewer tokens than a window: no stop.
    assert stop_position(confidences, 2, 0.5) is None
    assert stop_position(confidences[:1], 2, 10.0) is None
    # Below from the first full window.
    assert stop_position(confidences, 2, 100.0) == 2


@pytest.mark.parametrize("threshold", [0.5, 2.5, 3.5, 4.0, 100.0])
def test_the_watch_stops_at_the_same_token_as_stop_position(threshold: float) -> None:
    confidences = [5.0, 5.0, 5.0, 1.0, 1.0, 5.0, 0.2, 0.3]
    watch = GroupConfidenceWatch(2, threshold)
    stopped_at = None
    for position, token in enumerate(trace_of(confidences), start=1):
        if watch.feed(token):
            stopped_at = position
            break
    assert stopped_at == stop_position(confidences, 2, threshold)


# -- the verifier ------------------------------------------------------------------------------

PROBLEM = Problem(id="p", prompt="q")


def test_the_verifier_scores_by_the_chosen_measure() -> None:
    sure = candidate(trace_of([6.0, 6.0, 6.0]), 0)
    unsure = candidate(trace_of([6.0, 0.5, 6.0]), 1)
    verifier = ConfidenceVerifier(measure="lowest_group", window=2)
    scores = asyncio.run(verifier.score(PROBLEM, [sure, unsure]))
    assert [s.value for s in scores] == pytest.approx([6.0, 3.25])
    # mean_logprob is reported as a probability so that weighted votes add up.
    by_logprob = ConfidenceVerifier(measure="mean_logprob")
    value = asyncio.run(by_logprob.score(PROBLEM, [sure]))[0]
    assert value.value == pytest.approx(math.exp(-6.0))
    assert value.details["mean_logprob"] == pytest.approx(-6.0)


def test_the_verifier_is_registered_and_checks_its_options() -> None:
    verifier = create("verifier", "confidence", measure="self_certainty")
    assert isinstance(verifier, ConfidenceVerifier)
    with pytest.raises(ConfigError, match="unknown confidence measure"):
        ConfidenceVerifier(measure="entropy")
    with pytest.raises(ConfigError, match="window"):
        ConfidenceVerifier(window=0)


def test_the_verifier_refuses_candidates_without_logprobs() -> None:
    verifier = ConfidenceVerifier()
    with pytest.raises(MissingLogprobs):
        asyncio.run(verifier.score(PROBLEM, [candidate(None)]))
