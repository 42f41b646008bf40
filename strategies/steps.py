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
answer is" followed by an answer, not by "not obvious"), when the model wrote nothing more, or by
``is_final(step_text)``; a path is also closed at the search's last round, whose request goes on
to the answer's end (no stop). A sample that opens with the delimiter comes back empty from a
server's stop: it is drawn again (same index and seed, no stop) and its step cut from the text,
so a path never ends on an empty first step. A prompt that ends in an assistant message (the start
of the answer) is continued from that start, sent once; the steps are what the model wrote after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import operator
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
    prompt_prefill,
)
from ttscale.strategies.extract import (
    extract_answer_is,
    extract_boxed,
    extract_gsm8k,
    stated_answer,
)
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
    """Whether ``text`` states a final answer (pure): ``\\boxed{}``, ``####``, or "the answer
    is" followed by an answer: one holding a number or formula, or a short one (at most 4 words:
    "the answer is B"), not a statement about it ("the answer is not obvious yet")."""
    if extract_boxed(text) is not None or extract_gsm8k(text) is not None:
        return True
    stated = stated_answer(text)
    if stated is None or extract_answer_is(text) is None:
        return False
    return len(stated.split()) <= 4 or any(c.isdigit() or c in "\\$=" for c in stated)


def join_steps(steps: Sequence[str], delimiter: Delimiter) -> str:
    """The answer text of a path (pure): steps joined by a string delimiter, else a blank line."""
    return (delimiter if isinstance(delimiter, str) else "\n\n").join(steps)


def cut_step(text: str, delimiter: Delimiter) -> tuple[str, bool]:
    """The first step of ``text`` and whether anything followed it (pure). Delimiters (or
    blank steps) before the first step are skipped: a step is never empty because the model
    opened with a delimiter."""
    if isinstance(delimiter, str):
        while text.startswith(delimiter):
            text = text[len(delimiter) :]
        found = text.find(delimiter)
        return (text, False) if found < 0 else (text[:found], True)
    while True:
        end = _step_end(text, delimiter)
        if end is None or end >= len(text):
            return text, False
        if text[:end].strip():
            return text[:end], bool(text[end:].strip())
        text = text[end:]  # a blank step before the first one


def _step_end(text: str, delimiter: Callable[[str], int | None]) -> int | None:
    """Where a delimiter function says the first step of ``text`` ends, checked."""
    found = delimiter(text)
    try:  # any integer type (numpy's too), as slicing takes; not a bool
        end = None if found is None or isinstance(found, bool) else operator.index(found)
    except TypeError:
        end = None
    if found is not None and end is None:
        raise ConfigError(
            f"the step delimiter function returned {found!r} ({type(found).__name__}) for a text "
            f"starting {text[:40]!r}; it must return where the first step ends (an int) or None"
        )
    if end is not None and end <= 0:
        raise ConfigError(
            f"the step delimiter function returned {end} for a text starting {text[:40]!r}; "
            "it must return where the first step ends (> 0) or None"
        )
    return end


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
    # Drawn again with no stop: the same sample opened with the delimiter, so the server's stop
    # ended it before its step began; the step is cut from what follows instead.
    again: bool = False


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


def _partial(prompt: Prompt, steps: Sequence[str], settings: StepSettings) -> str:
    """The answer a request continues: the prompt's own prefill, then the steps so far, each
    ended by the delimiter so that the model starts a new one (pure)."""
    prefill = prompt_prefill(prompt)
    if not steps:
        return prefill
    ended = join_steps(steps, settings.delimiter) + join_steps(["", ""], settings.delimiter)
    if prefill and not prefill[-1].isspace():
        # Steps are kept without the blank lines around them: the one the model wrote after the
        # prefill ("Solution:\n\nStep 1") goes back, or the model would read "Solution:Step 1".
        prefill += join_steps(["", ""], settings.delimiter)
    return prefill + ended


async def _one_request(
    sampler: Sampler,
    prompt: Prompt,
    base: SamplingParams | None,
    request: StepRequest,
    settings: StepSettings,
) -> tuple[StepRequest, SampleBatch]:
    partial = _partial(prompt, request.steps, settings)
    stop = None
    if isinstance(settings.delimiter, str) and not request.to_end and not request.again:
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


def _steps_of(
    prompt: Prompt, request: StepRequest, batch: SampleBatch, settings: StepSettings
) -> list[DrawnStep]:
    drawn = []
    partial = _partial(prompt, request.steps, settings)
    for candidate in batch.candidates:
        if candidate.cut_short:
            continue  # a failure ended it, not the model: paid (in the usage), but no step
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


def _opened_with_delimiter(step: DrawnStep, request: StepRequest, settings: StepSettings) -> bool:
    """Whether the server's stop ended ``step`` before it began (pure): nothing came back where a
    stop string was sent. (A model that ended its answer there is found so too; drawn again, it
    ends there again, and the path is closed then.)"""
    sent_stop = isinstance(settings.delimiter, str) and not request.to_end and not request.again
    return sent_stop and not step.text.strip() and step.finish_reason == "stop"


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
    the requests that succeeded and the partial batch it carried; the caller decides. A sample
    that opened with the delimiter (so came back empty) is drawn again, same index and seed,
    without the stop, and its step cut from the text; both requests' tokens are the step's.
    """
    result = await _draw_round(sampler, prompt, base, requests, settings)
    by_key = {request.key: request for request in requests}
    blank = [s for s in result.steps if _opened_with_delimiter(s, by_key[s.key], settings)]
    if not blank or result.budget_stop is not None or result.error is not None:
        return result
    again = [
        StepRequest(s.key, by_key[s.key].steps, 1, s.index, again=True)
        for s in sorted(blank, key=lambda step: step.index)
    ]
    redrawn = await _draw_round(sampler, prompt, base, again, settings)
    return _with_redrawn(result, blank, redrawn)


def _with_redrawn(
    result: RoundOutcome, blank: Sequence[DrawnStep], redrawn: RoundOutcome
) -> RoundOutcome:
    """The round with each blank step replaced by its redrawn one, which carries both draws'
    tokens; a blank step whose redraw was refused or failed stays as it was (pure)."""
    spent = {(s.key, s.index): s.tokens for s in blank}
    kept = [s for s in result.steps if (s.key, s.index) not in spent]
    for step in redrawn.steps:
        kept.append(dataclasses.replace(step, tokens=step.tokens + spent[(step.key, step.index)]))
    redrawn_ids = {(s.key, s.index) for s in redrawn.steps}
    kept.extend(s for s in blank if (s.key, s.index) not in redrawn_ids)
    return RoundOutcome(
        kept,
        result.usage + redrawn.usage,
        redrawn.budget_stop,
        redrawn.error,
        result.prompt_tokens + redrawn.prompt_tokens,
    )


async def _draw_round(
    sampler: Sampler,
    prompt: Prompt,
    base: SamplingParams | None,
    requests: Sequence[StepRequest],
    settings: StepSettings,
) -> RoundOutcome:
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
                result.steps.extend(_steps_of(prompt, request, outcome.partial, settings))
                result.usage = result.usage + outcome.partial.usage
            result.error = result.error or outcome
            continue
        if isinstance(outcome, BaseException):
            raise outcome
        _, batch = outcome
        result.prompt_tokens.append((len(request.steps), batch.usage.prompt_tokens))
        result.steps.extend(_steps_of(prompt, request, batch, settings))
        result.usage = result.usage + batch.usage.replace(wall_time_s=0.0)
    return result
