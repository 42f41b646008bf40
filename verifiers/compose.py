"""Verifiers built from verifiers: a weighted sum, a gate and a cascade.

- :class:`WeightedSum`: ``sum(w_i * score_i)`` over verifiers that all score every candidate.
- :class:`Cascade`: stages from cheap to costly. Each stage scores only the candidates that
  survived the stages before it; a candidate survives a stage when its verdict is true (binary
  stages) or its value is at least the stage's threshold. Survivors of every stage but the last
  carry the last stage's score; a candidate dropped on the way gets ``rejected_value`` (default
  minus infinity, so it ranks below every survivor) with the stage and the reason it was dropped.
- :class:`Gate`: a two-stage cascade, e.g. unit tests first, then a reward model ranks the
  candidates that pass.

Members may be verifier objects, plain functions or registered names.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from ttscale.errors import ConfigError
from ttscale.protocols import Verifier, checked_scores
from ttscale.types import Candidate, Problem, Score, Usage
from ttscale.verifiers.base import resolve_verifier

__all__ = ["Cascade", "Gate", "WeightedSum"]


async def _checked(
    verifier: Verifier, problem: Problem, candidates: Sequence[Candidate]
) -> list[Score]:
    return checked_scores(await verifier.score(problem, candidates), candidates, verifier)


def preflight_members(members: Sequence[Verifier]) -> None:
    """Each member's ``preflight``: a member that will refuse to score (unit tests where code
    may not run) says so before anything is drawn, as it would alone."""
    for member in members:
        check = getattr(member, "preflight", None)
        if callable(check):
            check()


def sum_usage(scores: Sequence[Score]) -> Usage | None:
    """The usage the scores carry, summed; None when none carries any."""
    usages = [score.usage for score in scores if score.usage is not None]
    return Usage.total(usages) if usages else None


class WeightedSum:
    """``sum(weight * score)``; the members run concurrently. Verdicts are not combined."""

    def __init__(self, verifiers: Sequence[Any], weights: Sequence[float] | None = None) -> None:
        if not verifiers:
            raise ConfigError("WeightedSum needs at least one verifier")
        self.verifiers = [resolve_verifier(v, "WeightedSum") for v in verifiers]
        self.weights = (
            [float(w) for w in weights] if weights is not None else [1.0] * len(verifiers)
        )
        if len(self.weights) != len(self.verifiers):
            raise ConfigError(
                f"WeightedSum got {len(self.weights)} weights for {len(self.verifiers)} verifiers"
            )

    def preflight(self) -> None:
        preflight_members(self.verifiers)

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        per_verifier = await asyncio.gather(
            *(_checked(verifier, problem, candidates) for verifier in self.verifiers)
        )
        combined = []
        for position in range(len(candidates)):
            parts = [scores[position] for scores in per_verifier]
            pairs = list(zip(self.weights, parts, strict=True))
            # A part with no score (None) leaves the sum without one too.
            known = all(part.value is not None for part in parts)
            value = sum(weight * part.number for weight, part in pairs) if known else None
            reason = " + ".join(f"{weight:g}*{part.number:.4g}" for weight, part in pairs)
            details = {"components": [part.value for part in parts], "weights": self.weights}
            combined.append(Score(value, reason=reason, details=details, usage=sum_usage(parts)))
        return combined


class Cascade:
    """Stages from cheap to costly; see the module docstring.

    ``thresholds[i]`` applies to stage i's scores that carry no verdict (``None`` keeps every
    such candidate). There is one threshold per stage but the last.
    """

    def __init__(
        self,
        stages: Sequence[Any],
        thresholds: Sequence[float | None] | None = None,
        rejected_value: float = -math.inf,
    ) -> None:
        if len(stages) < 2:
            raise ConfigError("a cascade needs at least two stages")
        self.stages = [resolve_verifier(stage, "Cascade") for stage in stages]
        self.thresholds = (
            list(thresholds) if thresholds is not None else [None] * (len(self.stages) - 1)
        )
        if len(self.thresholds) != len(self.stages) - 1:
            raise ConfigError("a cascade takes one threshold per stage but the last")
        self.rejected_value = rejected_value

    @staticmethod
    def _survives(score: Score, threshold: float | None) -> bool:
        if score.verdict is not None:
            return score.verdict
        return threshold is None or score.number >= threshold  # no score (NaN) does not pass

    def preflight(self) -> None:
        preflight_members(self.stages)

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        results: list[Score | None] = [None] * len(candidates)
        history: list[list[dict[str, Any]]] = [[] for _ in candidates]
        spent: list[list[Score]] = [[] for _ in candidates]  # every stage's score, for usage
        alive = list(range(len(candidates)))
        for stage_index, stage in enumerate(self.stages):
            if not alive:
                break
            scores = await _checked(stage, problem, [candidates[i] for i in alive])
            last = stage_index == len(self.stages) - 1
            survivors = []
            for position, score in zip(alive, scores, strict=True):
                history[position].append(
                    {"stage": stage_index, "value": score.value, "verdict": score.verdict}
                )
                spent[position].append(score)
                usage = sum_usage(spent[position])
                if last:
                    details = {**score.details, "stages": history[position]}
                    results[position] = Score(
                        score.value, score.verdict, score.reason, details, usage=usage
                    )
                elif self._survives(score, self.thresholds[stage_index]):
                    survivors.append(position)
                else:
                    reason = f"dropped at stage {stage_index}: {score.reason}".rstrip(": ")
                    results[position] = Score(
                        self.rejected_value,
                        verdict=False,
                        reason=reason,
                        details={"stages": history[position], "dropped_at": stage_index},
                        usage=usage,
                    )
            alive = survivors
        return [score for score in results if score is not None]


class Gate(Cascade):
    """Only candidates that pass ``gate`` (verdict true, or value >= threshold) are ``scorer``-ed.

    The survivors' verdict is the gate's (true), their value the scorer's.
    """

    def __init__(
        self,
        gate: Any,
        scorer: Any,
        threshold: float | None = None,
        rejected_value: float = -math.inf,
    ) -> None:
        super().__init__([gate, scorer], [threshold], rejected_value)

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        scores = await super().score(problem, candidates)
        return [
            dataclasses.replace(s, verdict=True) if "dropped_at" not in s.details else s
            for s in scores
        ]
