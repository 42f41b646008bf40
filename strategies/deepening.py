"""Iterative deepening: self-correction by continuing an answer under a growing token budget.

After Chen, Koenig and Dilkina (2025). One deepened sample::

    b = b0
    generate up to b tokens
    while b < B_max:                       # at most ceil(log_gamma(B_max / b0)) triggers
        append a self-reflection trigger ("Wait, let me check my reasoning.") to the answer
        b = min(gamma * b, B_max)
        continue generating the answer until it holds b tokens in all (or finishes)

``b`` counts the tokens the model generated for this answer (the trigger text is ours, not the
model's, and is counted where the server counts it: in the prompt of the next continuation). With
``trigger_on_length`` off, a segment that ran out of budget mid-answer continues without a trigger
(the model was not done, so there is nothing to reflect on yet); the budget still grows.

:class:`DeepeningSampler` wraps any :class:`~ttscale.protocols.Sampler` so that each sample it
returns is one deepened answer, with the usage of every continuation request summed (the prompt and
the partial answer are re-sent each time, and the server counts them each time): so majority,
best-of-N or any strategy combines with it. :class:`IterativeDeepening` (``deepening``) is that
composition as a registered strategy.

Continuing a partial assistant answer needs server support; the ``continuation`` option says how:

- ``"prefill"``: the chat messages end with an assistant message holding the partial answer.
- ``"vllm"``: the same messages plus ``continue_final_message: true, add_generation_prompt: false``
  in the body, which vLLM's chat endpoint needs to continue rather than start a new turn.
- ``"text"``: the prompt rendered to text by ``template`` (a function of the messages, e.g.
  :func:`chatml` for Qwen models, or a tokenizer's ``apply_chat_template``) with the partial answer
  appended, for a sampler on the completions endpoint.

Which server supports which mode:

=========================  =========  ========  =====================================
server                     prefill    vllm      text
=========================  =========  ========  =====================================
llama.cpp ``llama-server``  yes (1)    yes (2)   yes (``/completions``)
vLLM OpenAI server         no (3)     yes       yes (``/completions``)
OpenAI hosted API          no (4)     no (5)    only legacy completion models
in-process samplers        yes (6)    yes (6)   yes (a text prompt is used as it is)
=========================  =========  ========  =====================================

(1) Assistant prefill is on by default (``--no-prefill-assistant`` turns it off; it is refused
with ``enable_thinking``). (2) The prefill does the continuing: llama.cpp renders the messages
before the trailing assistant one with a generation prompt and appends its text, whatever the two
flags say.
(3) vLLM applies the template with ``add_generation_prompt`` unless told otherwise, so a trailing
assistant message is followed by a new assistant turn: the model starts over. (4) A trailing
assistant message is taken as a finished turn. (5) Unknown body fields are refused (400). (6)
:class:`~ttscale.samplers.transformers_sampler.TransformersSampler` and
:class:`~ttscale.samplers.vllm_sampler.VLLMSampler` render messages ending with an assistant message
with ``continue_final_message=True`` (no new turn), and take the two vLLM flags out of
``extra_body``.

What was paid for is kept. A segment refused by a budget ends that sample's deepening: the sample
is returned as it stood after its last segment (a draw all of whose samples were refused before
their first segment raises the refusal). A segment that fails otherwise ends that sample too, and
once every sample of the call has ended the error is raised with the samples that have any text as
its ``partial`` batch, whose usage counts every segment sent. Each sample's triggers and segment
boundaries are in :attr:`DeepeningSampler.records` (and the strategy's ``deepening`` trace event).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ttscale.errors import BudgetExhausted, ConfigError, SamplerError
from ttscale.protocols import Sampler, Verifier, check_draw
from ttscale.registry import create, resolve_config
from ttscale.strategies.base import StrategyConfig
from ttscale.strategies.continuation import (
    Continuation,
    added_text,
    continuation_prompt,
    continue_flags,
    prompt_prefill,
)
from ttscale.types import (
    Candidate,
    Message,
    Problem,
    Prompt,
    Result,
    SampleBatch,
    SamplingParams,
    TraceEvent,
    Usage,
)

__all__ = [
    "DeepeningConfig",
    "DeepeningSampler",
    "IterativeDeepening",
    "IterativeDeepeningConfig",
    "chatml",
    "trigger_schedule",
]

log = logging.getLogger(__name__)

DEFAULT_TRIGGERS = ("\n\nWait, let me check my reasoning.\n",)


def chatml(messages: Sequence[Message]) -> str:
    """The ChatML rendering Qwen models use, ending with an open assistant turn."""
    parts = [f"<|im_start|>{m['role']}\n{m.get('content') or ''}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def trigger_schedule(b0: int, gamma: float, b_max: int) -> list[int]:
    """The token budgets of the segments: b0, then times gamma (rounded up), capped at b_max.

    Its length minus one is the most triggers a deepened sample gets,
    ``ceil(log_gamma(b_max / b0))``.
    """
    budgets = [min(b0, b_max)]
    while budgets[-1] < b_max:
        budgets.append(min(b_max, max(budgets[-1] + 1, math.ceil(budgets[-1] * gamma))))
    return budgets


@dataclass(frozen=True)
class DeepeningConfig:
    """Settings of a :class:`DeepeningSampler` (see the module docstring)."""

    b0: int = 256
    gamma: float = 2.0
    b_max: int = 2048
    triggers: tuple[str, ...] = DEFAULT_TRIGGERS
    trigger_on_length: bool = True
    continuation: Continuation = "prefill"
    template: Callable[[Sequence[Message]], str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.triggers, str):
            object.__setattr__(self, "triggers", (self.triggers,))
        object.__setattr__(self, "triggers", tuple(self.triggers))
        if self.b0 < 1 or self.b_max < self.b0:
            raise ConfigError(f"need 1 <= b0 <= b_max, got b0={self.b0}, b_max={self.b_max}")
        if not self.gamma > 1:
            raise ConfigError(f"gamma must be > 1, got {self.gamma}")
        if not self.triggers or not all(isinstance(t, str) and t for t in self.triggers):
            raise ConfigError("triggers must be a non-empty list of phrases")
        if self.continuation not in ("prefill", "vllm", "text"):
            raise ConfigError(
                f"continuation must be prefill, vllm or text, got {self.continuation!r}"
            )

    @property
    def budgets(self) -> list[int]:
        return trigger_schedule(self.b0, self.gamma, self.b_max)


@dataclass
class _Deepened:
    """One deepened sample under way; never shared."""

    index: int
    text: str = ""
    generated: int = 0
    exact: bool = True
    seed: int | None = None
    model: str = ""
    temperature: float | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)
    usages: list[Usage] = field(default_factory=list)
    finish_reason: str | None = None
    latency_s: float = 0.0
    stopped: str | None = None  # why it ended before its last budget: "budget" or "error"
    error: Exception | None = None

    @property
    def usage(self) -> Usage:
        # One deepened answer is one sample however many requests it took; none without text.
        return Usage.total(self.usages).replace(samples=1 if self.segments else 0)

    def candidate(self) -> Candidate | None:
        if not self.segments:
            return None
        return Candidate(
            text=self.text,
            index=self.index,
            finish_reason=self.finish_reason,
            completion_tokens=self.generated,
            tokens_exact=self.exact,
            seed=self.seed,
            model=self.model,
            latency_s=self.latency_s,
            temperature=self.temperature,
        )

    def record(self) -> dict[str, Any]:
        """The sample's trigger schedule: its segments, where each sits in the text, and why it
        stopped (JSON-ready)."""
        return {
            "index": self.index,
            "segments": [dict(segment) for segment in self.segments],
            "triggers": [s["trigger"] for s in self.segments if s["trigger"] is not None],
            "stopped": self.stopped,
            "error": str(self.error) if self.error is not None else None,
        }


class DeepeningSampler:
    """A Sampler whose every sample is one iteratively deepened answer (module docstring).

    Sample ``i``'s segments are drawn as indices ``i * stride + s`` of the inner sampler, so every
    segment request has its own derived seed and no two samples share one. :attr:`records` maps
    each sample index drawn to its trigger schedule: per segment the budget, the ``max_tokens``
    asked, the tokens generated, the finish reason, the trigger sent before it (or None), the
    segment's span ``[start, end)`` in the sample's text (the trigger sits just before ``start``)
    and the segment's usage; and why the sample stopped early, if it did.
    """

    def __init__(
        self, sampler: Sampler, config: DeepeningConfig | None = None, **options: Any
    ) -> None:
        config = resolve_config(DeepeningConfig, config, options, "DeepeningSampler")
        if config.continuation == "text" and config.template is None:
            raise ConfigError("continuation='text' needs a template (e.g. ttscale's chatml)")
        self.sampler = sampler
        self.config = config
        self.budgets = config.budgets
        self.stride = len(self.budgets)
        self.records: dict[int, dict[str, Any]] = {}

    def continuation_prompt(self, prompt: Prompt, partial: str) -> Prompt:
        """What is sent to continue ``partial`` as the answer to ``prompt``."""
        return continuation_prompt(prompt, partial, self.config.continuation, self.config.template)

    def _params(
        self, params: SamplingParams | None, partial: str, max_tokens: int
    ) -> SamplingParams:
        # An override of the inner sampler's settings (None fields keep the sampler's own).
        base = params if params is not None else SamplingParams()
        changes: dict[str, Any] = {"max_tokens": max_tokens}
        changes.update(continue_flags(base, partial, self.config.continuation))
        return base.replace(**changes)

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        """Deepen samples ``start_index .. start_index + n - 1``; see the module docstring for
        what a budget refusal or a failure part way returns or raises."""
        check_draw(n, start_index)
        started = time.perf_counter()
        indices = range(start_index, start_index + n)
        # Each sample catches its own failure, so every sample runs to its end and nothing a
        # finished segment paid for is dropped with a sibling's error.
        runs = await asyncio.gather(*(self._deepen(prompt, params, i) for i in indices))
        for run in runs:
            self.records[run.index] = run.record()
        made = [(run.candidate(), run) for run in runs]
        candidates = tuple(candidate for candidate, _ in made if candidate is not None)
        usage = Usage.total([run.usage for run in runs])
        batch = SampleBatch(candidates, usage.replace(wall_time_s=time.perf_counter() - started))
        failed = [run for run in runs if run.stopped == "error"]
        if failed:
            first = failed[0]
            assert first.error is not None  # set with stopped="error"
            log.warning(
                "deepening: %d of %d sample(s) failed part way; keeping %d sample(s) drawn",
                len(failed),
                n,
                len(candidates),
            )
            if isinstance(first.error, SamplerError):
                first.error.partial = batch
                raise first.error
            raise SamplerError(
                f"deepened sample {first.index} failed at segment {len(first.segments)}: "
                f"{first.error}",
                partial=batch,
            ) from first.error
        refused = [run for run in runs if run.stopped == "budget"]
        if refused and not candidates:
            # Nothing was drawn at all: the refusal is the answer, as for a plain draw.
            assert refused[0].error is not None
            raise refused[0].error
        return batch

    async def _deepen(self, prompt: Prompt, params: SamplingParams | None, index: int) -> _Deepened:
        state = _Deepened(index)
        state.text = prompt_prefill(prompt)  # the answer's start the prompt gives, if any
        for segment, budget in enumerate(self.budgets):
            trigger: str | None = None
            if segment > 0:
                ran_out = state.finish_reason == "length"
                if not ran_out or self.config.trigger_on_length:
                    trigger = self.config.triggers[(segment - 1) % len(self.config.triggers)]
            partial = state.text + (trigger or "")
            room = max(1, budget - state.generated)
            try:
                batch = await self.sampler.sample(
                    self.continuation_prompt(prompt, partial),
                    1,
                    self._params(params, partial, room),
                    start_index=index * self.stride + segment,
                )
            except BudgetExhausted as exc:
                # Nothing was sent: the sample ends as it stood, trigger not appended.
                state.stopped, state.error = "budget", exc
                break
            except Exception as exc:  # any failure ends this sample only; sample() raises it
                delivered = exc.partial if isinstance(exc, SamplerError) else None
                state.usages.append(
                    delivered.usage
                    if isinstance(delivered, SampleBatch)
                    # Nothing says what the failed request spent: count it as failed.
                    else Usage(failed_requests=1)
                )
                state.stopped, state.error = "error", exc
                break
            state.usages.append(batch.usage)
            if not batch.candidates:
                state.stopped = "empty"
                break
            piece = batch.candidates[0]
            if not state.segments:
                state.seed, state.model = piece.seed, piece.model
                state.temperature = piece.temperature
            start = len(partial)
            state.text = partial + added_text(piece.text, partial, self.config.continuation)
            state.generated += piece.completion_tokens
            state.exact = state.exact and piece.tokens_exact
            state.finish_reason = piece.finish_reason
            state.latency_s += piece.latency_s
            state.segments.append(
                {
                    "budget": budget,
                    "max_tokens": room,
                    "generated": piece.completion_tokens,
                    "tokens_exact": piece.tokens_exact,
                    "finish_reason": piece.finish_reason,
                    "trigger": trigger,
                    "start": start,
                    "end": len(state.text),
                    "usage": batch.usage.replace(wall_time_s=0.0).to_dict(),
                }
            )
        return state


@dataclass(frozen=True)
class IterativeDeepeningConfig(StrategyConfig):
    """Options of :class:`IterativeDeepening`: the deepening, and how deepened samples combine.

    ``select`` names a registered strategy (``majority``, ``best_of_n``, ...) run over
    ``samples`` deepened answers; ``select_options`` are its own options.
    """

    b0: int = 256
    gamma: float = 2.0
    b_max: int = 2048
    triggers: tuple[str, ...] = DEFAULT_TRIGGERS
    trigger_on_length: bool = True
    continuation: Continuation = "prefill"
    template: Callable[[Sequence[Message]], str] | None = None
    select: str = "majority"
    select_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.deepening  # noqa: B018 - validates the deepening options here, not at run time

    @property
    def deepening(self) -> DeepeningConfig:
        return DeepeningConfig(
            b0=self.b0,
            gamma=self.gamma,
            b_max=self.b_max,
            triggers=self.triggers,
            trigger_on_length=self.trigger_on_length,
            continuation=self.continuation,
            template=self.template,
        )


class IterativeDeepening:
    """Majority (or any strategy) over iteratively deepened samples; see the module docstring."""

    name = "deepening"

    def __init__(self, config: IterativeDeepeningConfig | None = None, **options: Any) -> None:
        self.config = resolve_config(IterativeDeepeningConfig, config, options, "deepening")
        c = self.config
        self.inner = create(
            "strategy",
            c.select,
            samples=c.samples,
            k=c.k,
            params=c.params,
            extractor=c.extractor,
            equivalence=c.equivalence,
            **dict(c.select_options),
        )

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result:
        deepening = DeepeningSampler(sampler, self.config.deepening)
        result: Result = await self.inner.run(problem, deepening, verifier)
        event = TraceEvent(
            "deepening",
            {
                "budgets": deepening.budgets,
                "continuation": self.config.continuation,
                "select": self.config.select,
                # Per candidate: its triggers, segment spans and why it stopped early, if it did.
                "samples": [
                    deepening.records[c.index]
                    for c in result.candidates
                    if c.index in deepening.records
                ],
            },
        )
        return dataclasses.replace(result, trace=(event, *result.trace))
