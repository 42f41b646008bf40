"""Continuing a partial answer on a server: the request, and only what the server added.

Iterative deepening (``deepening``) and step-level search (``steps``) both ask a model to go on
from a partial answer. How depends on the server (``Continuation``):

- ``"prefill"``: the partial answer as a trailing assistant message (llama.cpp's assistant
  prefill, and servers that do likewise);
- ``"vllm"``: the same message with vLLM's ``continue_final_message`` and no generation prompt;
- ``"text"``: a completions prompt, the conversation rendered by a chat template with the partial
  answer appended.

Some servers answer a prefilled message with the prefill *and* its continuation as the message's
content (llama.cpp's ``llama-server`` does: it parses the whole assistant turn), others with the
continuation alone. :func:`added_text` takes the prefill off where it was sent back, so a
continuation never holds the partial answer twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from ttscale.errors import ConfigError
from ttscale.types import Message, Prompt, SamplingParams

__all__ = ["Continuation", "added_text", "continuation_prompt", "continue_flags"]

Continuation = Literal["prefill", "vllm", "text"]


def continuation_prompt(
    prompt: Prompt,
    partial: str,
    continuation: Continuation,
    template: Callable[[Sequence[Message]], str] | None = None,
) -> Prompt:
    """What is sent to continue ``partial`` as the answer to ``prompt`` (pure)."""
    messages: list[Message] = (
        [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    )
    if continuation == "text":
        if template is None:
            raise ConfigError("continuation='text' needs a template (e.g. ttscale's chatml)")
        return template(messages) + partial
    if not partial:
        return messages
    return [*messages, {"role": "assistant", "content": partial}]


def continue_flags(
    params: SamplingParams, partial: str, continuation: Continuation
) -> dict[str, Any]:
    """The sampling-parameter changes a continuation needs (pure): vLLM's flags when there is a
    partial answer to continue, nothing otherwise."""
    if continuation != "vllm" or not partial:
        return {}
    return {
        "extra_body": {
            **params.extra_body,
            "continue_final_message": True,
            "add_generation_prompt": False,
        }
    }


def added_text(returned: str, partial: str, continuation: Continuation) -> str:
    """What the server added to ``partial`` (pure): ``returned`` without the prefill a server
    sent back at its start. A completions prompt is never sent back (no ``echo``)."""
    if continuation != "text" and partial and returned.startswith(partial):
        return returned[len(partial) :]
    return returned
