"""In-process fakes of the extension points, for tests that need no HTTP.

Prefer :class:`~ttscale.testing.server.LoopbackServer` with the real :class:`OpenAISampler` when a
test is about sampling; these fakes serve tests about what happens after sampling.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ttscale.seeds import derive_seed
from ttscale.types import Candidate, Prompt, SampleBatch, SamplingParams, Usage

__all__ = ["ScriptedSampler", "prompt_text"]


def prompt_text(prompt: Prompt) -> str:
    """The text a fake answers to: the prompt itself, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(list(prompt)):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


@dataclass
class ScriptedSampler:
    """A sampler whose answers are scripted per prompt.

    ``answers`` maps a prompt's text to a list of answers taken by sample index (cycled), or to a
    mapping answer -> probability from which each sample draws with a seed derived from
    ``base_seed`` and its index (so a draw is reproducible and independent of batch sizes). A
    function ``(prompt_text, index) -> str`` may be given instead. Each sample costs one request,
    ``prompt_tokens`` prompt tokens and one completion token per whitespace-separated word.
    """

    answers: Mapping[str, Sequence[str] | Mapping[str, float]] | Callable[[str, int], str]
    base_seed: int = 0
    prompt_tokens: int = 10
    model: str = "scripted"

    def __post_init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []  # (prompt text, n, start_index)

    def answer(self, text: str, index: int) -> str:
        if callable(self.answers):
            return self.answers(text, index)
        script = self.answers[text]
        if isinstance(script, Mapping):
            rng = random.Random(derive_seed(self.base_seed, index))
            choices = list(script)
            return rng.choices(choices, weights=[script[c] for c in choices])[0]
        return script[index % len(script)]

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        text = prompt_text(prompt)
        self.calls.append((text, n, start_index))
        temperature = params.temperature if params is not None else None
        candidates = []
        for index in range(start_index, start_index + n):
            answer = self.answer(text, index)
            candidates.append(
                Candidate(
                    text=answer,
                    index=index,
                    finish_reason="stop",
                    completion_tokens=len(answer.split()),
                    seed=derive_seed(self.base_seed, index),
                    model=self.model,
                    temperature=temperature,
                )
            )
        usage = Usage(
            requests=n,
            samples=n,
            prompt_tokens=self.prompt_tokens * n,
            completion_tokens=sum(c.completion_tokens for c in candidates),
        )
        return SampleBatch(tuple(candidates), usage)
