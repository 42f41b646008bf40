"""Core value types: problems, sampling settings, candidates, usage, scores and results.

All are frozen dataclasses over plain data so that pure logic (voting, selection, estimators) can
work on them without an event loop, and so that results serialise to JSON without surprises.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ttscale.errors import ConfigError, DataError

__all__ = [
    "CUT_SHORT_REASONS",
    "LOGPROB_FLOOR",
    "Candidate",
    "Message",
    "Pricing",
    "Problem",
    "Prompt",
    "Result",
    "SampleBatch",
    "SamplingParams",
    "Score",
    "TokenLogprob",
    "TraceEvent",
    "Usage",
    "logprob_value",
]

Message = Mapping[str, Any]
"""One chat message, as the OpenAI API spells it: ``{"role": "user", "content": "..."}``."""

Prompt = str | Sequence[Message]
"""What a sampler is asked to continue: plain text, or a list of chat messages."""

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # A read-only view keeps a frozen dataclass honest about the dicts it holds.
    return MappingProxyType(dict(value)) if value else _EMPTY


@dataclass(frozen=True)
class Problem:
    """One task: a prompt (text or chat messages) with what is needed to check an answer."""

    id: str
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    answer: str | None = None
    tests: str | None = None
    entry_point: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise DataError("a problem needs a non-empty string id", field="id")
        if (self.prompt is None) == (self.messages is None):
            raise DataError(
                f"problem {self.id!r} needs exactly one of 'prompt' or 'messages'",
                field="prompt",
            )
        if self.messages is not None:
            messages = tuple(self.messages)
            for position, message in enumerate(messages):
                if not isinstance(message, Mapping) or "role" not in message:
                    raise DataError(
                        f"problem {self.id!r}: message {position} needs a 'role'",
                        field=f"messages[{position}]",
                    )
            object.__setattr__(self, "messages", messages)
        object.__setattr__(self, "metadata", _frozen_mapping(self.metadata))

    @property
    def input(self) -> Prompt:
        """The prompt as a sampler takes it."""
        if self.messages is not None:
            return self.messages
        assert self.prompt is not None  # __post_init__ guarantees one of the two
        return self.prompt


@dataclass(frozen=True)
class SamplingParams:
    """Settings passed through to the model server for every sample of a draw.

    ``seed`` is a base seed: each sample gets its own seed derived from it and the sample's index,
    so that no two samples are identical seeded requests. ``logprobs`` is the number of alternatives
    per token to return (0 returns the chosen token's logprob only; ``None`` asks for none).
    """

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    logprobs: int | None = None
    seed: int | None = None
    extra_body: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        # Written so that NaN fails too (every comparison with NaN is false).
        if self.temperature is not None and not 0 <= self.temperature < math.inf:
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ConfigError(f"logprobs must be >= 0, got {self.logprobs}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif self.stop is not None:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "extra_body", _frozen_mapping(self.extra_body))

    def replace(self, **changes: Any) -> SamplingParams:
        return dataclasses.replace(self, **changes)


LOGPROB_FLOOR = -100.0
"""The lowest log probability kept (e^-100: far below any token a model would be scored on)."""

# A logprob is <= 0; servers computing in float32 may print a sure token's as a hair above 0.
_LOGPROB_ROUNDING = 1e-3


def logprob_value(raw: object) -> float:
    """A log probability as ttscale keeps it: a float in ``[LOGPROB_FLOOR, 0]``.

    ``-inf`` (a token the sampler ruled out) and anything below the floor (vLLM writes -9999 for
    ``-inf``) become the floor, so that confidences stay finite and window means stay exact; a
    positive value within rounding is 0. NaN, ``+inf``, a larger positive value and anything
    that is not a number raise :class:`~ttscale.errors.DataError`: such a number means nothing,
    and reading it as any value could flip a vote.
    """
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
        raise DataError(f"a logprob must be a number, got {raw!r}")
    value = float(raw)
    if math.isnan(value) or value > _LOGPROB_ROUNDING:
        raise DataError(f"a logprob must be a number <= 0, got {raw!r}")
    return min(max(value, LOGPROB_FLOOR), 0.0)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token with its log probability and, when asked for, the top alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


CUT_SHORT_REASONS = frozenset({"error", "cancelled"})
"""Finish reasons of a sample a failure ended part way (a stream that broke off, a draw that was
cancelled): its tokens were paid for, but the text is not what the model would have written."""


@dataclass(frozen=True)
class Candidate:
    """One sampled answer.

    ``index`` is the sample's position in the problem's draw (0-based); seeds derive from it.
    ``completion_tokens`` is exact when ``tokens_exact`` is true. Servers report one completion
    total per request, so for a request that returned several choices without logprobs the total
    is apportioned over its choices by length; the sum over a request always equals what the
    server said.
    """

    text: str
    index: int
    finish_reason: str | None = None
    completion_tokens: int = 0
    tokens_exact: bool = True
    seed: int | None = None
    model: str = ""
    latency_s: float = 0.0
    temperature: float | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    request_id: str | None = None

    @property
    def cut_short(self) -> bool:
        """Whether a failure, not the model, a stop string or a watcher, ended this sample."""
        return self.finish_reason in CUT_SHORT_REASONS

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.logprobs is not None:
            data["logprobs"] = [
                {"token": t.token, "logprob": t.logprob, "top": [list(p) for p in t.top]}
                for t in self.logprobs
            ]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        """The inverse of :meth:`to_dict`; unknown keys are ignored (pure)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        logprobs = values.get("logprobs")
        values["logprobs"] = (
            tuple(
                TokenLogprob(
                    token=str(item["token"]),
                    logprob=logprob_value(item["logprob"]),
                    top=tuple(
                        (str(token), logprob_value(value)) for token, value in item.get("top") or ()
                    ),
                )
                for item in logprobs
            )
            if isinstance(logprobs, list | tuple)
            else None
        )
        return cls(**values)


@dataclass(frozen=True)
class Pricing:
    """A model's price in dollars per million input (prompt) and output (completion) tokens."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million
        ) / 1_000_000


@dataclass(frozen=True)
class Usage:
    """What a piece of work spent.

    ``requests`` counts HTTP requests that returned an answer; ``failed_requests`` counts those that
    failed after the client's own retries (a server may have spent tokens on them that it never
    reported). ``cached_tokens`` are the prompt tokens (of ``prompt_tokens``) the server said it
    reused from its prefix cache instead of computing them again (OpenAI's and vLLM's
    ``usage.prompt_tokens_details.cached_tokens``, llama.cpp's ``timings.cache_n``; 0 when not
    reported). Adding two usages adds every field, wall time included: the wall time of concurrent
    work is measured by whoever ran it, not summed.
    """

    requests: int = 0
    samples: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    wall_time_s: float = 0.0
    failed_requests: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            requests=self.requests + other.requests,
            samples=self.samples + other.samples,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost=self.cost + other.cost,
            wall_time_s=self.wall_time_s + other.wall_time_s,
            failed_requests=self.failed_requests + other.failed_requests,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )

    def replace(self, **changes: Any) -> Usage:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["total_tokens"] = self.total_tokens
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

    @classmethod
    def total(cls, usages: Sequence[Usage]) -> Usage:
        result = cls()
        for usage in usages:
            result = result + usage
        return result


@dataclass(frozen=True)
class SampleBatch:
    """What one call of a sampler returns: the candidates, in index order, and what they cost."""

    candidates: tuple[Candidate, ...]
    usage: Usage


@dataclass(frozen=True)
class Score:
    """A verifier's judgement of one candidate. ``verdict`` is set by binary verifiers.

    ``value`` is None when the verifier could not score the candidate (a judge whose reply held no
    rating): no score, not a low one. :attr:`number` reads it as NaN, which selection ranks last.
    ``usage`` is what computing the score spent where a model was asked (a judge, a served reward
    model). A verifier that scores a batch in one request puts the request's usage on the batch's
    first score, so that summing over scores counts every token once.
    """

    value: float | None
    verdict: bool | None = None
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    usage: Usage | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", _frozen_mapping(self.details))

    @property
    def number(self) -> float:
        """``value`` as a float: NaN when there is no score."""
        return math.nan if self.value is None else float(self.value)


@dataclass(frozen=True)
class TraceEvent:
    """One step a strategy took, for the result's trace (``{"step": "vote", ...}``)."""

    step: str
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _frozen_mapping(self.data))


@dataclass(frozen=True)
class Result:
    """What a strategy returns for one problem.

    ``selected`` holds the chosen candidates, best first (more than one when asked for pass@k);
    ``candidates`` every candidate drawn, in index order; ``scores`` aligns with ``candidates``
    where a verifier scored them (empty otherwise); ``answers`` aligns with ``selected`` and holds
    the extracted answers.
    """

    problem_id: str
    selected: tuple[Candidate, ...]
    candidates: tuple[Candidate, ...]
    usage: Usage
    answers: tuple[str | None, ...] = ()
    scores: tuple[Score | None, ...] = ()
    trace: tuple[TraceEvent, ...] = ()

    @property
    def text(self) -> str | None:
        """The best selected candidate's text, or None when nothing was selected."""
        return self.selected[0].text if self.selected else None
