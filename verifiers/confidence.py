"""The ``confidence`` verifier: a candidate's score is the model's own confidence in it.

No reward model and no reference answer: the score is a measure of :mod:`ttscale.confidence` over
the candidate's token logprobs, so best-of-N, weighted majority and Best-of-Majority use it like
any verifier (self-certainty best-of-N, Kang et al. 2025; confidence-weighted self-consistency).
The candidates must carry logprobs, with the top alternatives for every measure but
``mean_logprob``: draw with ``SamplingParams(logprobs=20)`` (``ttscale.logprobs`` in a proxy
request). A candidate without them raises :class:`~ttscale.confidence.MissingLogprobs`.

Every score is positive, so that weighted votes add up: the DeepConf measures and self-certainty
are positive by definition, and ``mean_logprob`` is reported as the geometric mean probability of
the chosen tokens, ``exp(mean logprob)``, with the mean logprob itself in the details.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ttscale.confidence import MEASURES, ConfidenceSettings, measure
from ttscale.errors import ConfigError
from ttscale.types import Candidate, Problem, Score

__all__ = ["ConfidenceVerifier"]


@dataclass(frozen=True)
class ConfidenceVerifier:
    """Scores each candidate by ``measure`` (a name in :data:`ttscale.confidence.MEASURES`).

    ``window``, ``top_k``, ``bottom_fraction`` and ``tail`` are the
    :class:`~ttscale.confidence.ConfidenceSettings` the measure reads the trace with.
    """

    measure: str = "bottom"
    window: int = 32
    top_k: int | None = None
    bottom_fraction: float = 0.1
    tail: int | None = None

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ConfigError(
                f"unknown confidence measure {self.measure!r}; known: {', '.join(MEASURES)}"
            )
        self.settings  # noqa: B018  # checks the settings now, not at the first score

    @property
    def wants_logprobs(self) -> int:
        """The ``logprobs`` its candidates must be drawn with: the chosen token's alone for
        ``mean_logprob``, else the top-k alternatives (``top_k``, or the most servers give)."""
        if self.measure == "mean_logprob":
            return 0
        return self.top_k if self.top_k is not None else 20

    @property
    def settings(self) -> ConfidenceSettings:
        return ConfidenceSettings(
            window=self.window,
            top_k=self.top_k,
            bottom_fraction=self.bottom_fraction,
            tail=self.tail,
        )

    def score_one(self, candidate: Candidate) -> Score:
        """The score of one candidate (pure; raises MissingLogprobs without logprobs)."""
        value = measure(self.measure, candidate, self.settings)
        if self.measure == "mean_logprob":
            return Score(math.exp(value), details={"measure": self.measure, "mean_logprob": value})
        return Score(value, details={"measure": self.measure})

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        return [self.score_one(candidate) for candidate in candidates]
