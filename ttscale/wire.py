"""The OpenAI wire format: request bodies read and written, responses and stream chunks written.

What the proxy, the wrapped client and :class:`~ttscale.samplers.openai_sampler.OpenAISampler`
share: :func:`parse_request` reads a client's chat or completions body into a
:class:`ChatRequest`, :func:`request_body` writes the body a sampler sends upstream, and
:func:`to_response` / :func:`stream_chunks` write a scaled answer as OpenAI's ``chat.completion``
(or ``text_completion``) object and stream. The answer's ``usage`` counts every token spent (all
samples, every verifier call) and its top-level ``ttscale`` field carries the votes, scores,
samples and budget used. The sampler reads upstream answers with :func:`choice_text`,
:func:`choice_logprobs`, :func:`completion_counts` and, for streams, :class:`StreamRead`. Pure
functions over plain data; errors are :class:`~ttscale.errors.RequestError` naming the field.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from ttscale.errors import DataError, RequestError, UpstreamError
from ttscale.protocols import EARLY_STOP, TokenWatcher
from ttscale.settings import RequestLimits, ScaleSettings, parse_settings
from ttscale.spend import whole_number
from ttscale.types import (
    LOGPROB_FLOOR,
    Candidate,
    Result,
    SamplingParams,
    TokenLogprob,
    Usage,
    logprob_value,
)

__all__ = [
    "MAX_TOP_LOGPROBS",
    "ChatRequest",
    "Endpoint",
    "ScaledAnswer",
    "StreamRead",
    "cached_tokens",
    "capped_pass_through",
    "choice_logprobs",
    "choice_text",
    "choices_by_index",
    "completion_counts",
    "decode_body",
    "encode_answer",
    "metadata",
    "names_n",
    "parse_request",
    "refuse_uncapped_lengths",
    "request_body",
    "stream_chunks",
    "to_response",
    "usage_count",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})

log = logging.getLogger(__name__)

Endpoint = Literal["chat", "completions"]

# OpenAI's bound on alternatives per token (chat top_logprobs, completions logprobs).
MAX_TOP_LOGPROBS = 20

# Request fields this module reads; every other field goes upstream unchanged (vLLM's top_k, ...).
_CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "n",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "logprobs",
        "top_logprobs",
        "stream",
        "stream_options",
        "ttscale",
    }
)
_COMPLETION_FIELDS = (_CHAT_FIELDS - {"messages", "top_logprobs", "max_completion_tokens"}) | {
    "prompt"
}


# Fields some servers read as how many tokens or sequences to generate, past the fields the caps
# hold (n, max_tokens, max_completion_tokens): llama.cpp's n_predict wins over max_tokens, vLLM's
# and legacy OpenAI's best_of multiplies the sequences, TGI's and SGLang's native names, HF's.
_UNCAPPED_LENGTH_FIELDS = ("n_predict", "best_of", "max_new_tokens", "num_return_sequences")

# -- requests ------------------------------------------------------------------------------------


def decode_body(raw: bytes) -> dict[str, Any]:
    """A request body's JSON object; anything else (bad JSON, nesting too deep, a number that is
    not finite: ``NaN``, ``Infinity`` or ``1e999``, which JSON has no place for and no field can
    use) a RequestError naming where."""
    try:
        body = json.loads(raw)
    except RecursionError as exc:
        raise RequestError("the request body is nested too deeply") from exc
    except ValueError as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    where, problem = _unusable(body)
    if problem == "deep":
        raise RequestError(
            f"the request body is nested more than {MAX_BODY_DEPTH} levels deep at {where}",
            param=where,
        )
    if where is not None:
        raise RequestError(
            f"{where or 'the body'} is not a finite number (JSON has no NaN or Infinity)",
            param=where or None,
        )
    return body


MAX_BODY_DEPTH = 64
"""The deepest nesting a request body may have: far more than any request needs (a tool's JSON
schema, a composed verifier), and little enough that reading it never nears Python's stack."""


def _unusable(value: Any) -> tuple[str | None, str | None]:
    """The path of the first thing in a body no field can use, and what it is: a float that is
    NaN or infinite (``"number"``) or nesting deeper than :data:`MAX_BODY_DEPTH` (``"deep"``).
    Iterative: a body may be nested as deeply as the JSON parser allows."""
    pending: list[tuple[str, Any, int]] = [("", value, 0)]
    while pending:
        where, item, depth = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where, "number"
        if isinstance(item, dict | list) and depth >= MAX_BODY_DEPTH:
            return where, "deep"
        if isinstance(item, dict):
            pending.extend(
                (f"{where}.{key}" if where else str(key), child, depth + 1)
                for key, child in item.items()
            )
        elif isinstance(item, list):
            pending.extend((f"{where}[{i}]", child, depth + 1) for i, child in enumerate(item))
    return None, None


def encode_answer(value: Any) -> bytes:
    """An answer (or a stream chunk) as JSON bytes, the one way the proxy writes them.

    A number that is not finite (a judge that gave no rating scores NaN, a reward of -inf) has no
    JSON form; it is written ``null``, so that every client's parser reads the answer.
    """
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except ValueError:
        return json.dumps(_finite_or_null(value), ensure_ascii=False).encode("utf-8")


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(item) for item in value]
    return value


@dataclass(frozen=True)
class ChatRequest:
    """An OpenAI chat or completions request, read and checked.

    ``prompt`` is the messages (chat) or the text (completions); ``extra`` the fields sent upstream
    unchanged; ``n`` the client's ``n`` when it gave one.
    """

    chat: bool
    model: str
    prompt: str | tuple[Mapping[str, Any], ...]
    n: int | None
    params: SamplingParams
    stream: bool
    include_usage: bool
    settings: ScaleSettings
    logprobs: bool


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"{name} must be a number in [{low}, {high}], got {value!r}", param=name)
    return float(value)


def _content(content: Any, param: str) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise RequestError(f"{param} must be a string or a list of parts", param=param)
    for position, part in enumerate(content):
        where = f"{param}[{position}]"
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise RequestError(f"{where} must be an object with a 'type'", param=where)
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise RequestError(f"{where}.text must be a string", param=f"{where}.text")


def _messages(value: Any) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise RequestError("messages must be a non-empty list of messages", param="messages")
    for position, message in enumerate(value):
        param = f"messages[{position}]"
        if not isinstance(message, Mapping):
            raise RequestError(f"{param} must be an object", param=param)
        if not isinstance(message.get("role"), str):
            raise RequestError(f"{param}.role must be a string", param=f"{param}.role")
        _content(message.get("content"), f"{param}.content")
    return tuple(value)


def _completion_prompt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    raise RequestError(
        "prompt must be one string (a strategy answers one prompt per request)", param="prompt"
    )


def _encodable(body: Mapping[str, Any]) -> None:
    # JSON may escape a lone surrogate ("\ud800"), which no UTF-8 body can carry upstream.
    for key, value in body.items():
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestError(
                f"{key} holds text that is not valid Unicode (a lone surrogate)", param=str(key)
            ) from exc


def _max_tokens(body: Mapping[str, Any], chat: bool, limits: RequestLimits) -> int | None:
    name = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    requested = body.get(name)
    if requested is None:
        return limits.max_tokens
    requested = whole_number(requested, name, error=RequestError)
    if limits.max_tokens is not None and requested > limits.max_tokens:
        raise RequestError(
            f"{name} {requested} is over this server's cap of {limits.max_tokens}", param=name
        )
    return requested


def _stop(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise RequestError("stop must be a string or a list of strings", param="stop")


def _logprobs(body: Mapping[str, Any], chat: bool) -> tuple[bool, int | None]:
    """Whether the client wants logprobs back, and the alternatives per token to ask for."""
    value = body.get("logprobs")
    if chat:
        # 0 and 1 compare equal to False and True: the type, not the value, says it is a boolean.
        if value is not None and not isinstance(value, bool):
            raise RequestError("logprobs must be a boolean", param="logprobs")
        top = body.get("top_logprobs")
        if not value:
            if top is not None:
                raise RequestError("top_logprobs needs logprobs: true", param="top_logprobs")
            return False, None
        if top is None or top == 0:
            return True, 0
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise RequestError(
                f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {top!r}",
                param="top_logprobs",
            )
        return True, top
    if value is None:
        return False, None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 20:
        raise RequestError("logprobs must be an integer in [0, 20]", param="logprobs")
    return True, value


def _params(body: Mapping[str, Any], chat: bool, limits: RequestLimits) -> SamplingParams:
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(f"seed must be an integer, got {seed!r}", param="seed")
    known = _CHAT_FIELDS if chat else _COMPLETION_FIELDS
    return SamplingParams(
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 1e-9, 1.0),
        max_tokens=_max_tokens(body, chat, limits),
        stop=_stop(body.get("stop")),
        logprobs=_logprobs(body, chat)[1],
        seed=seed,
        extra_body={key: value for key, value in body.items() if key not in known},
    )


def refuse_uncapped_lengths(body: Mapping[str, Any], chat: bool) -> None:
    """Refuse fields that would set a generation's length or count around the server's caps
    (:data:`_UNCAPPED_LENGTH_FIELDS`; on completions, the chat-only ``max_completion_tokens``)."""
    names = _UNCAPPED_LENGTH_FIELDS if chat else (*_UNCAPPED_LENGTH_FIELDS, "max_completion_tokens")
    for name in names:
        if name in body:
            capped = "max_completion_tokens or max_tokens" if chat else "max_tokens"
            raise RequestError(
                f"{name} would set how much the model server generates around this server's "
                f"caps; use n and {capped}",
                param=name,
            )


def capped_pass_through(
    raw: bytes, body: Mapping[str, Any], chat: bool, limits: RequestLimits
) -> bytes:
    """The bytes a request passed through sends upstream: ``raw`` as it came, once its ``n`` and
    token limit are checked against the caps a scaled request meets; a request setting no token
    limit gets the cap (``max_tokens``) added, since the upstream's own default may be none."""
    refuse_uncapped_lengths(body, chat)
    n = body.get("n")
    if n is not None:
        n = whole_number(n, "n", error=RequestError)
        if n > limits.max_samples:
            raise RequestError(
                f"n {n} is over this server's cap of {limits.max_samples} samples a request",
                param="n",
            )
    names = ("max_tokens", "max_completion_tokens") if chat else ("max_tokens",)
    if any(body.get(name) is not None for name in names):
        for name in names:
            if body.get(name) is not None:
                _max_tokens({name: body[name]}, chat, limits)
        return raw
    if limits.max_tokens is None:
        return raw
    # ASCII: a lone surrogate the client escaped stays escaped, as the upstream would have read it.
    return json.dumps({**body, "max_tokens": limits.max_tokens}).encode()


def parse_request(body: Any, *, chat: bool, limits: RequestLimits | None = None) -> ChatRequest:
    """Read an OpenAI request body; raises :class:`RequestError` naming the bad field."""
    limits = limits or RequestLimits()
    if not isinstance(body, Mapping):
        raise RequestError("the request body must be a JSON object")
    refuse_uncapped_lengths(body, chat)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model must be a non-empty string", param="model")
    prompt: str | tuple[Mapping[str, Any], ...] = (
        _messages(body.get("messages")) if chat else _completion_prompt(body.get("prompt"))
    )
    n = body.get("n")
    if n is not None:
        n = whole_number(n, "n", error=RequestError)
    params = _params(body, chat, limits)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream must be a boolean", param="stream")
    stream_options = body.get("stream_options")
    if stream_options is None:
        stream_options = {}
    if not isinstance(stream_options, Mapping):
        raise RequestError("stream_options must be an object", param="stream_options")
    include_usage = stream_options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise RequestError(
            "stream_options.include_usage must be a boolean", param="stream_options.include_usage"
        )
    _encodable(body)
    return ChatRequest(
        chat=chat,
        model=model,
        prompt=prompt,
        n=n,
        params=params,
        stream=stream,
        include_usage=include_usage,
        settings=parse_settings(body.get("ttscale")),
        logprobs=_logprobs(body, chat)[0],
    )


def request_body(
    model: str,
    request_input: str | list[dict[str, Any]],
    params: SamplingParams,
    count: int,
    seed: int,
    *,
    chat: bool,
) -> dict[str, Any]:
    """The body a sampler sends upstream for ``count`` samples (the inverse of parse_request)."""
    body: dict[str, Any] = {"model": model, "seed": seed}
    if count > 1:
        body["n"] = count
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    if params.stop:
        body["stop"] = list(params.stop)
    if chat:
        body["messages"] = request_input
        if params.logprobs is not None:
            body["logprobs"] = True
            if params.logprobs > 0:
                body["top_logprobs"] = params.logprobs
    else:
        body["prompt"] = request_input
        if params.logprobs is not None:
            body["logprobs"] = params.logprobs
    body.update(params.extra_body)
    return body


# -- responses -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaledAnswer:
    """A strategy's answer to one request, with everything needed to report it."""

    request: ChatRequest
    settings: ScaleSettings
    strategy: str
    samples: int
    k: int
    result: Result
    verifier_usage: Usage
    budget: Mapping[str, Any]
    wall_time_s: float
    id: str
    warnings: tuple[str, ...] = ()

    @property
    def usage(self) -> Usage:
        """Every token spent: the samples and the verifier's calls."""
        return self.result.usage + self.verifier_usage


def _trace_step(result: Result, step: str) -> Mapping[str, Any]:
    for event in reversed(result.trace):
        if event.step == step:
            return event.data
    return _EMPTY


def _fallbacks(result: Result) -> list[str]:
    """What a strategy's ``fallback`` trace events say (best-of-N with no candidate scored)."""
    return [str(e.data.get("reason", "")) for e in result.trace if e.step == "fallback"]


def metadata(answer: ScaledAnswer) -> dict[str, Any]:
    """The response's top-level ``ttscale`` field."""
    result = answer.result
    scores = [
        {"index": c.index, "value": s.value, "verdict": s.verdict}
        for c, s in zip(result.candidates, result.scores, strict=False)
        if s is not None
    ]
    stop = dict(_trace_step(result, "stop"))
    vote = dict(_trace_step(result, "vote"))
    return {
        "strategy": answer.strategy,
        "samples_requested": answer.samples,
        "samples_used": len(result.candidates),
        "k": answer.k,
        "answers": list(result.answers),
        "selected": [c.index for c in result.selected],
        "votes": vote.get("votes", {}),
        "scores": scores,
        "stop": stop.get("reason"),
        "usage": {
            "sampling": result.usage.to_dict(),
            "verifier": answer.verifier_usage.to_dict(),
        },
        "budget": {
            "limits": dict(answer.settings.budget),
            "spent": answer.budget.get("run", {}),
        },
        "verifier": answer.settings.verifier,
        "warnings": [*answer.warnings, *_fallbacks(result)],
    }


def _usage_field(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _chat_logprobs(tokens: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    if tokens is None:
        return None
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": list(t.token.encode()),
                "top_logprobs": [
                    {"token": a, "logprob": p, "bytes": list(a.encode())} for a, p in t.top
                ],
            }
            for t in tokens
        ]
    }


def _completion_logprobs(tokens: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    if tokens is None:
        return None
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
        "text_offset": [],
    }


def _choice(answer: ScaledAnswer, position: int, candidate: Candidate) -> dict[str, Any]:
    finish = candidate.finish_reason or "stop"
    if answer.request.chat:
        return {
            "index": position,
            "message": {"role": "assistant", "content": candidate.text},
            "finish_reason": finish,
            "logprobs": _chat_logprobs(candidate.logprobs) if answer.request.logprobs else None,
        }
    return {
        "index": position,
        "text": candidate.text,
        "finish_reason": finish,
        "logprobs": _completion_logprobs(candidate.logprobs) if answer.request.logprobs else None,
    }


def to_response(answer: ScaledAnswer, model: str) -> dict[str, Any]:
    """The answer as an OpenAI ``chat.completion`` or ``text_completion`` object."""
    chat = answer.request.chat
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + answer.id,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_choice(answer, i, c) for i, c in enumerate(answer.result.selected)],
        "usage": _usage_field(answer.usage),
        "system_fingerprint": None,
        "ttscale": metadata(answer),
    }


def _pieces(text: str, size: int = 48) -> list[str]:
    # Content deltas of a few words each, split after whitespace so no word is cut in two.
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            end = space + 1 if space > start else end
        pieces.append(text[start:end])
        start = end
    return pieces


def _streamed(
    candidate: Candidate, logprobs: bool, chat: bool
) -> list[tuple[str, dict[str, Any] | None]]:
    """A candidate's content deltas, each with the logprobs of its tokens when asked for (pure).

    With logprobs, a delta is a few tokens, as a server streams them; when the token texts do
    not spell the text (a server that detokenises otherwise), the text comes whole with them.
    """
    tokens = candidate.logprobs if logprobs else None
    if tokens is None:
        return [(piece, None) for piece in _pieces(candidate.text)]
    field = _chat_logprobs if chat else _completion_logprobs
    if "".join(t.token for t in tokens) != candidate.text:
        return [(candidate.text, field(tokens))]
    groups = [tokens[i : i + _TOKENS_A_DELTA] for i in range(0, len(tokens), _TOKENS_A_DELTA)]
    return [("".join(t.token for t in group), field(group)) for group in groups]


_TOKENS_A_DELTA = 8


def stream_chunks(answer: ScaledAnswer, model: str) -> list[dict[str, Any]]:
    """The answer as the chunks of an OpenAI stream (without the ``[DONE]`` line).

    Per selected answer: a role delta (chat), content deltas, a finish reason; then, when the
    request's ``stream_options.include_usage`` asks, a chunk with empty choices and the usage. The
    last chunk carries the ``ttscale`` field.
    """
    chat = answer.request.chat
    base = {
        "id": ("chatcmpl-" if chat else "cmpl-") + answer.id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }
    chunks: list[dict[str, Any]] = []

    def choice(
        position: int,
        text: str | None,
        finish: str | None,
        role: bool = False,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {
                "index": position,
                "delta": delta,
                "finish_reason": finish,
                "logprobs": logprobs,
            }
        return {
            "index": position,
            "text": text or "",
            "finish_reason": finish,
            "logprobs": logprobs,
        }

    for position, candidate in enumerate(answer.result.selected):
        if chat:
            chunks.append({**base, "choices": [choice(position, "", None, role=True)]})
        for piece, logprobs in _streamed(candidate, answer.request.logprobs, chat):
            chunks.append({**base, "choices": [choice(position, piece, None, logprobs=logprobs)]})
        finish = candidate.finish_reason or "stop"
        chunks.append({**base, "choices": [choice(position, None, finish)]})
    if answer.request.include_usage:
        chunks.append({**base, "choices": [], "usage": _usage_field(answer.usage)})
    if chunks:
        chunks[-1] = {**chunks[-1], "ttscale": metadata(answer)}
    return chunks


# -- upstream answers, as a sampler reads them -----------------------------------------------------


@dataclass
class StreamRead:
    """What one streamed sample has delivered so far."""

    pieces: list[str] = field(default_factory=list)
    tokens: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None
    request_id: str | None = None

    def take(self, chunk: object, endpoint: Endpoint, watcher: TokenWatcher) -> bool:
        """Read one chunk; True once the watcher stopped the sample (the stream is to close)."""
        if not isinstance(chunk, dict):
            return False
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        self.model = self.model or (str(chunk["model"]) if chunk.get("model") else None)
        self.request_id = self.request_id or (str(chunk["id"]) if chunk.get("id") else None)
        stop = False
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if endpoint == "chat":
                delta = choice.get("delta")
                piece = delta.get("content") if isinstance(delta, dict) else None
            else:
                piece = choice.get("text")
            if isinstance(piece, str):
                self.pieces.append(piece)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
            for token in choice_logprobs(choice, endpoint) or ():
                self.tokens.append(token)
                # Every token of the chunk is read (it arrived and is paid for); the stream
                # closes after the chunk in which the watcher stopped.
                stop = watcher.feed(token) or stop
        if stop and self.finish_reason is None:
            self.finish_reason = EARLY_STOP
        return stop and self.finish_reason == EARLY_STOP


def choices_by_index(choices: Sequence[object], count: int) -> dict[int, dict[str, Any]]:
    """An answer's choices by index: indices outside ``range(count)`` (a misbehaving server) are
    not samples that were asked for, and a repeated index is one sample, never two."""
    by_index: dict[int, dict[str, Any]] = {}
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        position = choice.get("index", 0)
        if isinstance(position, int) and 0 <= position < count:
            by_index.setdefault(position, choice)
    return by_index


# More tokens than any request could hold: a count past it is garbage, not a bill.
_MOST_TOKENS = 1 << 40


def usage_count(usage: object, name: str) -> int:
    """``usage[name]`` as a count of tokens: a whole number >= 0 (0 when absent). A negative,
    fractional, absurd or non-numeric value is no count; it is read as 0 with a warning, as a
    server's garbage must not make counters run backwards or spend look unbounded."""
    value = usage.get(name) if isinstance(usage, dict) else None
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MOST_TOKENS:
        log.warning("the model server said usage.%s = %r, not a count; read as 0", name, value)
        return 0
    return value


def cached_tokens(response: object, usage: object = None) -> int:
    """Prompt tokens an answer says the server reused from its prefix cache (0 if unsaid):
    ``usage.prompt_tokens_details.cached_tokens`` (OpenAI, vLLM, llama.cpp's server), else
    llama.cpp's ``timings.cache_n``. ``usage`` is the answer's usage (a stream's last chunk)."""
    if usage is None and isinstance(response, dict):
        usage = response.get("usage")
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    found = details.get("cached_tokens") if isinstance(details, dict) else None
    if found is None and isinstance(response, dict):
        timings = response.get("timings")
        found = timings.get("cache_n") if isinstance(timings, dict) else None
    if isinstance(found, bool) or not isinstance(found, int) or found < 0:
        return 0
    return found


def choice_text(choice: dict[str, Any], endpoint: Endpoint) -> str:
    if endpoint == "chat":
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
    else:
        content = choice.get("text")
    return content if isinstance(content, str) else ""


def choice_logprobs(choice: dict[str, Any], endpoint: Endpoint) -> tuple[TokenLogprob, ...] | None:
    """A choice's token logprobs (None when it carries none), each value read by
    :func:`~ttscale.types.logprob_value`.

    A value that is not a log probability raises :class:`UpstreamError` naming its place in the
    choice (``logprobs.content[3].top_logprobs[1].logprob``): read as any number it could decide a
    vote. A ``null`` alternative is what JSON encoders that cannot write ``-inf`` (llama.cpp's,
    orjson) send for a token ruled out, and is read as ``-inf``; a ``null`` for the chosen token
    has no such reading (it was sampled) and is an error.
    """
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    if endpoint == "chat":
        content = logprobs.get("content")
        return None if not isinstance(content, list) else _chat_tokens(content)
    tokens = logprobs.get("tokens")
    values = logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list):
        return None
    tops = logprobs.get("top_logprobs")
    if tops is not None and not isinstance(tops, list):
        raise UpstreamError(f"logprobs.top_logprobs must be a list, got {tops!r}")
    if len(values) != len(tokens) or (tops is not None and len(tops) != len(tokens)):
        raise UpstreamError(
            f"logprobs: {len(tokens)} tokens but {len(values)} token_logprobs"
            + (f" and {len(tops)} top_logprobs" if tops is not None else "")
        )
    read = []
    for i, (token, value) in enumerate(zip(tokens, values, strict=True)):
        top = tops[i] if tops is not None else None
        if top is not None and not isinstance(top, dict):
            raise UpstreamError(f"logprobs.top_logprobs[{i}] must be an object, got {top!r}")
        chosen = _logprob(value, f"logprobs.token_logprobs[{i}]", alternative=False)
        alternatives = tuple(
            (str(alt), _logprob(lp, f"logprobs.top_logprobs[{i}][{alt!r}]", alternative=True))
            for alt, lp in (top or {}).items()
        )
        read.append(TokenLogprob(str(token), chosen, alternatives))
    return tuple(read)


def _chat_tokens(content: list[Any]) -> tuple[TokenLogprob, ...]:
    read = []
    for i, item in enumerate(content):
        where = f"logprobs.content[{i}]"
        if not isinstance(item, dict):
            raise UpstreamError(f"{where} must be an object, got {item!r}")
        top = item.get("top_logprobs") or []
        if not isinstance(top, list) or not all(isinstance(alt, dict) for alt in top):
            raise UpstreamError(f"{where}.top_logprobs must be a list of objects, got {top!r}")
        chosen = _logprob(item.get("logprob"), f"{where}.logprob", alternative=False)
        alternatives = tuple(
            (
                str(alt.get("token", "")),
                _logprob(
                    alt.get("logprob"), f"{where}.top_logprobs[{j}].logprob", alternative=True
                ),
            )
            for j, alt in enumerate(top)
        )
        read.append(TokenLogprob(str(item.get("token", "")), chosen, alternatives))
    return tuple(read)


def _logprob(raw: object, where: str, *, alternative: bool) -> float:
    if raw is None and alternative:
        return LOGPROB_FLOOR
    try:
        return logprob_value(raw)
    except DataError as exc:
        raise UpstreamError(f"{where}: {exc}") from exc


def completion_counts(
    texts: Sequence[str],
    token_lists: Sequence[tuple[TokenLogprob, ...] | None],
    total: int,
    reported: bool,
) -> tuple[list[int], bool]:
    """Completion tokens per choice, and whether they are exact.

    One choice: the server's total is that choice's count. Logprobs for every choice: their
    lengths are exact. Otherwise the total is apportioned by text length with the largest
    remainder method, so the per-choice counts still add up to what the server reported.
    """
    if not texts:
        return [], True
    if len(texts) == 1:
        return [total], reported
    if all(tokens is not None for tokens in token_lists):
        return [len(tokens or ()) for tokens in token_lists], True
    weights = [max(len(text), 1) for text in texts]
    scale = total / sum(weights)
    shares = [weight * scale for weight in weights]
    counts = [int(share) for share in shares]
    leftover = total - sum(counts)
    by_remainder = sorted(range(len(texts)), key=lambda i: shares[i] - counts[i], reverse=True)
    for i in by_remainder[:leftover]:
        counts[i] += 1
    return counts, False


# How a message names the n parameter, when the error gives no ``param``: n quoted ('n', "n",
# `n`), a bare n set against a value or rule ("n must be 1", "only n=1", "n > 1"), "parameter n",
# or how servers word it without the letter (llama.cpp: "Only one completion choice is allowed";
# Gemini: "Multiple candidates is not enabled"). A bare n must stand alone: "function must",
# "gen_len > max" and "top_n must" are about something else.
_NAMES_N = re.compile(
    r"""['"`]n['"`]"""
    r"|(?<![\w.\[-])n\s*(?:[<>!]?=|[<>]|must\b|should\b|cannot\b|can't\b|is\s+not\b"
    r"|not\s+supported\b|is\s+unsupported\b)"
    r"|\b(?:parameter|argument|field)\s*:?\s*n\b"
    r"|\bcompletion\s+choices?\b"
    r"|\bmultiple\s+(?:candidates|choices|completions)\b",
    re.IGNORECASE,
)


def names_n(body: object, fallback: str) -> bool:
    """Whether a 400/422 is about the ``n`` parameter (vs. a bad request of another kind).

    The parameter the error names decides when it names one (``param``, or the fields of a
    validation error's ``detail``); otherwise its message must plainly name n. A wrong "yes" would
    quietly cost every later draw its batching and hide the real error, so doubt means "no" and
    the error is raised for what it is.
    """
    # ``body`` is an error answer's body (or its "error" object); ``fallback`` the message to read
    # when the body has none.
    error: object = body
    if isinstance(error, Mapping):
        error = error.get("error", error)
    message: object = None
    if isinstance(error, Mapping):
        param = error.get("param")
        if isinstance(param, str) and param:
            return param == "n"
        fields = _detail_fields(error.get("detail"))
        if fields:
            return "n" in fields
        message = error.get("message")
    elif isinstance(error, str):
        message = error
    if not isinstance(message, str) or not message:
        message = fallback
    return bool(_NAMES_N.search(message))


def _detail_fields(detail: object) -> set[str]:
    """The fields a FastAPI validation error (``detail: [{"loc": [..., field]}]``) names."""
    if not isinstance(detail, list):
        return set()
    fields = set()
    for item in detail:
        location = item.get("loc") if isinstance(item, Mapping) else None
        if isinstance(location, (list, tuple)) and location:
            fields.add(str(location[-1]))
    return fields
