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

A prompt may itself end in an assistant message, the start of the answer it wants continued (a
prefill). The partial answer then begins with that text (:func:`prompt_prefill`), and the request
sends it once, as the one assistant message, however far the answer has gone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from ttscale.errors import ConfigError
from ttscale.types import Message, Prompt, SamplingParams

__all__ = [
    "Continuation",
    "added_text",
    "continuation_prompt",
    "continue_flags",
    "prompt_prefill",
]

Continuation = Literal["prefill", "vllm", "text"]


def _split_prefill(prompt: Prompt) -> tuple[list[Message], str]:
    """The prompt's messages before a trailing assistant message whose content is text, and that
    text ("" and all the messages when there is none) (pure). A trailing assistant message with
    no text to continue (tool calls, an image) is a :class:`ConfigError`: the answer would come
    as a second assistant message, which no chat template reads as one turn."""
    messages: list[Message] = (
        [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    )
    last = messages[-1] if messages else None
    if last is None or last.get("role") != "assistant":
        return messages, ""
    content = last.get("content")
    if isinstance(content, str):
        return messages[:-1], content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return messages[:-1], "".join(part["text"] for part in content)
    raise ConfigError(
        f"messages[{len(messages) - 1}]: the prompt ends in an assistant message with no text "
        "to continue (tool calls, or parts that are not text); a continued answer needs the "
        "prompt to end in a user or tool message, or in an assistant message of text"
    )


def prompt_prefill(prompt: Prompt) -> str:
    """The start of the answer that ``prompt`` itself gives (pure): the text of a trailing
    assistant message, else "". A continuation's partial answer begins with it."""
    return _split_prefill(prompt)[1]


def continuation_prompt(
    prompt: Prompt,
    partial: str,
    continuation: Continuation,
    template: Callable[[Sequence[Message]], str] | None = None,
) -> Prompt:
    """What is sent to continue ``partial`` as the answer to ``prompt`` (pure). ``partial`` is the
    whole answer so far, the prompt's own prefill (:func:`prompt_prefill`) included: it takes the
    place of the prompt's trailing assistant message, so the prefill is never sent twice."""
    messages, prefill = _split_prefill(prompt)
    if not partial.startswith(prefill):
        raise ConfigError(
            "a continuation's partial answer must begin with the prompt's own prefill "
            f"(a trailing assistant message {prefill[:40]!r})"
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
