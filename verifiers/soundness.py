"""How far a weak verifier can be trusted (Inference Scaling fLaws, Stroebl et al. 2024).

Score the same candidates with a weak verifier (the one resampling will use, e.g. a problem's
few visible tests) and a strong one taken as the truth (e.g. many hidden tests). Then:

- the false-positive rate: P(passes weak | wrong), wrong meaning "fails strong";
- the ceiling: P(correct | passes weak). Resampling until the weak verifier passes can never beat
  it, because false positives cannot be resampled away;
- per problem, the chance that one sample is correct (c_i) and that it is a false positive (f_i),
  from which :func:`optimal_samples` computes fLaws' K_opt: the number of samples that maximises
  the expected reward when a true positive earns 1 and a false positive costs ``V_FP <= 0``.

K_opt itself comes from :func:`ttscale.laws.optimal_samples_under_weak_verifier`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ttscale.errors import ConfigError, VerifierError
from ttscale.laws import expected_reward_under_weak_verifier, optimal_samples_under_weak_verifier
from ttscale.protocols import Verifier
from ttscale.types import Candidate, Problem, Score

__all__ = [
    "SoundnessEstimate",
    "estimate_soundness",
    "expected_rewards",
    "measure_soundness",
    "optimal_samples",
]


@dataclass(frozen=True)
class SoundnessEstimate:
    """Counts and rates from weak and strong verdicts on the same candidates.

    ``per_problem_correct[i]`` and ``per_problem_false_positive[i]`` are c_i and f_i: the shares of
    problem i's candidates that pass both verifiers, and that pass the weak one only.
    """

    candidates: int
    weak_passes: int
    strong_passes: int
    true_positives: int
    false_positives: int
    false_negatives: int
    per_problem_correct: tuple[float, ...]
    per_problem_false_positive: tuple[float, ...]

    @property
    def false_positive_rate(self) -> float:
        """P(passes weak | fails strong); nan when no candidate failed the strong verifier."""
        wrong = self.candidates - self.strong_passes
        return self.false_positives / wrong if wrong else float("nan")

    @property
    def ceiling(self) -> float:
        """P(passes strong | passes weak); nan when nothing passed the weak verifier."""
        return self.true_positives / self.weak_passes if self.weak_passes else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": self.candidates,
            "weak_passes": self.weak_passes,
            "strong_passes": self.strong_passes,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
            "false_positive_rate": self.false_positive_rate,
            "ceiling": self.ceiling,
        }


def estimate_soundness(
    weak: Sequence[Sequence[bool]], strong: Sequence[Sequence[bool]]
) -> SoundnessEstimate:
    """Soundness from verdicts (pure): ``weak[i][j]`` is the weak verdict on problem i's j-th."""
    if len(weak) != len(strong):
        raise ConfigError(f"weak has {len(weak)} problems, strong {len(strong)}")
    correct_shares, false_positive_shares = [], []
    totals = dict.fromkeys(("n", "weak", "strong", "tp", "fp", "fn"), 0)
    for index, (weak_row, strong_row) in enumerate(zip(weak, strong, strict=True)):
        if len(weak_row) != len(strong_row):
            raise ConfigError(f"problem {index}: {len(weak_row)} weak and {len(strong_row)} strong")
        if len(weak_row) == 0:  # not ``not weak_row``: a numpy row has no truth value
            raise ConfigError(f"problem {index} has no candidates")
        w = np.asarray(weak_row, dtype=bool)
        s = np.asarray(strong_row, dtype=bool)
        true_positives = int(np.sum(w & s))
        false_positives = int(np.sum(w & ~s))
        totals["n"] += len(w)
        totals["weak"] += int(w.sum())
        totals["strong"] += int(s.sum())
        totals["tp"] += true_positives
        totals["fp"] += false_positives
        totals["fn"] += int(np.sum(~w & s))
        correct_shares.append(true_positives / len(w))
        false_positive_shares.append(false_positives / len(w))
    return SoundnessEstimate(
        candidates=totals["n"],
        weak_passes=totals["weak"],
        strong_passes=totals["strong"],
        true_positives=totals["tp"],
        false_positives=totals["fp"],
        false_negatives=totals["fn"],
        per_problem_correct=tuple(correct_shares),
        per_problem_false_positive=tuple(false_positive_shares),
    )


def _verdicts(scores: Sequence[Score], name: str) -> list[bool]:
    if any(score.verdict is None for score in scores):
        raise VerifierError(f"the {name} verifier must be binary (give every score a verdict)")
    return [bool(score.verdict) for score in scores]


async def measure_soundness(
    weak: Verifier,
    strong: Verifier,
    problems: Sequence[tuple[Problem, Problem, Sequence[Candidate]]],
) -> SoundnessEstimate:
    """Score each ``(weak_problem, strong_problem, candidates)`` with both verifiers.

    The weak and strong problems are usually one problem with fewer or more tests.
    """
    weak_rows, strong_rows = [], []
    for weak_problem, strong_problem, candidates in problems:
        weak_scores, strong_scores = await asyncio.gather(
            weak.score(weak_problem, candidates), strong.score(strong_problem, candidates)
        )
        weak_rows.append(_verdicts(weak_scores, "weak"))
        strong_rows.append(_verdicts(strong_scores, "strong"))
    return estimate_soundness(weak_rows, strong_rows)


def expected_rewards(
    estimate: SoundnessEstimate, false_positive_value: float, max_k: int = 200
) -> list[float]:
    """Expected reward of resampling up to k = 0..max_k times until the weak verifier passes."""
    rewards = expected_reward_under_weak_verifier(
        estimate.per_problem_correct,
        estimate.per_problem_false_positive,
        false_positive_value,
        max_k,
    )
    return [float(value) for value in rewards]


def optimal_samples(
    estimate: SoundnessEstimate, false_positive_value: float, max_k: int = 1000
) -> int:
    """fLaws' K_opt for the estimated per-problem rates (``max_k`` means "more keeps helping")."""
    return optimal_samples_under_weak_verifier(
        estimate.per_problem_correct,
        estimate.per_problem_false_positive,
        false_positive_value,
        max_k,
    )
