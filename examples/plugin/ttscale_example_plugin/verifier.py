"""``answer_format``: does a completion end with an answer in the expected form?

A cheap, reference-free check: 1.0 when the extractor finds a final answer in a completion that
was not cut off by the token limit, else 0.0. Useful as a gate before a costlier verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ttscale import Candidate, Problem, Score
from ttscale.registry import build_config
from ttscale.strategies import get_extractor


@dataclass(frozen=True)
class AnswerFormatConfig:
    extractor: str = "boxed"  # any name ttscale.strategies.get_extractor knows


class AnswerFormat:
    def __init__(self, config: AnswerFormatConfig | None = None, **options: Any) -> None:
        self.config = config or build_config(AnswerFormatConfig, options, "answer_format")
        self._extract = get_extractor(self.config.extractor)

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        scores = []
        for candidate in candidates:
            answer = self._extract(candidate.text)
            truncated = candidate.finish_reason == "length"
            ok = answer is not None and not truncated
            reason = "truncated" if truncated else f"answer {answer!r}" if ok else "no answer"
            scores.append(Score(1.0 if ok else 0.0, verdict=ok, reason=reason))
        return scores
