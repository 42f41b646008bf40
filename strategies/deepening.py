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

- ``"prefill"``: the chat messages end with an assistant message holding the partial answer. The
  llama.cpp server continues it (assistant prefill, on by default); so do Anthropic-style APIs.
- ``"vllm"``: the same messages plus ``continue_final_message: true, add_generation_prompt: false``
  in the body, which vLLM's chat endpoint needs to continue rather than start a new turn.
- ``"text"``: the prompt rendered to text by ``template`` (a function of the messages, e.g.
  :func:`chatml` for Qwen models, or a tokenizer's ``apply_chat_template``) with the partial answer
  appended, for a sampler on the completions endpoint. Works with any server with ``/completions``.

Hosted chat APIs without prefill (OpenAI's) cannot continue an answer; use ``text`` elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ttscale.errors import ConfigError
from ttscale.protocols import Sampler, Verifier
from ttscale.registry import build_config, create
from ttscale.strategies.base import StrategyConfig, resolve_config
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

Continuation = Literal["prefill", "vllm", "text"]
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

    text: str = ""
    generated: int = 0
    triggers: list[str] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    usages: list[Usage] = field(default_factory=list)
    finish_reason: str | None = None
    latency_s: float = 0.0


class DeepeningSampler:
    """A Sampler whose every sample is one iteratively deepened answer (module docstring).

    Sample ``i``'s segments are drawn as indices ``i * stride + s`` of the inner sampler, so every
    segment request has its own derived seed and no two samples share one.
    """

    def __init__(
        self, sampler: Sampler, config: DeepeningConfig | None = None, **options: Any
    ) -> None:
        if config is None:
            config = build_config(DeepeningConfig, options, "DeepeningSampler")
        elif options:
            raise ConfigError("pass either a config or keyword options to DeepeningSampler")
        if config.continuation == "text" and config.template is None:
            raise ConfigError("continuation='text' needs a template (e.g. ttscale's chatml)")
        self.sampler = sampler
        self.config = config
        self.budgets = config.budgets
        self.stride = len(self.budgets)

    def continuation_prompt(self, prompt: Prompt, partial: str) -> Prompt:
        """What is sent to continue ``partial`` as the answer to ``prompt``."""
        messages: list[Message] = (
            [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        )
        if self.config.continuation == "text":
            assert self.config.template is not None  # checked in __init__
            return self.config.template(messages) + partial
        if not partial:
            return messages
        return [*messages, {"role": "assistant", "content": partial}]

    def _params(self, params: SamplingParams, partial: str, max_tokens: int) -> SamplingParams:
        changes: dict[str, Any] = {"max_tokens": max_tokens}
        if self.config.continuation == "vllm" and partial:
            changes["extra_body"] = {
                **params.extra_body,
                "continue_final_message": True,
                "add_generation_prompt": False,
            }
        return params.replace(**changes)

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        params = params or SamplingParams()
        indices = range(start_index, start_index + n)
        runs = await asyncio.gather(*(self._deepen(prompt, params, i) for i in indices))
        candidates = tuple(candidate for candidate, _ in runs)
        return SampleBatch(candidates, Usage.total([usage for _, usage in runs]))

    async def _deepen(
        self, prompt: Prompt, params: SamplingParams, index: int
    ) -> tuple[Candidate, Usage]:
        state = _Deepened()
        seed: int | None = None
        for segment, budget in enumerate(self.budgets):
            if segment > 0:
                ran_out = state.finish_reason == "length"
                if not ran_out or self.config.trigger_on_length:
                    trigger = self.config.triggers[(segment - 1) % len(self.config.triggers)]
                    state.text += trigger
                    state.triggers.append(trigger)
            room = max(1, budget - state.generated)
            batch = await self.sampler.sample(
                self.continuation_prompt(prompt, state.text),
                1,
                self._params(params, state.text, room),
                start_index=index * self.stride + segment,
            )
            state.usages.append(batch.usage)
            if not batch.candidates:
                break
            piece = batch.candidates[0]
            seed = piece.seed if seed is None else seed
            state.text += piece.text
            state.generated += piece.completion_tokens
            state.finish_reason = piece.finish_reason
            state.latency_s += piece.latency_s
            state.segments.append(
                {
                    "budget": budget,
                    "max_tokens": room,
                    "generated": piece.completion_tokens,
                    "finish_reason": piece.finish_reason,
                }
            )
        usage = Usage.total(state.usages)
        candidate = Candidate(
            text=state.text,
            index=index,
            finish_reason=state.finish_reason,
            completion_tokens=state.generated,
            tokens_exact=True,
            seed=seed,
            model=getattr(getattr(self.sampler, "config", None), "model", ""),
            latency_s=state.latency_s,
            temperature=params.temperature,
        )
        # One deepened answer is one sample however many requests it took.
        return candidate, usage.replace(samples=1)


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
            },
        )
        return dataclasses.replace(result, trace=(event, *result.trace))
