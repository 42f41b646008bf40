"""What a wrapped client's ``with_raw_response`` and ``with_streaming_response`` return for a
scaled call: the objects the plain ``openai`` client returns there, over the scaled answer.

A scaled answer is made of many upstream requests, so its HTTP response is the one the proxy
would send for it: status 200, the answer's JSON (or, for ``stream=True``, its server-sent events
ending in ``[DONE]``) and the headers ``content-type``, ``x-request-id`` (the answer's id) and
``x-ttscale-samples`` (the samples drawn). ``parse()`` gives what ``create`` gives: the scaled
``ChatCompletion`` (the ``ttscale`` field included), or its chunks for a stream::

    raw = scaled.chat.completions.with_raw_response.create(model="m", messages=[...])
    raw.headers["x-ttscale-samples"], raw.http_response.status_code
    reply = raw.parse()                                   # ChatCompletion

    with scaled.chat.completions.with_streaming_response.create(...) as response:
        for line in response.iter_lines(): ...

:class:`RawResponse` is openai's ``LegacyAPIResponse`` (``with_raw_response``; ``content`` and
``text`` are properties), :class:`StreamedResponse` and :class:`AsyncStreamedResponse` its
``APIResponse`` and ``AsyncAPIResponse`` (``with_streaming_response``; ``read()``, ``text()`` and
``json()`` are methods), entered through :class:`ResponseContext` /
:class:`AsyncResponseContext`.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx2
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ttscale.errors import ConfigError

__all__ = [
    "AsyncChunks",
    "AsyncResponseContext",
    "AsyncStreamedResponse",
    "RawResponse",
    "ResponseContext",
    "ScaledPayload",
    "StreamedResponse",
    "answer_response",
]

ScaledPayload = dict[str, Any] | list[dict[str, Any]]
"""A scaled answer on the wire: a ``chat.completion`` object, or a stream's chunks."""


def answer_response(payload: ScaledPayload, url: str, samples: int) -> httpx2.Response:
    """The HTTP response the proxy would send with ``payload``, as a closed ``httpx2.Response``."""
    if isinstance(payload, list):
        events = [f"data: {json.dumps(chunk)}\n\n" for chunk in payload] + ["data: [DONE]\n\n"]
        content, media = "".join(events).encode(), "text/event-stream"
        answer_id = str(payload[0].get("id", "")) if payload else ""
    else:
        content, media = json.dumps(payload).encode(), "application/json"
        answer_id = str(payload.get("id", ""))
    headers = {"content-type": media, "x-request-id": answer_id, "x-ttscale-samples": str(samples)}
    request = httpx2.Request("POST", url)
    return httpx2.Response(200, headers=headers, content=content, request=request)


class AsyncChunks:
    """The chunks of a scaled answer as an async iterator, like the client's own stream."""

    def __init__(self, chunks: list[ChatCompletionChunk]) -> None:
        self._chunks = iter(chunks)

    def __aiter__(self) -> AsyncChunks:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None


class _Response:
    """The parts every response object shares: the HTTP response and ``parse()``'s reading."""

    retries_taken = 0

    def __init__(
        self, payload: ScaledPayload, http_response: httpx2.Response, elapsed_s: float
    ) -> None:
        self._payload = payload
        self.http_response = http_response
        self._elapsed = datetime.timedelta(seconds=elapsed_s)

    @property
    def headers(self) -> httpx2.Headers:
        return self.http_response.headers

    @property
    def http_request(self) -> httpx2.Request:
        return self.http_response.request

    @property
    def status_code(self) -> int:
        return self.http_response.status_code

    @property
    def url(self) -> httpx2.URL:
        return self.http_request.url

    @property
    def method(self) -> str:
        return self.http_request.method

    @property
    def http_version(self) -> str:
        return self.http_response.http_version

    @property
    def elapsed(self) -> datetime.timedelta:
        """The scaled call's wall time: every draw and verifier call of the answer."""
        return self._elapsed

    @property
    def is_closed(self) -> bool:
        return True  # the whole answer is read before the response exists

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")

    def _parsed(self, to: type[Any] | None) -> Any:
        """What ``parse(to=...)`` reads: a stream's chunks as a list (the caller iterates)."""
        payload = self._payload
        if to is None:
            if isinstance(payload, list):
                return [ChatCompletionChunk.model_validate(chunk) for chunk in payload]
            return ChatCompletion.model_validate(payload)
        if to is str:
            return self.http_response.text
        if to is bytes:
            return self.http_response.content
        if to in (dict, object) and isinstance(payload, dict):
            return payload
        if (
            isinstance(to, type)
            and issubclass(to, pydantic.BaseModel)
            and isinstance(payload, dict)
        ):
            return to.model_validate(payload)
        raise ConfigError(
            f"parse(to={to!r}) of a scaled answer: a stream parses only to its chunks (no 'to'); "
            "a completion to a pydantic model, dict, str or bytes",
            param="to",
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} [{self.status_code}] type={type(self._payload).__name__}>"


class RawResponse(_Response):
    """``with_raw_response.create(...)`` of a scaled call (openai's ``LegacyAPIResponse``)."""

    @property
    def content(self) -> bytes:
        return self.http_response.content

    @property
    def text(self) -> str:
        return self.http_response.text

    def parse(self, *, to: type[Any] | None = None) -> Any:
        """The scaled ``ChatCompletion``, or for a stream an iterator over its chunks.

        On a wrapped ``AsyncOpenAI`` a stream's chunks come as an async iterator, as its
        ``create`` gives them.
        """
        parsed = self._parsed(to)
        if to is None and isinstance(parsed, list):
            return AsyncChunks(parsed) if self._async else iter(parsed)
        return parsed

    def __init__(
        self,
        payload: ScaledPayload,
        http_response: httpx2.Response,
        elapsed_s: float,
        *,
        is_async: bool = False,
    ) -> None:
        super().__init__(payload, http_response, elapsed_s)
        self._async = is_async


class StreamedResponse(_Response):
    """``with_streaming_response.create(...)`` of a scaled call on a sync client."""

    def parse(self, *, to: type[Any] | None = None) -> Any:
        parsed = self._parsed(to)
        return iter(parsed) if to is None and isinstance(parsed, list) else parsed

    def read(self) -> bytes:
        return self.http_response.content

    def text(self) -> str:
        return self.http_response.text

    def json(self) -> object:
        return self.http_response.json()

    def close(self) -> None:
        self.http_response.close()

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        return self.http_response.iter_bytes(chunk_size)

    def iter_text(self, chunk_size: int | None = None) -> Iterator[str]:
        return self.http_response.iter_text(chunk_size)

    def iter_lines(self) -> Iterator[str]:
        return self.http_response.iter_lines()


class AsyncStreamedResponse(_Response):
    """``with_streaming_response.create(...)`` of a scaled call on an async client."""

    async def parse(self, *, to: type[Any] | None = None) -> Any:
        parsed = self._parsed(to)
        return AsyncChunks(parsed) if to is None and isinstance(parsed, list) else parsed

    async def read(self) -> bytes:
        return self.http_response.content

    async def text(self) -> str:
        return self.http_response.text

    async def json(self) -> object:
        return self.http_response.json()

    async def close(self) -> None:
        self.http_response.close()

    async def iter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        for part in self.http_response.iter_bytes(chunk_size):
            yield part

    async def iter_text(self, chunk_size: int | None = None) -> AsyncIterator[str]:
        for part in self.http_response.iter_text(chunk_size):
            yield part

    async def iter_lines(self) -> AsyncIterator[str]:
        for line in self.http_response.iter_lines():
            yield line


class ResponseContext:
    """``with ... as response``: the scaled call runs on entering, as the plain client's does."""

    def __init__(self, call: Callable[[], StreamedResponse]) -> None:
        self._call = call
        self._response: StreamedResponse | None = None

    def __enter__(self) -> StreamedResponse:
        self._response = self._call()
        return self._response

    def __exit__(self, *exc_info: object) -> None:
        if self._response is not None:
            self._response.close()


class AsyncResponseContext:
    """``async with ... as response``: the scaled call runs on entering."""

    def __init__(self, call: Callable[[], Awaitable[AsyncStreamedResponse]]) -> None:
        self._call = call
        self._response: AsyncStreamedResponse | None = None

    async def __aenter__(self) -> AsyncStreamedResponse:
        self._response = await self._call()
        return self._response

    async def __aexit__(self, *exc_info: object) -> None:
        if self._response is not None:
            await self._response.close()
