"""A real OpenAI-compatible HTTP server on 127.0.0.1, for tests and benchmarks.

:class:`LoopbackServer` speaks enough of the OpenAI API (``/v1/chat/completions``,
``/v1/completions``, ``/v1/models``) for the real ``openai`` client to talk to it over TCP, so that
tests exercise the same HTTP path as production: connection pooling, retries, timeouts, streaming.
Answers are scripted (a table or a function), token counts are deterministic
(:func:`count_tokens`), and faults (rate limits, server errors, connection resets, slow or
malformed answers) can be injected by request ordinal. Answers may carry a confidence profile
(:class:`ScriptedAnswer`, :data:`CONFIDENT`, :data:`UNCONFIDENT`) that sets the logprobs and top
alternatives of every token, and streams may be paced (``token_interval``) so that a client can
close one part way; the log then says how many tokens were written before it did. Every request
is logged as a
:class:`RequestRecord`, so a test can compare what a client believes it spent with what the server
generated and delivered.

It is built on the standard library only (an asyncio protocol with a hand-written HTTP/1.1 parser,
keep-alive by default), so it ships in the core package, and it costs little CPU per request: a
benchmark can push thousands of requests through it without the server becoming the bottleneck.
A client that closes its end of a connection is taken to have given up on any answer still due.

::

    with LoopbackServer(answers={"2+2?": "4"}, latency=0.02) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        ...
        assert server.delivered_usage()["requests"] == 1
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import math
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, Literal, cast

from ttscale.errors import ConfigError, TTScaleError

__all__ = [
    "CONFIDENT",
    "UNCONFIDENT",
    "Fault",
    "FaultKind",
    "LoopbackServer",
    "PrefixCache",
    "RequestRecord",
    "Responder",
    "ScriptRequest",
    "ScriptedAnswer",
    "ServerConfig",
    "TokenProfile",
    "count_tokens",
    "prompt_token_sequence",
]

logger = logging.getLogger(__name__)

FaultKind = Literal["rate_limit", "server_error", "reset", "slow", "malformed_json", "cut_stream"]
_FAULT_KINDS = ("rate_limit", "server_error", "reset", "slow", "malformed_json", "cut_stream")
_N_SUPPORT = ("yes", "reject", "ignore")

# Word runs and single punctuation marks: crude, but deterministic and cheap, which is all a test
# server's tokenizer needs to be.
_TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")

# Made-up logprobs cycle through these; the chosen token is always the most likely one.
_LOGPROB_CYCLE = tuple(round(-0.05 * step - 0.01, 4) for step in range(7))
_MAX_TOP_LOGPROBS = 20
# Alternatives in top-logprob lists. The angle brackets tokenize apart, so no alternative can equal
# a generated token and a completions top-logprob dict never loses its chosen entry to a clash.
_ALTERNATIVE_TOKENS = tuple(f"<alt{rank}>" for rank in range(1, _MAX_TOP_LOGPROBS))
_MAX_N = 128
# One encoder for every response: json.dumps() with options would build a new one each call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_MAX_HEAD_BYTES = 64 * 1024
_MAX_BODY_BYTES = 64 * 1024 * 1024
# The benchmark opens 64 connections at once; the default backlog of 100 leaves little headroom.
_LISTEN_BACKLOG = 1024
_NOT_A_GENERATION = -1
_NO_RESPONSE = 0

_GENERATION_PATHS = {"/v1/chat/completions": True, "/v1/completions": False}  # path -> is chat
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def count_tokens(text: str) -> int:
    """The number of tokens the loopback server counts in ``text``: word runs and punctuation."""
    return len(_TOKEN_PATTERN.findall(text))


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptRequest:
    """What a scripted responder is told about one sample it is asked to write.

    ``prompt`` is the last user message's content (chat) or the prompt string (completions);
    ``index`` counts the samples this server has generated for the same prompt before this one,
    in arrival order; ``choice`` is the sample's position among the request's ``n`` choices.
    """

    prompt: str
    index: int
    seed: int | None
    choice: int
    temperature: float | None
    body: Mapping[str, Any]


@dataclass(frozen=True)
class TokenProfile:
    """How sure the scripted model is at one token position.

    The chosen token gets ``logprob``; its alternatives follow it, each ``gap`` below the one
    before (alternative r at ``logprob - r * gap``). With the top k asked for, DeepConf's token
    confidence is therefore exactly ``-logprob + gap * (k - 1) / 2``.

    ``broken`` scripts a misbehaving server: ``logprob`` may then be NaN, an infinity or
    positive, and ``gap`` an infinity (alternatives at ``-Infinity``), written as such in the
    JSON; ``null_alternatives`` writes the alternatives' logprobs as ``null``, as servers whose
    JSON encoder cannot write ``-inf`` do.
    """

    logprob: float
    gap: float
    broken: bool = False
    null_alternatives: bool = False

    def __post_init__(self) -> None:
        if self.broken:
            return
        if not -math.inf < self.logprob <= 0:
            raise ConfigError(f"a logprob must be a number <= 0, got {self.logprob}")
        if not 0 <= self.gap < math.inf:
            raise ConfigError(f"gap must be a number >= 0, got {self.gap}")


CONFIDENT = TokenProfile(logprob=-0.01, gap=5.0)
"""A peaked distribution: the chosen token near certain, its alternatives far below."""
UNCONFIDENT = TokenProfile(logprob=-1.5, gap=0.25)
"""A flat distribution: the alternatives nearly as likely as the chosen token."""


@dataclass(frozen=True)
class ScriptedAnswer:
    """An answer with the logprobs it is written with: token i uses ``profile[i]``, and tokens past
    the end of the profile repeat its last entry (one entry: every token alike)."""

    text: str
    profile: tuple[TokenProfile, ...] = (CONFIDENT,)

    def __post_init__(self) -> None:
        if isinstance(self.profile, TokenProfile):
            object.__setattr__(self, "profile", (self.profile,))
        object.__setattr__(self, "profile", tuple(self.profile))
        if not self.profile or not all(isinstance(p, TokenProfile) for p in self.profile):
            raise ConfigError("a ScriptedAnswer's profile needs at least one TokenProfile")


Answer = str | ScriptedAnswer

Responder = Callable[[ScriptRequest], Answer]
"""A function that writes one sample's answer (text, or text with its confidence profile)."""


@dataclass(frozen=True)
class Fault:
    """A failure injected into chosen generation requests.

    Generation requests (chat and completions) are numbered from 0 in arrival order; the fault hits
    the ordinals in ``on_requests`` and, when ``every`` is set, every ``every``-th request
    (ordinals ``every - 1``, ``2 * every - 1``, ...). Kinds:

    - ``rate_limit``: 429 with ``Retry-After`` and ``retry-after-ms`` headers; nothing generated.
    - ``server_error``: 500; nothing generated.
    - ``reset``: the request is read, then the connection is aborted with a TCP RST.
    - ``slow``: the answer is generated, then held back ``delay`` seconds.
    - ``malformed_json``: 200 with a truncated JSON body; generated but unusable by the client.
    - ``cut_stream``: a streamed answer breaks off: its first ``keep_events`` events are sent
      (default: half; negative counts from the end, so -1 is all but ``[DONE]``), then the
      connection is closed without the stream's end (a request not streamed is answered whole).
      The whole answer was generated, so it was paid for.
    """

    kind: FaultKind
    on_requests: frozenset[int] = frozenset()
    every: int | None = None
    retry_after: float = 0.0
    delay: float = 5.0
    keep_events: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ConfigError(f"unknown fault kind {self.kind!r}; known: {', '.join(_FAULT_KINDS)}")
        object.__setattr__(self, "on_requests", frozenset(self.on_requests))
        if any(not isinstance(ordinal, int) or ordinal < 0 for ordinal in self.on_requests):
            raise ConfigError("fault on_requests must hold request ordinals >= 0")
        if self.every is not None and self.every < 1:
            raise ConfigError(f"fault every must be >= 1, got {self.every}")
        if not self.on_requests and self.every is None:
            raise ConfigError(f"a {self.kind} fault needs on_requests or every to say when it hits")
        if self.retry_after < 0 or self.delay < 0:
            raise ConfigError("fault retry_after and delay must be >= 0")

    def hits(self, ordinal: int) -> bool:
        """Whether the generation request with this ordinal gets the fault."""
        if ordinal in self.on_requests:
            return True
        return self.every is not None and ordinal % self.every == self.every - 1


@dataclass(frozen=True)
class ServerConfig:
    """How a :class:`LoopbackServer` answers.

    ``answers`` maps a prompt to a fixed answer or to a list of answers cycled by sample index, or
    is a :data:`Responder` function; prompts it does not cover get ``default_answer``. An answer is
    text (its logprobs made up, all fairly confident) or a :class:`ScriptedAnswer` with a
    confidence profile. ``latency`` is added to every generation request without blocking others.
    ``token_interval`` paces streams: each token is written that many seconds after the one before
    (0: a stream is written at once), as a model generates them, so a client can close a stream
    part way and the log records how many tokens it was sent. ``logprobs`` False makes a server
    that ignores requests for logprobs, as some do. ``n_support`` says what a request
    with ``n > 1`` gets: ``yes`` its choices (at most ``max_choices`` when set), ``reject`` a 400
    naming ``n``, ``ignore`` one choice. ``port`` 0 takes a free port. ``routes`` adds JSON
    endpoints (a path such as ``/v1/pooling`` mapped to a function of the decoded body returning
    the reply): a scripted reward model, say; a function raising ``ValueError`` or a ttscale error
    answers 400 with its message. ``prefix_cache`` makes the server report, as a model server with
    a prefix cache does (vLLM, llama.cpp), ``usage.prompt_tokens_details.cached_tokens``: the
    longest token prefix a prompt shares with any prompt served before it (chat messages count as
    their template would: 3 tokens before the content, 1 after). ``echo_prefill`` answers a chat
    request whose last message is the assistant's (a prefill to continue) with that message's
    content before the continuation, in whole responses, as llama.cpp's ``llama-server`` does;
    ``stop``, ``max_tokens``, logprobs and usage still cover the continuation alone.
    ``stream_usage`` False makes a server that sends no usage in streams even when asked.
    """

    answers: Mapping[str, Answer | Sequence[Answer]] | Responder | None = None
    default_answer: str = "The answer is 42."
    latency: float = 0.0
    token_interval: float = 0.0
    logprobs: bool = True
    n_support: Literal["yes", "reject", "ignore"] = "yes"
    max_choices: int | None = None
    faults: tuple[Fault, ...] = ()
    model: str = "loopback"
    host: str = "127.0.0.1"
    port: int = 0
    routes: Mapping[str, Callable[[dict[str, Any]], Any]] = dataclasses.field(default_factory=dict)
    prefix_cache: bool = False
    echo_prefill: bool = False
    stream_usage: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.answers, Mapping):
            for prompt, script in self.answers.items():
                if isinstance(script, str | ScriptedAnswer):
                    continue
                if (
                    not isinstance(script, Sequence)
                    or not script
                    or not all(isinstance(answer, str | ScriptedAnswer) for answer in script)
                ):
                    raise ConfigError(
                        f"answers[{prompt!r}] must be an answer or a non-empty list of answers "
                        "(strings or ScriptedAnswer)"
                    )
        elif self.answers is not None and not callable(self.answers):
            raise ConfigError("answers must be a mapping, a function or None")
        if self.latency < 0:
            raise ConfigError(f"latency must be >= 0, got {self.latency}")
        if self.token_interval < 0:
            raise ConfigError(f"token_interval must be >= 0, got {self.token_interval}")
        if self.n_support not in _N_SUPPORT:
            raise ConfigError(f"n_support must be one of {', '.join(_N_SUPPORT)}")
        if self.max_choices is not None and self.max_choices < 1:
            raise ConfigError(f"max_choices must be >= 1, got {self.max_choices}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        object.__setattr__(self, "faults", tuple(self.faults))
        if not all(isinstance(fault, Fault) for fault in self.faults):
            raise ConfigError("faults must be Fault instances")
        if not all(isinstance(p, str) and p.startswith("/") for p in self.routes) or not all(
            callable(handler) for handler in self.routes.values()
        ):
            raise ConfigError("routes must map paths starting with '/' to functions")
        object.__setattr__(self, "routes", MappingProxyType(dict(self.routes)))


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request the server answered (or aborted), as the server saw it.

    ``ordinal`` numbers generation requests (chat and completions with a JSON body) in arrival
    order; other requests have ``-1``. ``status`` is what the server sent, or would have sent to a
    client that hung up first; ``0`` when it reset the connection. ``generated`` says the server
    produced choices (and spent the tokens), ``delivered`` that the whole response reached a still
    connected client in a form it could parse. ``connection`` numbers TCP connections, so that
    keep-alive shows. Times are ``time.monotonic()``.

    For a paced stream (``token_interval`` > 0), ``streamed_tokens`` counts the tokens written
    before the stream ended, and ``client_closed`` says the client closed it part way; the server
    then stops generating, as model servers do, so ``completion_tokens`` is what it had written.
    """

    ordinal: int
    path: str
    method: str
    body: dict[str, Any] | None
    status: int
    fault: str | None
    choices: int
    prompt_tokens: int
    completion_tokens: int
    delivered: bool
    started_at: float
    finished_at: float
    generated: bool = False
    connection: int = 0
    streamed_tokens: int | None = None
    client_closed: bool = False
    cached_tokens: int | None = None  # prompt tokens reported as cached (prefix_cache servers)


# -- generation ---------------------------------------------------------------------------------


class _RequestError(Exception):
    """A request the server answers with an OpenAI-format error; never leaves this module."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type


@dataclass(frozen=True)
class _Generation:
    """A generation request's settings, read and checked once."""

    chat: bool
    prompts: tuple[str, ...]  # what the responder is asked about; completions may batch several
    prompt_tokens: int
    n: int
    max_tokens: int | None
    stops: tuple[str, ...]
    logprobs: int | None  # alternatives per token; None when logprobs were not asked for
    stream: bool
    include_usage: bool
    seed: int | None
    temperature: float | None
    model: str
    cached_tokens: int | None = None  # reported when the server keeps a prefix cache


@dataclass(frozen=True)
class _Choice:
    text: str
    finish_reason: str
    tokens: int
    profile: tuple[TokenProfile, ...] = ()  # empty: the made-up cycle of fairly sure tokens
    echoed: str = ""  # a prefill sent back before the text (ServerConfig.echo_prefill)

    @property
    def pieces(self) -> tuple[str, ...]:
        # Only streams and logprobs need the pieces, so they are cut on demand.
        return _token_pieces(self.text)

    def level(self, position: int) -> TokenProfile:
        if self.profile:
            return self.profile[min(position, len(self.profile) - 1)]
        return TokenProfile(_LOGPROB_CYCLE[position % len(_LOGPROB_CYCLE)], 1.0)


def _optional_int(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _RequestError(400, f"{name} must be an integer from {low} to {high}", param=name)
    return value


def _content_text(content: Any, position: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type", "text") == "text"
        )
    raise _RequestError(
        400, "message content must be a string or a list of parts", param=f"messages[{position}]"
    )


def _read_prompts(body: Mapping[str, Any], chat: bool) -> tuple[tuple[str, ...], int]:
    """The prompts a request asks about and the prompt tokens it is charged for."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _RequestError(400, "messages must be a non-empty list", param="messages")
        prompt_tokens = 0
        last_user = ""
        for position, message in enumerate(messages):
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                raise _RequestError(
                    400, "each message needs a string role", param=f"messages[{position}]"
                )
            text = _content_text(message.get("content"), position)
            # Chat templates wrap every message in a few special tokens; 4 is what OpenAI charges.
            prompt_tokens += count_tokens(text) + 4
            if message["role"] == "user":
                last_user = text
        return (last_user,), prompt_tokens
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return (prompt,), count_tokens(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(item, str) for item in prompt):
        return tuple(prompt), sum(count_tokens(item) for item in prompt)
    raise _RequestError(400, "prompt must be a string or a list of strings", param="prompt")


def _read_generation(body: Mapping[str, Any], chat: bool, default_model: str) -> _Generation:
    prompts, prompt_tokens = _read_prompts(body, chat)
    n = _optional_int(body, "n", 1, _MAX_N) or 1
    max_tokens = _optional_int(body, "max_completion_tokens", 1, 2**31) if chat else None
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens", 1, 2**31)
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        stops = tuple(item for item in stop if item)
    else:
        raise _RequestError(400, "stop must be a string or a list of strings", param="stop")
    if chat:
        wants_logprobs = body.get("logprobs")
        if wants_logprobs is not None and not isinstance(wants_logprobs, bool):
            raise _RequestError(400, "logprobs must be a boolean", param="logprobs")
        top = _optional_int(body, "top_logprobs", 0, _MAX_TOP_LOGPROBS)
        logprobs = (top or 0) if wants_logprobs else None
    else:
        logprobs = _optional_int(body, "logprobs", 0, _MAX_TOP_LOGPROBS)
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, (int, float))
    ):
        raise _RequestError(400, "temperature must be a number", param="temperature")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _RequestError(400, "seed must be an integer", param="seed")
    stream = body.get("stream") is True
    stream_options = body.get("stream_options")
    include_usage = (
        stream
        and isinstance(stream_options, Mapping)
        and stream_options.get("include_usage") is True
    )
    model = body.get("model")
    return _Generation(
        chat=chat,
        prompts=prompts,
        prompt_tokens=prompt_tokens,
        n=n,
        max_tokens=max_tokens,
        stops=stops,
        logprobs=logprobs,
        stream=stream,
        include_usage=include_usage,
        seed=seed,
        temperature=None if temperature is None else float(temperature),
        model=model if isinstance(model, str) and model else default_model,
    )


def _finish_choice(answer: Answer, max_tokens: int | None, stops: tuple[str, ...]) -> _Choice:
    """The answer as a model would return it under ``stop`` and ``max_tokens``, and why it ended."""
    if isinstance(answer, ScriptedAnswer):
        choice = _finish_choice(answer.text, max_tokens, stops)
        return dataclasses.replace(choice, profile=answer.profile)
    text = answer
    if stops:
        cuts = [found for found in (text.find(stop) for stop in stops) if found >= 0]
        if cuts:
            text = text[: min(cuts)]
    tokens = len(_TOKEN_PATTERN.findall(text))
    if max_tokens is None or tokens <= max_tokens:
        return _Choice(text, "stop", tokens)
    # Keep everything up to the end of the last token allowed, exactly as a model that ran out of
    # tokens would have written it.
    last_allowed = next(itertools.islice(_TOKEN_PATTERN.finditer(text), max_tokens - 1, None))
    return _Choice(text[: last_allowed.end()], "length", max_tokens)


def _token_pieces(text: str) -> tuple[str, ...]:
    """``text`` cut into its tokens, each carrying the whitespace before it, so they join back."""
    ends = [match.end() for match in _TOKEN_PATTERN.finditer(text)]
    if not ends:
        return ()
    ends[-1] = len(text)  # trailing whitespace rides on the last token
    pieces = []
    start = 0
    for end in ends:
        pieces.append(text[start:end])
        start = end
    return tuple(pieces)


def _alternatives(piece: str, level: TokenProfile, top: int) -> list[tuple[str, float | None]]:
    """The ``top`` most likely tokens at a position, chosen token first."""
    ranked: list[tuple[str, float | None]] = [(piece, level.logprob)]
    for rank, token in enumerate(_ALTERNATIVE_TOKENS[: max(top - 1, 0)], start=1):
        value = None if level.null_alternatives else round(level.logprob - rank * level.gap, 4)
        ranked.append((token, value))
    return ranked[:top]


def _chat_logprob(piece: str, level: TokenProfile, top: int) -> dict[str, Any]:
    return {
        "token": piece,
        "logprob": level.logprob,
        "bytes": list(piece.encode()),
        "top_logprobs": [
            {"token": token, "logprob": logprob, "bytes": list(token.encode())}
            for token, logprob in _alternatives(piece, level, top)
        ],
    }


def _completion_logprobs(
    choice: _Choice,
    pieces: Sequence[str],
    top: int,
    first_position: int = 0,
    first_offset: int = 0,
) -> dict[str, Any]:
    offsets = []
    offset = first_offset
    for piece in pieces:
        offsets.append(offset)
        offset += len(piece)
    positions = range(first_position, first_position + len(pieces))
    return {
        "tokens": list(pieces),
        "token_logprobs": [choice.level(p).logprob for p in positions],
        "top_logprobs": [
            dict(_alternatives(piece, choice.level(p), top))
            for piece, p in zip(pieces, positions, strict=True)
        ],
        "text_offset": offsets,
    }


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def _usage(generation: _Generation, choices: Sequence[_Choice]) -> dict[str, Any]:
    completion_tokens = sum(choice.tokens for choice in choices)
    usage: dict[str, Any] = {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": generation.prompt_tokens + completion_tokens,
    }
    if generation.cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": generation.cached_tokens}
    return usage


def prompt_token_sequence(body: Mapping[str, Any], chat: bool) -> tuple[str, ...]:
    """The tokens the server counts in a checked request's prompt, in order (pure): a chat
    message is ``<|im_start|>``, its role, a newline, its content's tokens, ``<|im_end|>``."""
    if not chat:
        prompt = body.get("prompt")
        texts = [prompt] if isinstance(prompt, str) else list(prompt or ())
        return tuple(token for text in texts for token in _TOKEN_PATTERN.findall(str(text)))
    tokens: list[str] = []
    for position, message in enumerate(body.get("messages") or ()):
        tokens += ["<|im_start|>", str(message.get("role")), "\n"]
        tokens += _TOKEN_PATTERN.findall(_content_text(message.get("content"), position))
        tokens.append("<|im_end|>")
    return tuple(tokens)


class PrefixCache:
    """The token prefixes of prompts served so far (a trie), as a model server's prefix cache;
    past ``max_nodes`` tokens it starts empty again."""

    def __init__(self, max_nodes: int = 1_000_000) -> None:
        self.max_nodes = max_nodes
        self._root: dict[str, Any] = {}
        self._nodes = 0

    def reuse(self, tokens: Sequence[str]) -> int:
        """How many leading ``tokens`` are cached; then the whole of ``tokens`` is."""
        if self._nodes + len(tokens) > self.max_nodes:
            self._root, self._nodes = {}, 0
        node, matched = self._root, 0
        for token in tokens:
            child = node.get(token)
            if child is None:
                break
            node, matched = child, matched + 1
        for token in tokens[matched:]:
            node = node.setdefault(token, {})
            self._nodes += 1
        return matched


def _whole_response(
    generation: _Generation, choices: Sequence[_Choice], serial: int, created: int
) -> dict[str, Any]:
    rendered = []
    for index, choice in enumerate(choices):
        logprobs: dict[str, Any] | None = None
        if generation.chat:
            if generation.logprobs is not None:
                logprobs = {
                    "content": [
                        _chat_logprob(piece, choice.level(position), generation.logprobs)
                        for position, piece in enumerate(choice.pieces)
                    ]
                }
            rendered.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": choice.echoed + choice.text},
                    "logprobs": logprobs,
                    "finish_reason": choice.finish_reason,
                }
            )
        else:
            if generation.logprobs is not None:
                logprobs = _completion_logprobs(choice, choice.pieces, generation.logprobs)
            rendered.append(
                {
                    "index": index,
                    "text": choice.text,
                    "logprobs": logprobs,
                    "finish_reason": choice.finish_reason,
                }
            )
    return {
        "id": f"chatcmpl-loopback{serial}" if generation.chat else f"cmpl-loopback{serial}",
        "object": "chat.completion" if generation.chat else "text_completion",
        "created": created,
        "model": generation.model,
        "choices": rendered,
        "usage": _usage(generation, choices),
    }


def _stream_events(
    generation: _Generation, choices: Sequence[_Choice], serial: int, created: int
) -> list[tuple[str, int]]:
    """The server-sent events of a streamed answer: one per token per choice, then the ends.

    Each event comes with the number of tokens it carries (1 for a token's event, else 0), for
    pacing and for counting what a client was sent before it closed the stream.
    """
    chat = generation.chat
    header: dict[str, Any] = {
        "id": f"chatcmpl-loopback{serial}" if chat else f"cmpl-loopback{serial}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": generation.model,
    }
    if generation.include_usage:
        header["usage"] = None  # as OpenAI does: null on every chunk but the last
    top = generation.logprobs
    events: list[tuple[str, int]] = []

    def event(choice: dict[str, Any], tokens: int = 0) -> None:
        events.append((_dumps({**header, "choices": [choice]}), tokens))

    for index, choice in enumerate(choices):
        if chat:
            event(
                {
                    "index": index,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
        offset = 0
        pieces = choice.pieces
        for position, piece in enumerate(pieces):
            if chat:
                level = choice.level(position)
                logprobs = None if top is None else {"content": [_chat_logprob(piece, level, top)]}
                event(
                    {
                        "index": index,
                        "delta": {"content": piece},
                        "logprobs": logprobs,
                        "finish_reason": None,
                    },
                    1,
                )
            else:
                logprobs = (
                    None
                    if top is None
                    else _completion_logprobs(choice, [piece], top, position, offset)
                )
                event(
                    {"index": index, "text": piece, "logprobs": logprobs, "finish_reason": None}, 1
                )
            offset += len(piece)
        # Whitespace-only text has no tokens to carry it; send it with the finish so none is lost.
        rest = "" if pieces else choice.text
        if chat:
            delta = {"content": rest} if rest else {}
            ending = {"index": index, "delta": delta, "logprobs": None}
        else:
            ending = {"index": index, "text": rest, "logprobs": None}
        event({**ending, "finish_reason": choice.finish_reason})
    if generation.include_usage:
        usage = _usage(generation, choices)
        events.append((_dumps({**header, "choices": [], "usage": usage}), 0))
    events.append(("[DONE]", 0))
    return events


# -- HTTP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: str = ""  # extra header lines, each ending in CRLF
    chunked: bool = False  # the body is already chunk-encoded
    until_close: bool = False  # no length known: the body ends when the connection closes

    def encode(self, keep_alive: bool) -> bytes:
        keep_alive = keep_alive and not self.until_close
        if self.chunked:
            framing = "transfer-encoding: chunked\r\n"
        elif self.until_close:
            framing = ""
        else:
            framing = f"content-length: {len(self.body)}\r\n"
        head = (
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}\r\n"
            f"content-type: {self.content_type}\r\n"
            f"{framing}{self.headers}"
            f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        return head.encode("latin-1") + self.body


def _json_response(status: int, payload: Any, headers: str = "") -> _Response:
    return _Response(status, _dumps(payload).encode(), headers=headers)


def _error_response(error: _RequestError, headers: str = "") -> _Response:
    payload = {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": error.param,
            "code": error.code,
        }
    }
    return _json_response(error.status, payload, headers)


def _event_chunk(event: str) -> bytes:
    data = f"data: {event}\n\n".encode()
    return b"%x\r\n%b\r\n" % (len(data), data)


_LAST_CHUNK = b"0\r\n\r\n"


def _broken(exchange: _Exchange) -> bool:
    """Whether the client got an answer it cannot use (a fault that spoils what was sent)."""
    if exchange.fault == "cut_stream":
        return exchange.body.get("stream") is True
    return exchange.fault == "malformed_json"


def _event_stream(events: Sequence[str], chunked: bool) -> _Response:
    if chunked:
        parts = [_event_chunk(event) for event in events]
        parts.append(_LAST_CHUNK)
        return _Response(200, b"".join(parts), "text/event-stream", chunked=True)
    # HTTP/1.0 has no chunked encoding: the stream ends with the connection instead.
    body = "".join(f"data: {event}\n\n" for event in events).encode()
    return _Response(200, body, "text/event-stream", until_close=True)


def _seconds(value: float) -> str:
    return format(value, ".3f").rstrip("0").rstrip(".")


@dataclass(frozen=True)
class _HttpRequest:
    method: str
    path: str
    version: str
    body: bytes
    keep_alive: bool
    connection: int
    started_at: float


@dataclass(frozen=True)
class _Head:
    """A parsed request head whose body may still be arriving."""

    method: str
    path: str
    version: str
    keep_alive: bool
    body_start: int
    body_length: int
    started_at: float


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
        raise _RequestError(400, f"malformed request line {lines[0][:100]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _RequestError(400, f"malformed header line {line[:100]!r}")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return method, target.partition("?")[0], version, headers


def _body_length(method: str, headers: Mapping[str, str]) -> int:
    if "transfer-encoding" in headers:
        # Chunked request bodies are legal HTTP, but no OpenAI client sends them.
        raise _RequestError(411, "send the request body with a Content-Length")
    length_text = headers.get("content-length")
    if length_text is None:
        if method in ("POST", "PUT", "PATCH"):
            raise _RequestError(411, "a request body needs a Content-Length")
        return 0
    if not (length_text.isascii() and length_text.isdigit()):
        raise _RequestError(400, f"bad Content-Length {length_text[:40]!r}")
    length = int(length_text)
    if length > _MAX_BODY_BYTES:
        raise _RequestError(413, f"request bodies are limited to {_MAX_BODY_BYTES} bytes")
    return length


def _wants_keep_alive(version: str, headers: Mapping[str, str]) -> bool:
    options = {option.strip().lower() for option in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in options
    return "close" not in options


@dataclass(frozen=True)
class _Exchange:
    """A generation request from the moment its body was read until its answer goes out."""

    request: _HttpRequest
    ordinal: int
    body: dict[str, Any]
    fault: FaultKind | None
    response: _Response
    choices: Sequence[_Choice] = ()
    prompt_tokens: int = 0
    cached_tokens: int | None = None
    generated: bool = False
    paced: tuple[tuple[str, int], ...] | None = None  # a paced stream's events, after its head


class _PacedStream:
    """A streamed answer written an event at a time, a token every ``interval`` seconds.

    It is logged when it ends: after its last token (just before the end of the stream goes out,
    so a client that read to the end finds it in the log), or as soon as the client is seen to
    have closed its end, with the tokens written until then.
    """

    def __init__(
        self,
        server: LoopbackServer,
        connection: _Connection,
        exchange: _Exchange,
        interval: float,
    ) -> None:
        assert exchange.paced is not None
        self.server = server
        self.connection = connection
        self.exchange = exchange
        self.interval = interval
        self.events = exchange.paced
        self.position = 0
        self.tokens = 0
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    def start(self) -> None:
        self.connection.paced = self
        self.connection.send(self.exchange.response.encode(self.exchange.request.keep_alive))
        self._next()

    def _next(self) -> None:
        self.timer = None
        if self.done:
            return
        if not self.connection.writable():
            self.client_gone()
            return
        # Everything up to and including the next token's event goes out now; the token after
        # it waits one interval, as a model's next token would.
        wrote_token = False
        while True:
            event, tokens = self.events[self.position]
            if tokens and wrote_token:
                self.timer = self.server._call_later(self.interval, self._next)
                return
            if self.position == len(self.events) - 1:
                self._end(client_closed=False)
                self.connection.send(_event_chunk(event) + _LAST_CHUNK)
                self.connection.finished_response(self.exchange.request.keep_alive)
                return
            self.connection.send(_event_chunk(event))
            self.position += 1
            self.tokens += tokens
            wrote_token = wrote_token or tokens > 0

    def client_gone(self) -> None:
        if not self.done:
            self._end(client_closed=True)

    def _end(self, *, client_closed: bool) -> None:
        self.done = True
        self.connection.paced = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        exchange = self.exchange
        tokens = self.tokens if client_closed else sum(c.tokens for c in exchange.choices)
        self.server._log_exchange(
            self.connection,
            exchange,
            delivered=not client_closed,
            completion_tokens=tokens,
            streamed_tokens=self.tokens,
            client_closed=client_closed,
        )


class _Connection(asyncio.Protocol):
    """One client's TCP connection: requests are parsed off the byte stream and answered in order.

    Callbacks rather than a coroutine per connection: a request costs a parse, maybe a timer, and
    a write, with no task switches, which keeps the server's CPU per request small.
    """

    def __init__(self, server: LoopbackServer, serial: int) -> None:
        self.server = server
        self.serial = serial
        self.transport: asyncio.Transport | None = None
        self.gone = False  # the client closed or reset its end, or the server is shutting down
        self.pending: tuple[asyncio.TimerHandle, _Exchange] | None = None
        self.paced: _PacedStream | None = None  # a paced stream being written
        self._buffer = bytearray()
        self._head: _Head | None = None
        self._busy = False  # a request is being answered; bytes after it wait in the buffer
        self._parsing = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP server's are read-write
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.server._connections.discard(self)
        self._stream_abandoned()

    def eof_received(self) -> bool:
        # A client that closes its end (on a timeout, say) no longer wants any answer.
        self.gone = True
        self._stream_abandoned()
        return False  # and the transport closes ours

    def _stream_abandoned(self) -> None:
        # Logged the moment the client goes, not at the next token: a test reading the log right
        # after closing its stream finds the stopping point there.
        if self.paced is not None:
            self.paced.client_gone()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._parsing:
            self._parse()

    # used by the server

    def writable(self) -> bool:
        """Whether a response written now would reach a client still waiting for it."""
        transport = self.transport
        return not self.gone and transport is not None and not transport.is_closing()

    def write(self, response: _Response, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(response.encode(keep_alive))
        if not keep_alive or response.until_close:
            transport.close()  # after the buffered response is flushed

    def send(self, data: bytes) -> None:
        """Write raw bytes (a paced stream's head or events) if the client is still there."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def finished_response(self, keep_alive: bool) -> None:
        """A paced stream's last bytes are out: close, or go on to the next request."""
        if not keep_alive:
            if self.transport is not None:
                self.transport.close()
        elif self.writable():
            self.answered()

    def answered(self) -> None:
        """The current request has had its answer: go on to the next, if it already arrived."""
        self._busy = False
        if self._buffer and not self._parsing:
            self._parse()

    def refuse(self) -> None:
        """Read nothing more from this connection: its byte stream can no longer be trusted."""
        self._busy = True
        self._buffer.clear()

    def reset(self) -> None:
        """Abort the connection with a TCP RST."""
        self.gone = True
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger on with a zero timeout makes close() send RST instead of FIN: a hard reset.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def shut(self) -> None:
        """Drop the connection because the server stops; an answer still waiting is abandoned."""
        self.gone = True
        if self.pending is not None:
            timer, exchange = self.pending
            timer.cancel()
            self.server._complete(self, exchange)
        self._stream_abandoned()
        if self.transport is not None:
            self.transport.abort()

    # parsing

    def _parse(self) -> None:
        self._parsing = True
        try:
            while self._buffer and not self._busy and not self.gone:
                request = self._take_request()
                if request is None:
                    return
                self._busy = True
                self.server._dispatch(self, request)
        finally:
            self._parsing = False

    def _take_request(self) -> _HttpRequest | None:
        """The next whole request off the buffer; None until all of it has arrived."""
        head = self._head
        if head is None:
            while self._buffer.startswith(b"\r\n"):
                del self._buffer[:2]  # stray line ends between requests are allowed and ignored
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD_BYTES:
                    error = _RequestError(431, "request headers are too large")
                    self.server._refuse(self, error, time.monotonic())
                return None
            started_at = time.monotonic()
            try:
                method, path, version, headers = _parse_head(bytes(self._buffer[:end]))
            except _RequestError as malformed:
                self.server._refuse(self, malformed, started_at)
                return None
            try:
                length = _body_length(method, headers)
            except _RequestError as unreadable:
                self.server._refuse(self, unreadable, started_at, method, path)
                return None
            keep_alive = _wants_keep_alive(version, headers)
            head = _Head(method, path, version, keep_alive, end + 4, length, started_at)
            self._head = head
            waiting_for_body = len(self._buffer) < head.body_start + length
            if waiting_for_body and headers.get("expect", "").lower() == "100-continue":
                assert self.transport is not None
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for this
        end_of_body = head.body_start + head.body_length
        if len(self._buffer) < end_of_body:
            return None
        body = bytes(self._buffer[head.body_start : end_of_body])
        del self._buffer[:end_of_body]
        self._head = None
        return _HttpRequest(
            method=head.method,
            path=head.path,
            version=head.version,
            body=body,
            keep_alive=head.keep_alive,
            connection=self.serial,
            started_at=head.started_at,
        )


# -- the server ---------------------------------------------------------------------------------


def _table_responder(table: Mapping[str, Answer | Sequence[Answer]], default: str) -> Responder:
    scripts: dict[str, tuple[Answer, ...]] = {
        prompt: (script,) if isinstance(script, str | ScriptedAnswer) else tuple(script)
        for prompt, script in table.items()
    }

    def respond(request: ScriptRequest) -> Answer:
        script = scripts.get(request.prompt)
        if script is None:
            return default
        return script[request.index % len(script)]

    return respond


class LoopbackServer:
    """An OpenAI-compatible HTTP server on the loopback interface, with a request log.

    ``start()`` runs it on its own event loop in a daemon thread (so it serves sync and async
    clients alike); ``serve()`` runs it on the caller's event loop instead. Keyword overrides
    replace fields of ``config``: ``LoopbackServer(latency=0.02)``.
    """

    def __init__(self, config: ServerConfig | None = None, **overrides: Any) -> None:
        base = config if config is not None else ServerConfig()
        try:
            self.config = dataclasses.replace(base, **overrides) if overrides else base
        except TypeError as exc:
            raise ConfigError(f"unknown LoopbackServer setting: {exc}") from exc
        answers = self.config.answers
        if isinstance(answers, Mapping):
            self._responder = _table_responder(answers, self.config.default_answer)
        elif answers is not None:
            self._responder = answers
        else:
            self._responder = _table_responder({}, self.config.default_answer)
        # The log is shared between the server's loop and the caller's thread: guarded by the lock.
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._generation_count = 0
        self._in_flight = 0
        self._peak_in_flight = 0
        self._samples_per_prompt: dict[str, int] = {}
        self._prefix_cache = PrefixCache()
        # Response ids stay unique across reset_log(), unlike ordinals.
        self._response_serials = itertools.count()
        self._connection_serials = itertools.count(1)
        self._connections: set[_Connection] = set()
        self._port: int | None = None
        self._created = int(time.time())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # -- running --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise TTScaleError("the loopback server has not started yet")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.port}/v1"

    async def serve(
        self,
        until: asyncio.Event | None = None,
        on_listening: Callable[[str], None] | None = None,
    ) -> None:
        """Serve on the running event loop until ``until`` is set (or the task is cancelled).

        ``on_listening`` is called with :attr:`base_url` once the socket accepts connections.
        """
        stop = until if until is not None else asyncio.Event()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_event = stop
        server = await loop.create_server(
            self._new_connection,
            self.config.host,
            self.config.port,
            backlog=_LISTEN_BACKLOG,
        )
        try:
            self._port = int(server.sockets[0].getsockname()[1])
            logger.info("loopback server listening on %s", self.base_url)
            if on_listening is not None:
                on_listening(self.base_url)
            await stop.wait()
        finally:
            server.close()
            for connection in list(self._connections):
                connection.shut()
            await asyncio.sleep(0)  # the aborted transports report their connections lost
            await server.wait_closed()
            logger.info("loopback server on port %s stopped", self._port)

    def start(self) -> LoopbackServer:
        """Serve from a daemon thread; returns once the server is listening."""
        if self._thread is not None:
            raise TTScaleError("the loopback server is already running")
        listening = threading.Event()
        failures: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self.serve(on_listening=lambda _url: listening.set()))
            except BaseException as exc:  # handed to the thread that called start()
                failures.append(exc)
            finally:
                listening.set()

        thread = threading.Thread(target=run, name="ttscale-loopback-server", daemon=True)
        thread.start()
        listening.wait()
        if failures:
            thread.join()
            raise TTScaleError(f"the loopback server could not start: {failures[0]}") from (
                failures[0]
            )
        self._thread = thread
        return self

    def stop(self) -> None:
        """Stop serving and drop every connection; the request log stays readable."""
        thread, loop, stop = self._thread, self._loop, self._stop_event
        self._thread = None
        if thread is None or loop is None or stop is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
            thread.join(timeout=30)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LoopbackServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # -- the request log ------------------------------------------------------------------------

    @property
    def records(self) -> list[RequestRecord]:
        """A snapshot of every request answered so far, in the order they finished."""
        with self._lock:
            return list(self._records)

    @property
    def request_count(self) -> int:
        """How many generation requests have arrived."""
        with self._lock:
            return self._generation_count

    @property
    def peak_concurrency(self) -> int:
        """The most generation requests in flight at once, from body read to response written."""
        with self._lock:
            return self._peak_in_flight

    def delivered_usage(self) -> dict[str, int]:
        """Tokens, requests and samples of the 200 responses clients received and could parse."""
        return self._usage(
            lambda record: record.generated and record.delivered and record.status == 200
        )

    def generated_usage(self) -> dict[str, int]:
        """Tokens, requests and samples of everything generated, delivered or not."""
        return self._usage(lambda record: record.generated)

    def reset_log(self) -> None:
        """Forget the log: records, ordinals, per-prompt sample indices and peak concurrency."""
        with self._lock:
            self._records.clear()
            self._generation_count = 0
            self._samples_per_prompt.clear()
            self._peak_in_flight = self._in_flight

    def clear_prefix_cache(self) -> None:
        """Forget every prompt served so far (a ``prefix_cache`` server reports none cached)."""
        with self._lock:
            self._prefix_cache = PrefixCache()

    def _usage(self, counts: Callable[[RequestRecord], bool]) -> dict[str, int]:
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0, "samples": 0}
        for record in self.records:
            if counts(record):
                usage["prompt_tokens"] += record.prompt_tokens
                usage["completion_tokens"] += record.completion_tokens
                usage["requests"] += 1
                usage["samples"] += record.choices
        return usage

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    # -- requests -------------------------------------------------------------------------------

    def _new_connection(self) -> _Connection:
        return _Connection(self, next(self._connection_serials))

    def _refuse(
        self,
        connection: _Connection,
        error: _RequestError,
        started_at: float,
        method: str = "",
        path: str = "",
    ) -> None:
        """Answer a request that cannot be read, and read nothing more from its connection."""
        connection.refuse()
        delivered = connection.writable()
        # Logged before the answer goes out, so that a client never sees an answer the log lacks.
        self._record(
            RequestRecord(
                ordinal=_NOT_A_GENERATION,
                path=path,
                method=method,
                body=None,
                status=error.status,
                fault=None,
                choices=0,
                prompt_tokens=0,
                completion_tokens=0,
                delivered=delivered,
                started_at=started_at,
                finished_at=time.monotonic(),
                connection=connection.serial,
            )
        )
        connection.write(_error_response(error), keep_alive=False)

    def _dispatch(self, connection: _Connection, request: _HttpRequest) -> None:
        chat = _GENERATION_PATHS.get(request.path)
        if chat is not None and request.method == "POST":
            self._generate(connection, request, chat)
            return
        if chat is not None:
            response = _error_response(
                _RequestError(405, f"use POST for {request.path}", code="method_not_allowed")
            )
        elif request.path in ("/v1/models", "/health") and request.method != "GET":
            response = _error_response(
                _RequestError(405, f"use GET for {request.path}", code="method_not_allowed")
            )
        elif request.path == "/v1/models":
            response = _json_response(200, {"object": "list", "data": [self._model_card()]})
        elif request.path == f"/v1/models/{self.config.model}" and request.method == "GET":
            response = _json_response(200, self._model_card())
        elif request.path == "/health":
            response = _json_response(200, {"status": "ok"})
        elif request.path in self.config.routes:
            response = self._route(request)
        else:
            response = _error_response(
                _RequestError(
                    404, f"no route for {request.method} {request.path}", code="not_found"
                )
            )
        self._finish(connection, request, response)

    def _route(self, request: _HttpRequest) -> _Response:
        """A JSON endpoint of ``ServerConfig.routes``."""
        if request.method != "POST":
            error = _RequestError(405, f"use POST for {request.path}", code="method_not_allowed")
            return _error_response(error)
        try:
            body = json.loads(request.body)
        except ValueError:
            return _error_response(_RequestError(400, "the request body is not valid JSON"))
        if not isinstance(body, dict):
            return _error_response(_RequestError(400, "the request body must be a JSON object"))
        try:
            reply = self.config.routes[request.path](body)
        except (ValueError, TTScaleError) as exc:
            return _error_response(_RequestError(400, f"{request.path}: {exc}"))
        return _json_response(200, reply)

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.config.model,
            "object": "model",
            "created": self._created,
            "owned_by": "ttscale",
        }

    def _finish(self, connection: _Connection, request: _HttpRequest, response: _Response) -> None:
        """Log and answer a request that generates nothing."""
        delivered = connection.writable()
        self._record(
            RequestRecord(
                ordinal=_NOT_A_GENERATION,
                path=request.path,
                method=request.method,
                body=None,
                status=response.status,
                fault=None,
                choices=0,
                prompt_tokens=0,
                completion_tokens=0,
                delivered=delivered,
                started_at=request.started_at,
                finished_at=time.monotonic(),
                connection=connection.serial,
            )
        )
        connection.write(response, request.keep_alive)
        if delivered and request.keep_alive and not response.until_close:
            connection.answered()

    # -- generation -----------------------------------------------------------------------------

    def _generate(self, connection: _Connection, request: _HttpRequest, chat: bool) -> None:
        try:
            body = json.loads(request.body)
        except ValueError:  # also covers bodies that are not UTF-8
            error = _RequestError(400, "the request body is not valid JSON")
            self._finish(connection, request, _error_response(error))
            return
        if not isinstance(body, dict):
            error = _RequestError(400, "the request body must be a JSON object")
            self._finish(connection, request, _error_response(error))
            return

        with self._lock:
            ordinal = self._generation_count
            self._generation_count += 1
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        fault = next((fault for fault in self.config.faults if fault.hits(ordinal)), None)
        kind = fault.kind if fault is not None else None
        if kind is not None:
            logger.debug("generation request %d gets fault %s", ordinal, kind)
        exchange = self._prepare(request, ordinal, body, chat, fault)
        wait = self.config.latency + (fault.delay if fault is not None and kind == "slow" else 0)
        if wait > 0:
            assert self._loop is not None  # serve() set it before accepting connections
            timer = self._loop.call_later(wait, self._complete, connection, exchange)
            connection.pending = (timer, exchange)
        else:
            self._complete(connection, exchange)

    def _prepare(
        self,
        request: _HttpRequest,
        ordinal: int,
        body: dict[str, Any],
        chat: bool,
        fault: Fault | None,
    ) -> _Exchange:
        """Work out a generation request's answer (generating it unless a fault says otherwise)."""
        kind = fault.kind if fault is not None else None
        if fault is not None and kind == "rate_limit":
            retry = (
                f"retry-after: {_seconds(fault.retry_after)}\r\n"
                f"retry-after-ms: {round(fault.retry_after * 1000)}\r\n"
            )
            error = _RequestError(
                429,
                "rate limit reached (injected by the loopback server)",
                code="rate_limit_exceeded",
                error_type="rate_limit_error",
            )
            return _Exchange(request, ordinal, body, kind, _error_response(error, retry))
        if kind == "server_error":
            error = _RequestError(
                500, "internal error (injected by the loopback server)", error_type="server_error"
            )
            return _Exchange(request, ordinal, body, kind, _error_response(error))
        if kind == "reset":
            return _Exchange(request, ordinal, body, kind, _Response(_NO_RESPONSE, b""))
        try:
            generation = self._read_generation(body, chat)
            choices = self._write_choices(generation, body)
        except _RequestError as invalid:
            return _Exchange(request, ordinal, body, kind, _error_response(invalid))
        except Exception as exc:
            logger.exception("the loopback server's responder failed")
            error = _RequestError(500, f"the responder failed: {exc!r}", error_type="server_error")
            return _Exchange(request, ordinal, body, kind, _error_response(error))
        response, paced = self._render(generation, choices, fault, request.version)
        return _Exchange(
            request,
            ordinal,
            body,
            kind,
            response,
            choices=choices,
            prompt_tokens=generation.prompt_tokens,
            cached_tokens=generation.cached_tokens,
            generated=True,
            paced=paced,
        )

    def _complete(self, connection: _Connection, exchange: _Exchange) -> None:
        """Log a generation request's outcome, then send its answer (or reset the connection).

        Logging first means that a client which has its answer always finds it in the log.
        """
        connection.pending = None
        request, response = exchange.request, exchange.response
        sent = exchange.fault != "reset" and connection.writable()
        if sent and exchange.paced is not None:
            _PacedStream(self, connection, exchange, self.config.token_interval).start()
            return
        self._log_exchange(
            connection,
            exchange,
            delivered=sent and not _broken(exchange),
            completion_tokens=sum(choice.tokens for choice in exchange.choices),
        )
        if exchange.fault == "reset":
            connection.reset()
        elif sent:
            connection.write(response, request.keep_alive)
            if request.keep_alive and not response.until_close:
                connection.answered()

    def _log_exchange(
        self,
        connection: _Connection,
        exchange: _Exchange,
        *,
        delivered: bool,
        completion_tokens: int,
        streamed_tokens: int | None = None,
        client_closed: bool = False,
    ) -> None:
        request = exchange.request
        record = RequestRecord(
            ordinal=exchange.ordinal,
            path=request.path,
            method=request.method,
            body=exchange.body,
            status=exchange.response.status,
            fault=exchange.fault,
            choices=len(exchange.choices),
            prompt_tokens=exchange.prompt_tokens,
            completion_tokens=completion_tokens,
            delivered=delivered,
            started_at=request.started_at,
            finished_at=time.monotonic(),
            generated=exchange.generated,
            connection=connection.serial,
            streamed_tokens=streamed_tokens,
            client_closed=client_closed,
            cached_tokens=exchange.cached_tokens,
        )
        with self._lock:
            self._in_flight -= 1
            self._records.append(record)

    def _call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        assert self._loop is not None  # serve() set it before accepting connections
        return self._loop.call_later(delay, callback)

    def _read_generation(self, body: Mapping[str, Any], chat: bool) -> _Generation:
        generation = _read_generation(body, chat, self.config.model)
        if self.config.prefix_cache:
            sequence = prompt_token_sequence(body, chat)
            with self._lock:
                cached = self._prefix_cache.reuse(sequence)
            generation = dataclasses.replace(generation, cached_tokens=cached)
        if not self.config.logprobs:
            generation = dataclasses.replace(generation, logprobs=None)
        if not self.config.stream_usage:
            generation = dataclasses.replace(generation, include_usage=False)
        if generation.n > 1 and self.config.n_support == "reject":
            raise _RequestError(
                400, "this server does not support n > 1", param="n", code="unsupported_value"
            )
        return generation

    def _write_choices(self, generation: _Generation, body: dict[str, Any]) -> list[_Choice]:
        """Ask the responder for every choice; indices count per prompt in arrival order."""
        wanted = generation.n if self.config.n_support == "yes" else 1
        if self.config.max_choices is not None:
            wanted = min(wanted, self.config.max_choices)
        read_only_body = MappingProxyType(body)
        choices = []
        for prompt in generation.prompts:
            with self._lock:
                first_index = self._samples_per_prompt.get(prompt, 0)
                self._samples_per_prompt[prompt] = first_index + wanted
            for choice in range(wanted):
                script = ScriptRequest(
                    prompt=prompt,
                    index=first_index + choice,
                    seed=generation.seed,
                    choice=choice,
                    temperature=generation.temperature,
                    body=read_only_body,
                )
                answer = self._responder(script)
                if not isinstance(answer, str | ScriptedAnswer):
                    raise TypeError(
                        "a responder must return str or ScriptedAnswer, got "
                        f"{type(answer).__name__}"
                    )
                choices.append(_finish_choice(answer, generation.max_tokens, generation.stops))
        echoed = self._echoed_prefill(generation, body)
        if echoed:
            choices = [dataclasses.replace(choice, echoed=echoed) for choice in choices]
        return choices

    def _echoed_prefill(self, generation: _Generation, body: dict[str, Any]) -> str:
        """The prefill a whole chat response sends back first, with ``echo_prefill``."""
        if not (self.config.echo_prefill and generation.chat) or generation.stream:
            return ""
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        if isinstance(last, dict) and last.get("role") == "assistant":
            content = last.get("content")
            return content if isinstance(content, str) else ""
        return ""

    def _render(
        self,
        generation: _Generation,
        choices: Sequence[_Choice],
        fault: Fault | None,
        version: str,
    ) -> tuple[_Response, tuple[tuple[str, int], ...] | None]:
        """The response, and for a paced stream the events still to write after its head."""
        serial = next(self._response_serials)
        created = int(time.time())
        malformed = fault is not None and fault.kind == "malformed_json"
        cut = fault if fault is not None and fault.kind == "cut_stream" else None
        if generation.stream:
            events = _stream_events(generation, choices, serial, created)
            chunked = version != "HTTP/1.0"
            if cut is not None and chunked:
                # No last chunk, and the connection closes: the client's read breaks off.
                keep = len(events) // 2 if cut.keep_events is None else cut.keep_events
                kept = b"".join(_event_chunk(event) for event, _ in events[:keep])
                broken = _Response(200, kept, "text/event-stream", chunked=True, until_close=True)
                return broken, None
            if malformed:
                first = events[0][0]
                return _event_stream([first[: max(1, len(first) // 2)], "[DONE]"], chunked), None
            if self.config.token_interval > 0 and chunked:
                return _Response(200, b"", "text/event-stream", chunked=True), tuple(events)
            return _event_stream([event for event, _ in events], chunked), None
        body = _dumps(_whole_response(generation, choices, serial, created)).encode()
        if malformed:
            # Cut mid-object: a 200 that no JSON parser accepts, like a proxy that dropped bytes.
            body = body[: max(1, len(body) // 2)]
        return _Response(200, body), None
