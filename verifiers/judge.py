"""An LLM as judge, over any :class:`~ttscale.protocols.Sampler`.

Two modes:

- ``pointwise``: the judge rates the candidate from 0 to ``scale`` (10). The rating is the last
  "Score: N", "Rating: N" or "N/10" in its reply, else the reply itself when it is a bare number
  (:func:`parse_rating`); the score is rating / scale. With ``samples > 1`` the parsed ratings
  average.
- ``yes_no``: the judge answers whether the candidate is correct. Where the server returns
  logprobs, the score is the probability of "yes" at the first yes/no token (normalised over
  "yes" and "no" when both are among the alternatives); otherwise 1.0 for yes and 0.0 for no.
  The verdict is ``score >= 0.5``.

A candidate whose judge replies hold no rating (no yes/no) gets no score: value
``unparsed_value`` (None by default: not a low score), no verdict, ``details["unparsed"]`` and
the reply in the reason. Each :meth:`LLMJudge.score` call counts them and logs one WARNING, and
selection ranks such candidates after every scored one (best-of-N says when none was scored and
it fell back). A call the sampler's budget refuses leaves its candidate unjudged the same way,
with ``details["unjudged"]``.

The prompt templates take ``{prompt}``, ``{candidate}`` and ``{reference}`` (the problem's answer,
or "(none)").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ttscale.errors import BudgetExhausted, ConfigError, VerifierError
from ttscale.protocols import Sampler, as_sampler
from ttscale.registry import resolve_config
from ttscale.types import Candidate, Problem, SamplingParams, Score, TokenLogprob
from ttscale.verifiers.base import LoopBound
from ttscale.verifiers.reward_model import check_template, format_pair

__all__ = [
    "JudgeConfig",
    "JudgeMode",
    "LLMJudge",
    "parse_rating",
    "parse_yes_no",
    "yes_probability",
]

log = logging.getLogger(__name__)

JudgeMode = Literal["pointwise", "yes_no"]

POINTWISE_TEMPLATE = (
    "Rate how good and correct the response is to the problem, from 0 (wrong) to 10 (perfect).\n"
    "Problem:\n{prompt}\n\nReference answer: {reference}\n\nResponse:\n{candidate}\n\n"
    "Reply with a short justification, then 'Score: N' on the last line."
)
YES_NO_TEMPLATE = (
    "Is the response a correct answer to the problem?\n"
    "Problem:\n{prompt}\n\nReference answer: {reference}\n\nResponse:\n{candidate}\n\n"
    "Answer with Yes or No only."
)

_RATING_PATTERNS = (
    re.compile(r"(?:score|rating)\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"(\d+(?:\.\d+)?)\s*/\s*10\b"),
)
_BARE_NUMBER = re.compile(r"^\s*\**(\d+(?:\.\d+)?)\**\s*\.?\s*$")
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_rating(text: str, scale: float = 10.0) -> float | None:
    """The judge's rating in [0, scale], or None when the reply holds none (pure)."""
    for pattern in _RATING_PATTERNS:
        found = pattern.findall(text)
        if found:
            value = float(found[-1])
            return value if 0 <= value <= scale else None
    bare = _BARE_NUMBER.match(text)
    if bare:
        value = float(bare.group(1))
        return value if 0 <= value <= scale else None
    return None


def parse_yes_no(text: str) -> bool | None:
    """The first "yes" or "no" word in the reply, or None (pure)."""
    found = _YES_NO.search(text)
    return None if found is None else found.group(1).lower() == "yes"


def _word(token: str) -> str:
    return token.strip().strip(".,:;!*\"'").lower()


def yes_probability(logprobs: Sequence[TokenLogprob]) -> float | None:
    """P("yes") at the first token that reads yes or no, from its logprobs (pure).

    With both "yes" and "no" among that token's alternatives the two are renormalised, which
    removes the mass spent on other tokens. With one only: p(yes), or 1 - p(no).
    """
    for item in logprobs:
        if _word(item.token) not in ("yes", "no"):
            continue
        # The chosen token is usually listed among the alternatives too: a dict counts it once.
        alternatives = dict(item.top)
        alternatives.setdefault(item.token, item.logprob)
        mass = {"yes": 0.0, "no": 0.0}
        seen = set()
        for token, logprob in alternatives.items():
            word = _word(token)
            if word in mass:
                mass[word] += math.exp(logprob)
                seen.add(word)
        if seen == {"yes", "no"}:
            return mass["yes"] / (mass["yes"] + mass["no"])
        return mass["yes"] if "yes" in seen else 1.0 - mass["no"]
    return None


@dataclass(frozen=True)
class JudgeConfig:
    """Settings of an :class:`LLMJudge`. ``template`` defaults to the mode's own."""

    mode: JudgeMode = "pointwise"
    template: str | None = None
    scale: float = 10.0
    samples: int = 1
    unparsed_value: float | None = None
    concurrency: int = 8
    params: SamplingParams = field(
        default_factory=lambda: SamplingParams(temperature=0.0, max_tokens=512)
    )

    def __post_init__(self) -> None:
        if self.mode not in ("pointwise", "yes_no"):
            raise ConfigError(f"judge mode must be pointwise or yes_no, got {self.mode!r}")
        if self.template is not None:
            check_template(self.template, ("prompt", "candidate", "reference"))
        if self.samples < 1 or self.concurrency < 1 or self.scale <= 0:
            raise ConfigError("samples and concurrency must be >= 1, scale > 0")
        if self.mode == "yes_no" and self.params.logprobs is None:
            # Ask for alternatives so both "yes" and "no" can be read off one token.
            object.__setattr__(self, "params", self.params.replace(logprobs=5))


class LLMJudge:
    """Scores candidates by asking a model through ``sampler``. See the module docstring."""

    def __init__(self, sampler: Any, config: JudgeConfig | None = None, **options: Any) -> None:
        config = resolve_config(JudgeConfig, config, options, "LLMJudge")
        self.sampler: Sampler = as_sampler(sampler)
        self.config = config
        default = POINTWISE_TEMPLATE if config.mode == "pointwise" else YES_NO_TEMPLATE
        self.template = config.template or default
        self._bound = LoopBound(config.concurrency)

    def judge_prompt(self, problem: Problem, candidate: Candidate) -> str:
        reference = problem.answer if problem.answer is not None else "(none)"
        return format_pair(problem, candidate, self.template.replace("{reference}", reference))

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        scores = list(await asyncio.gather(*(self._one(problem, c) for c in candidates)))
        unread = sum(1 for score in scores if score.details.get("unparsed"))
        if unread:
            log.warning(
                "judge: %d of %d candidates got replies with no %s (first: %r); they have no "
                "score (%s), and selection ranks them after the scored ones",
                unread,
                len(scores),
                "rating" if self.config.mode == "pointwise" else "yes or no",
                next(s.reason for s in scores if s.details.get("unparsed"))[:200],
                self.config.unparsed_value,
            )
        return scores

    async def _one(self, problem: Problem, candidate: Candidate) -> Score:
        prompt = self.judge_prompt(problem, candidate)
        try:
            async with self._bound.semaphore():
                batch = await self.sampler.sample(prompt, self.config.samples, self.config.params)
        except BudgetExhausted as exc:
            # A budget refusal ends judging, not the run: the samples are paid for, and a
            # candidate left unjudged says so rather than taking a verdict.
            reason = f"not judged: the budget refused the judge's call ({exc})"
            return Score(self.config.unparsed_value, reason=reason, details={"unjudged": True})
        replies = batch.candidates
        if not replies:
            raise VerifierError("the judge's sampler returned no reply")
        pointwise = self.config.mode == "pointwise"
        score = self._pointwise(replies) if pointwise else self._yes_no(replies)
        return dataclasses.replace(score, usage=batch.usage)

    def _pointwise(self, replies: Sequence[Candidate]) -> Score:
        ratings = [parse_rating(reply.text, self.config.scale) for reply in replies]
        parsed = [rating for rating in ratings if rating is not None]
        details: dict[str, Any] = {"ratings": ratings, "replies": [reply.text for reply in replies]}
        if not parsed:
            reason = f"no rating found in the judge's reply: {replies[0].text[:200]!r}"
            details["unparsed"] = True
            return Score(self.config.unparsed_value, reason=reason, details=details)
        mean = sum(parsed) / len(parsed)
        reason = f"rated {mean:g}/{self.config.scale:g} ({len(parsed)} of {len(ratings)} parsed)"
        return Score(mean / self.config.scale, reason=reason, details=details)

    def _yes_no(self, replies: Sequence[Candidate]) -> Score:
        probabilities = []
        sources = []
        for reply in replies:
            from_logprobs = yes_probability(reply.logprobs) if reply.logprobs else None
            if from_logprobs is not None:
                probabilities.append(from_logprobs)
                sources.append("logprobs")
                continue
            said = parse_yes_no(reply.text)
            if said is not None:
                probabilities.append(1.0 if said else 0.0)
                sources.append("text")
        details: dict[str, Any] = {"replies": [r.text for r in replies], "sources": sources}
        if not probabilities:
            reason = f"no yes/no in the judge's reply: {replies[0].text[:200]!r}"
            details["unparsed"] = True
            return Score(self.config.unparsed_value, reason=reason, details=details)
        p_yes = sum(probabilities) / len(probabilities)
        verdict = p_yes >= 0.5
        reason = f"judge says {'yes' if verdict else 'no'} (P(yes) = {p_yes:.3f}, {sources[0]})"
        return Score(p_yes, verdict=verdict, reason=reason, details=details)
