"""Steps of a solution, and drawing the next step of a partial answer through a sampler.

A step is the text up to a delimiter: a string (default a blank line, ``"\\n\\n"``), sent to the
server as a ``stop`` so that generation ends at the step's end, or a function ``text -> end``
giving where the first step of ``text`` ends (``None``: the whole text is one step), for steps no
stop string can mark; the server then writes on and the rest is cut off (its tokens are paid for
and counted: the step's ``tokens`` are the request's).

The next step of a partial answer is drawn with the continuation support iterative deepening has
(:mod:`ttscale.strategies.deepening`): ``"prefill"`` (llama.cpp: a trailing assistant message),
``"vllm"`` (the same plus ``continue_final_message``) or ``"text"`` (a completions prompt rendered
by ``template``). The partial is sent with the delimiter after its last step, so the model starts a
new step. Prefix reuse is the server's (llama.cpp's ``cache_prompt``, vLLM's prefix caching).

A step ends its path (``final``) when it holds a marked answer (``\\boxed{}``, ``####`` or "the
answer is"), when the model wrote nothing more, or by ``is_final(step_text)``; a path is also
closed at the search's last round, whose request goes on to the answer's end (no stop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ttscale.errors import BudgetExhausted, ConfigError, SamplerError
from ttscale.protocols import Sampler
from ttscale.strategies.continuation import (
    Continuation,
    added_text,
    continuation_prompt,
    continue_flags,
)
from ttscale.strategies.extract import extract_answer_is, extract_boxed, extract_gsm8k
from ttscale.types import Message, Prompt, SampleBatch, SamplingParams, TokenLogprob, Usage

__all__ = [
    "Continuation",
    "Delimiter",
    "DrawnStep",
    "RoundOutcome",
    "StepRequest",
    "StepSettings",
    "StepText",
    "continuation_params",
    "continuation_prompt",
    "cut_step",
    "draw_steps",
    "has_marked_answer",
    "join_steps",
]

Delimiter = str | Callable[[str], int | None]


class StepText(str):
    """A step's text that also carries its token logprobs (for intrinsic rewards), if drawn."""

    logprobs: tuple[TokenLogprob, ...] | None

    def __new__(cls, text: str, logprobs: Sequence[TokenLogprob] | None = None) -> StepText:
        made = super().__new__(cls, text)
        made.logprobs = tuple(logprobs) if logprobs is not None else None
        return made


def has_marked_answer(text: str) -> bool:
    """Whether ``text`` states a final answer: ``\\boxed{}``, ``####`` or "the answer is" (pure)."""
    return any(find(text) is not None for find in (extract_boxed, extract_gsm8k, extract_answer_is))


def join_steps(steps: Sequence[str], delimiter: Delimiter) -> str:
    """The answer text of a path (pure): steps joined by a string delimiter, else a blank line."""
    return (delimiter if isinstance(delimiter, str) else "\n\n").join(steps)


def cut_step(text: str, delimiter: Delimiter) -> tuple[str, bool]:
    """The first step of ``text`` and whether anything followed it (pure)."""
    if isinstance(delimiter, str):
        found = text.find(delimiter)
        return (text, False) if found < 0 else (text[:found], True)
    end = delimiter(text)
    if end is None or end >= len(text):
        return text, False
    if end < 0:
        raise ConfigError(f"the step delimiter function returned {end} for a text")
    return text[:end], bool(text[end:].strip())


def continuation_params(
    base: SamplingParams | None,
    partial: str,
    continuation: Continuation,
    *,
    stop: tuple[str, ...] | None,
    max_tokens: int | None,
    logprobs: int | None = None,
) -> SamplingParams:
    """The override a step request is drawn with (pure): the stop, the step's token cap, and the
    vLLM continuation flags when ``partial`` is non-empty."""
    params = base if base is not None else SamplingParams()
    changes: dict[str, Any] = {"stop": stop}
    if max_tokens is not None:
        changes["max_tokens"] = max_tokens
    if logprobs is not None and (params.logprobs is None or params.logprobs < logprobs):
        changes["logprobs"] = logprobs
    changes.update(continue_flags(params, partial, continuation))
    return params.replace(**changes)


@dataclass(frozen=True)
class StepRequest:
    """One request of a round: ``count`` next steps of the path whose steps are ``steps``."""

    key: int  # the caller's name for the path (a node id)
    steps: tuple[str, ...]
    count: int
    start_index: int
    to_end: bool = False  # the last round: no stop, the answer is finished


@dataclass(frozen=True)
class DrawnStep:
    """A step a request returned, with what it cost to know when it ended."""

    key: int
    index: int
    text: StepText
    tokens: int
    finish_reason: str | None
    final: bool
    cut: bool  # a delimiter function cut text the server wrote after the step


@dataclass(frozen=True)
class StepSettings:
    """How steps are drawn (taken from a search strategy's options)."""

    delimiter: Delimiter = "\n\n"
    continuation: Continuation = "prefill"
    template: Callable[[Sequence[Message]], str] | None = None
    step_tokens: int | None = None
    is_final: Callable[[str], bool] | None = None
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.delimiter, str) and not self.delimiter:
            raise ConfigError("the step delimiter must be a non-empty string or a function")
        if not isinstance(self.delimiter, str) and not callable(self.delimiter):
            raise ConfigError(f"delimiter must be a string or a function, got {self.delimiter!r}")
        if self.continuation not in ("prefill", "vllm", "text"):
            raise ConfigError(
                f"continuation must be prefill, vllm or text, got {self.continuation!r}"
            )
        if self.continuation == "text" and self.template is None:
            raise ConfigError("continuation='text' needs a template (e.g. ttscale's chatml)")
        if self.step_tokens is not None and self.step_tokens < 1:
            raise ConfigError(f"step_tokens must be >= 1, got {self.step_tokens}")

    def final(self, step: str, finish_reason: str | None, to_end: bool) -> bool:
        if to_end or not step.strip():
            return True
        if self.is_final is not None:
            return bool(self.is_final(step))
        return has_marked_answer(step)


@dataclass
class RoundOutcome:
    """What a round of step requests returned: the steps, the usage, why drawing must stop."""

    steps: list[DrawnStep]
    usage: Usage
    budget_stop: str | None = None
    error: SamplerError | None = None
    prompt_tokens: list[tuple[int, int]] = field(default_factory=list)  # (steps before, tokens)


def _partial(steps: Sequence[str], settings: StepSettings) -> str:
    if not steps:
        return ""
    return join_steps(steps, settings.delimiter) + join_steps(["", ""], settings.delimiter)


async def _one_request(
    sampler: Sampler,
    prompt: Prompt,
    base: SamplingParams | None,
    request: StepRequest,
    settings: StepSettings,
) -> tuple[StepRequest, SampleBatch]:
    partial = _partial(request.steps, settings)
    stop = None
    if isinstance(settings.delimiter, str) and not request.to_end:
        stop = (settings.delimiter,)
    params = continuation_params(
        base,
        partial,
        settings.continuation,
        stop=stop,
        max_tokens=None if request.to_end else settings.step_tokens,
        logprobs=settings.logprobs,
    )
    sent = continuation_prompt(prompt, partial, settings.continuation, settings.template)
    batch = await sampler.sample(sent, request.count, params, start_index=request.start_index)
    return request, batch


def _steps_of(request: StepRequest, batch: SampleBatch, settings: StepSettings) -> list[DrawnStep]:
    drawn = []
    partial = _partial(request.steps, settings)
    for candidate in batch.candidates:
        text, cut = added_text(candidate.text, partial, settings.continuation), False
        if not request.to_end:
            text, cut = cut_step(text, settings.delimiter)
        text = text.strip("\n") if isinstance(settings.delimiter, str) else text
        drawn.append(
            DrawnStep(
                key=request.key,
                index=candidate.index,
                text=StepText(text, candidate.logprobs),
                tokens=candidate.completion_tokens,
                finish_reason=candidate.finish_reason,
                final=settings.final(text, candidate.finish_reason, request.to_end),
                cut=cut,
            )
        )
    return drawn


async def draw_steps(
    sampler: Sampler,
    prompt: Prompt,
    base: SamplingParams | None,
    requests: Sequence[StepRequest],
    settings: StepSettings,
) -> RoundOutcome:
    """Send a round's requests concurrently; keep every step that arrived.

    A request the budget refuses ends drawing (``budget_stop``) but not the round: the steps the
    other requests returned are kept. Another failure is returned as ``error`` with the steps of
    the requests that succeeded and the partial batch it carried; the caller decides.
    """
    outcomes = await asyncio.gather(
        *(_one_request(sampler, prompt, base, r, settings) for r in requests),
        return_exceptions=True,
    )
    result = RoundOutcome([], Usage())
    for request, outcome in zip(requests, outcomes, strict=True):
        if isinstance(outcome, BudgetExhausted):
            result.budget_stop = result.budget_stop or str(outcome)
            continue
        if isinstance(outcome, SamplerError):
            if isinstance(outcome.partial, SampleBatch):
                result.steps.extend(_steps_of(request, outcome.partial, settings))
                result.usage = result.usage + outcome.partial.usage
            result.error = result.error or outcome
            continue
        if isinstance(outcome, BaseException):
            raise outcome
        _, batch = outcome
        result.prompt_tokens.append((len(request.steps), batch.usage.prompt_tokens))
        result.steps.extend(_steps_of(request, batch, settings))
        result.usage = result.usage + batch.usage.replace(wall_time_s=0.0)
    return result
