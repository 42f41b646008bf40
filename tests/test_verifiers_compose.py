"""Composition (weighted sum, gate, cascade), soundness and K_opt (fLaws), and the registry."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from ttscale.errors import ConfigError, VerifierError
from ttscale.protocols import as_verifier
from ttscale.registry import available, create
from ttscale.types import Candidate, Problem, Score
from ttscale.verifiers.compose import Cascade, Gate, WeightedSum
from ttscale.verifiers.soundness import (
    estimate_soundness,
    expected_rewards,
    measure_soundness,
    optimal_samples,
)

PROBLEM = Problem(
    id="add", prompt="Write add(a, b).", tests="assert add(1, 2) == 3\n", answer="unused"
)


def candidates(*texts: str) -> list[Candidate]:
    return [Candidate(text=text, index=i) for i, text in enumerate(texts)]


def score(verifier: Any, texts: Sequence[str], problem: Problem = PROBLEM) -> list[Score]:
    return list(asyncio.run(verifier.score(problem, candidates(*texts))))


class Recording:
    """Scores by a function of the text and records which texts it saw."""

    def __init__(self, rule: Any, binary: bool = False) -> None:
        self.rule = rule
        self.binary = binary
        self.seen: list[str] = []

    async def score(self, problem: Problem, batch: Sequence[Candidate]) -> list[Score]:
        self.seen.extend(c.text for c in batch)
        values = [float(self.rule(c.text)) for c in batch]
        return [Score(v, verdict=(v > 0) if self.binary else None, reason="r") for v in values]


def test_weighted_sum() -> None:
    length = as_verifier(lambda problem, batch: [len(c.text) for c in batch])
    has_a = as_verifier(lambda problem, batch: [1.0 if "a" in c.text else 0.0 for c in batch])
    combined = create("verifier", "weighted", verifiers=[length, has_a], weights=[0.5, 2.0])
    assert isinstance(combined, WeightedSum)
    assert [s.value for s in score(combined, ["ab", "bbbb"])] == [3.0, 2.0]
    with pytest.raises(ConfigError):
        WeightedSum([length], weights=[1.0, 2.0])


def test_gate_scores_only_what_passes() -> None:
    gate = Recording(lambda text: "ok" in text, binary=True)
    reward = Recording(len)
    gated = create("verifier", "gate", gate=gate, scorer=reward)
    assert isinstance(gated, Gate)
    scores = score(gated, ["ok-long", "bad", "ok"])
    assert reward.seen == ["ok-long", "ok"]
    assert [s.value for s in scores] == [7.0, -math.inf, 2.0]
    assert [s.verdict for s in scores] == [True, False, True]
    assert scores[1].details["dropped_at"] == 0


def test_gate_with_real_unit_tests_then_a_reward() -> None:
    tests = create("verifier", "unit_tests", allow_code_execution=True)
    shorter_is_better = as_verifier(lambda problem, batch: [-len(c.text) for c in batch])
    gated = Gate(tests, shorter_is_better)
    right_long = "def add(a, b):\n    total = a + b\n    return total\n"
    right_short = "def add(a, b):\n    return a + b\n"
    wrong = "def add(a, b):\n    return 0\n"
    scores = score(gated, [right_long, wrong, right_short])
    best = max(range(3), key=lambda i: scores[i].value)
    assert best == 2 and scores[1].value == -math.inf
    assert "fail" in scores[1].reason


def test_cascade_with_thresholds() -> None:
    cheap = Recording(len)
    middle = Recording(lambda text: text.count("x"))
    costly = Recording(lambda text: 100 - len(text))
    cascade = create(
        "verifier", "cascade", stages=[cheap, middle, costly], thresholds=[3, 1], rejected_value=-1
    )
    assert isinstance(cascade, Cascade)
    scores = score(cascade, ["ab", "abc", "xxxx", "xyz"])
    assert middle.seen == ["abc", "xxxx", "xyz"] and costly.seen == ["xxxx", "xyz"]
    assert [s.value for s in scores] == [-1, -1, 96.0, 97.0]
    assert [s.details.get("dropped_at") for s in scores] == [0, 1, None, None]
    with pytest.raises(ConfigError):
        Cascade([cheap])


def test_a_member_returning_the_wrong_count_is_an_error() -> None:
    with pytest.raises(VerifierError):
        score(WeightedSum([Recording(len), _Short()]), ["a", "b"])


class _Short:
    async def score(self, problem: Problem, batch: Sequence[Candidate]) -> list[Score]:
        return [Score(1.0)]


def test_every_documented_name_is_registered() -> None:
    names = set(available("verifier"))
    expected = {"unit_tests", "math", "exact_match", "reward_model", "judge"}
    assert expected | {"weighted", "gate", "cascade"} <= names


# -- soundness and K_opt (fLaws) ------------------------------------------------------------------


def test_estimate_soundness_counts() -> None:
    weak = [[True, True, False, True], [True, False]]
    strong = [[True, False, False, False], [True, True]]
    estimate = estimate_soundness(weak, strong)
    assert estimate.true_positives == 2 and estimate.false_positives == 2
    assert estimate.false_negatives == 1
    assert estimate.ceiling == 0.5
    assert estimate.false_positive_rate == 2 / 3  # 2 of the 3 wrong candidates passed weak
    assert estimate.per_problem_correct == (0.25, 0.5)
    assert estimate.per_problem_false_positive == (0.5, 0.0)
    with pytest.raises(ConfigError):
        estimate_soundness([[True]], [[True, False]])


def two_type_verdicts(seed: int = 0) -> tuple[list[list[bool]], list[list[bool]], float]:
    """Synthetic data of two problem types, as in fLaws' argument.

    Sound problems: a sample is correct with p = 0.3 and the weak tests reject every wrong one.
    Unsound problems: a sample rarely passes the weak tests (1%), and most that pass are wrong
    (0.6% false positives against 0.4% correct). Resampling first finds the sound problems'
    answers, then keeps digging up false positives. Returns the weak and strong verdicts and the
    true ceiling P(correct | passes weak).
    """
    rng = np.random.default_rng(seed)
    samples = 1000
    weak, strong = [], []
    for problem in range(40):
        draw = rng.random(samples)
        if problem % 2 == 0:
            correct = draw < 0.3
            passes = correct
        else:
            correct = draw < 0.004
            passes = draw < 0.01
        strong.append(correct.tolist())
        weak.append(passes.tolist())
    correct_share, false_positive_share = (0.3 + 0.004) / 2, 0.006 / 2
    return weak, strong, correct_share / (correct_share + false_positive_share)


def test_soundness_on_two_type_data_reproduces_flaws() -> None:
    weak, strong, true_ceiling = two_type_verdicts()
    estimate = estimate_soundness(weak, strong)
    assert abs(estimate.ceiling - true_ceiling) < 0.01
    assert 0.001 < estimate.false_positive_rate < 0.01

    costs = [0.0, -1.0, -2.0, -4.0, -8.0]
    k_opts = [optimal_samples(estimate, cost, max_k=1000) for cost in costs]
    # With free false positives more samples always help (fLaws: K_opt >= 200 at cost 0); once
    # a false positive costs something the best number of samples is finite and small, and it
    # shrinks as the cost grows.
    assert k_opts[0] >= 200
    assert all(k < 50 for k in k_opts[1:])
    assert k_opts == sorted(k_opts, reverse=True)
    assert k_opts[-1] < k_opts[1]
    rewards = expected_rewards(estimate, -2.0, max_k=300)
    assert rewards[0] == 0.0
    assert max(rewards) == rewards[k_opts[2]]
    assert rewards[-1] < rewards[k_opts[2]]  # past K_opt, more samples hurt


def test_measure_soundness_with_real_weak_and_strong_tests() -> None:
    tests = create("verifier", "unit_tests", allow_code_execution=True)
    weak = Problem(id="abs", prompt="Write f(x) = |x|.", tests="assert f(2) == 2\n")
    strong = Problem(
        id="abs", prompt="Write f(x) = |x|.", tests="assert f(2) == 2\nassert f(-3) == 3\n"
    )
    batch = candidates(
        "def f(x):\n    return abs(x)\n",
        "def f(x):\n    return x\n",  # passes the weak test only: a false positive
        "def f(x):\n    return 0\n",
    )
    estimate = asyncio.run(measure_soundness(tests, tests, [(weak, strong, batch)]))
    assert (estimate.true_positives, estimate.false_positives) == (1, 1)
    assert estimate.ceiling == 0.5 and estimate.false_positive_rate == 0.5


# -- members by name: built as the registry builds any verifier --------------------------------

RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return 0\n"


def test_a_named_member_that_runs_code_gets_the_composed_verifiers_permission() -> None:
    gated = create(
        "verifier", "gate", gate="unit_tests", scorer=lambda p, b: [1.0] * len(b),
        allow_code_execution=True,
    )  # fmt: skip
    assert [s.verdict for s in score(gated, [RIGHT, WRONG])] == [True, False]
    # ...and options given with a name are the member's.
    summed = create(
        "verifier", "weighted",
        verifiers=[{"name": "unit_tests", "timeout_s": 5.0}, {"name": "exact_match"}],
        allow_code_execution=True,
    )  # fmt: skip
    assert summed.verifiers[0].config.timeout_s == 5.0
    assert summed.needs_reference  # its members grade against the problem's tests and answer
    # Control: without the permission the same member refuses before scoring.
    from ttscale.errors import SandboxRefused

    refusing = create("verifier", "gate", gate="unit_tests", scorer=lambda p, b: [1.0] * len(b))
    with pytest.raises(SandboxRefused):
        refusing.preflight()


def test_a_member_may_not_grant_itself_code_execution() -> None:
    with pytest.raises(ConfigError, match="allow_code_execution is the server's to set") as caught:
        create(
            "verifier", "cascade",
            stages=[{"name": "unit_tests", "allow_code_execution": True}, "exact_match"],
        )  # fmt: skip
    assert caught.value.param is not None and "stages[0]" in caught.value.param
    with pytest.raises(ConfigError, match="needs a verifier 'name'"):
        create("verifier", "weighted", verifiers=[{"model": "x"}])


def test_a_named_judge_member_asks_the_composed_verifiers_sampler() -> None:
    from ttscale.testing import ScriptedSampler

    asked = ScriptedSampler(lambda prompt, index: "Score: 9")
    summed = create(
        "verifier", "weighted", verifiers=[{"name": "judge", "scale": 10}], sampler=asked
    )
    scores = score(summed, [RIGHT])
    assert scores[0].value == pytest.approx(0.9) and asked.calls
