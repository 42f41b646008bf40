"""The sampler's hot path: JSON POSTs to one model server over a lean HTTP/1.1 connection pool.

Why not the ``openai`` client: measured with ``cProfile`` on 1,000 single-sample requests
(``benchmarks/vs_peers.py``), the client's request path (request options copied per attempt,
``httpx2`` request and response models, httpcore's pool scan, h11's header validation, anyio's
cancel scopes) cost about 0.7 ms of CPU per request, the sampler's own code about 0.03 ms. A
leaner JSON codec or skipping the response models (already skipped: the sampler posts with
``cast_to=object``) leaves the transport's cost where it was. So :class:`LeanClient` writes a
prepared request head and the JSON body on an asyncio protocol connection, and reads the status
line, headers and body by hand (content length, chunked or until close); idle keep-alive
connections are reused last-in first-out, with nothing to scan.

What is kept of the ``openai`` client, as its users rely on it (tested against the loopback
server's fault injection as the ``openai`` path is):

- Retries: up to ``max_retries`` more attempts after a connection error, a timeout, or a status
  of 408, 409, 429 or >= 500; a ``x-should-retry: true|false`` header overrides the status. The
  wait is the server's ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date) when it
  lies in (0, 120] s, and no retry at all when it is longer; otherwise 0.5 s x 2^retries capped at
  8 s, less up to 25 % jitter.
- Timeouts: ``timeout`` seconds to connect, then at most ``timeout`` seconds between the bytes of
  an answer (``httpx``'s read timeout), as the client's single float timeout means.
- Errors: the ``openai`` exception classes (``BadRequestError``, ``RateLimitError``,
  ``InternalServerError``, ... ``APIStatusError``; ``APIConnectionError``, ``APITimeoutError``)
  with the same ``message``, ``body`` (the error object) and ``status_code``, and a
  ``httpx2.Response`` holding the status, headers and body. ``openai`` is imported only to raise
  one.
- Headers: ``Authorization: Bearer``, JSON ``Content-Type`` and ``Accept``, a ``User-Agent``,
  ``OpenAI-Organization`` and ``OpenAI-Project`` from ``OPENAI_ORG_ID`` and ``OPENAI_PROJECT_ID``
  as the client reads them, and ``x-stainless-retry-count``.

Not covered, so the sampler keeps the ``openai`` client for them: streamed answers, and servers
reached through an HTTP proxy named in the environment (:func:`lean_supported`).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import os
import random
import ssl
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping
from typing import Any, cast

from ttscale.openai_errors import openai_error_class

__all__ = ["LeanClient", "lean_supported", "retry_delay", "should_retry"]

log = logging.getLogger(__name__)

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 120.0
_RETRY_STATUSES = frozenset({408, 409, 429})
_MAX_HEAD_BYTES = 64 * 1024
_MAX_IDLE = 256
_USER_AGENT = "ttscale/0.1.0 (Python)"


class _TransportError(Exception):
    """A connection failed or closed before the whole answer arrived."""


class _ReadTimeout(Exception):
    """No byte of the answer arrived for ``timeout`` seconds."""


def lean_supported(base_url: str) -> bool:
    """Whether :class:`LeanClient` can reach ``base_url``: http or https, and no HTTP proxy from
    the environment applies to it (``HTTP(S)_PROXY``, ``ALL_PROXY`` minus ``NO_PROXY``)."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(parts.hostname))


def should_retry(status: int, headers: Mapping[str, str]) -> bool:
    """The ``openai`` client's rule for retrying an answer with this status and headers."""
    after = _retry_after(headers)
    if after is not None and math.isfinite(after) and after > MAX_RETRY_AFTER:
        return False
    hint = headers.get("x-should-retry")
    if hint == "true":
        return True
    if hint == "false":
        return False
    return status in _RETRY_STATUSES or status >= 500


def retry_delay(retries_taken: int, headers: Mapping[str, str] | None) -> float:
    """Seconds to wait before retry ``retries_taken + 1`` (the ``openai`` client's backoff)."""
    after = _retry_after(headers) if headers is not None else None
    if after is not None and math.isfinite(after) and 0 < after <= MAX_RETRY_AFTER:
        return after
    delay = min(INITIAL_RETRY_DELAY * 2.0 ** min(retries_taken, 1000), MAX_RETRY_DELAY)
    return max(0.0, delay * (1 - 0.25 * random.random()))


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            delay = float(value)
        except ValueError:
            continue
        if delay == math.inf and value.strip().lower() not in ("inf", "+inf", "infinity"):
            return MAX_RETRY_AFTER + 1
        return delay / divisor
    date = headers.get("retry-after")
    if date is None:
        return None
    try:
        parsed = email.utils.parsedate_tz(date)
        if parsed is None:
            return None
        return float(email.utils.mktime_tz(parsed) - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


class _Answer:
    """One HTTP answer as read: status, headers (lower-case names) and body."""

    __slots__ = ("body", "headers", "keep_alive", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, keep_alive: bool):
        self.status = status
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class _Connection(asyncio.Protocol):
    """One keep-alive connection: sends a request, parses its answer into a future."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.buffer = bytearray()
        self.waiter: asyncio.Future[_Answer] | None = None
        self.last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._reset_answer()

    def _reset_answer(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = True
        self.length = -1  # -1: until the connection closes
        self.chunked = False
        self.parts: list[bytes] = []

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.buffer += data
        self.last_read = self.loop.time()
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(_TransportError(f"unreadable HTTP answer: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        self.closed = True  # the server is done with this connection: never send on it again
        if self.waiter is not None and self.status and self.length < 0 and not self.chunked:
            self._finish(bytes(self.buffer))  # an answer delimited by the connection's end
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(_TransportError(f"connection closed: {exc or 'by the server'}"))

    # -- one exchange -----------------------------------------------------------------------

    def send(self, data: bytes, timeout: float) -> asyncio.Future[_Answer]:
        assert self.transport is not None
        self.waiter = self.loop.create_future()
        self.last_read = self.loop.time()
        self._timeout = timeout
        self._timer = self.loop.call_later(timeout, self._check_timeout)
        self.transport.write(data)
        return self.waiter

    def _check_timeout(self) -> None:
        idle = self.loop.time() - self.last_read
        if idle < self._timeout:
            self._timer = self.loop.call_later(self._timeout - idle, self._check_timeout)
            return
        self._timer = None
        self._fail(_ReadTimeout(f"no answer within {self._timeout:g} s"))
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        self._stop_timer()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self, body: bytes) -> None:
        waiter, self.waiter = self.waiter, None
        self._stop_timer()
        answer = _Answer(self.status, self.headers, body, self.keep_alive)
        self._reset_answer()
        if self.buffer or not answer.keep_alive:
            self.abort()  # trailing bytes, or the server said it closes
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    # -- parsing ----------------------------------------------------------------------------

    def _parse(self) -> None:
        if not self.status and not self._parse_head():
            return
        buffer = self.buffer
        if self.chunked:
            self._parse_chunks()
        elif self.length >= 0 and len(buffer) >= self.length:
            body = bytes(buffer[: self.length])
            del buffer[: self.length]
            self._finish(body)

    def _parse_head(self) -> bool:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD_BYTES:
                raise ValueError("answer head too large")
            return False
        lines = buffer[:end].decode("latin-1").split("\r\n")
        del buffer[: end + 4]
        version, status = lines[0].split(" ", 2)[:2]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        code = int(status)
        if 100 <= code < 200:
            return self._parse_head() if buffer else False  # 100 Continue and the like
        self.status, self.headers = code, headers
        connection = headers.get("connection", "").lower()
        self.keep_alive = (
            "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        )
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.chunked = True
        elif "content-length" in headers:
            self.length = int(headers["content-length"])
        elif code in (204, 304):
            self.length = 0
        else:
            self.keep_alive = False
        return True

    def _parse_chunks(self) -> None:
        buffer = self.buffer
        while True:
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(buffer[:line_end]).split(b";", 1)[0], 16)
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return
                del buffer[: trailer_end + 4]
                self._finish(b"".join(self.parts))
                return
            if len(buffer) < line_end + 2 + size + 2:
                return
            self.parts.append(bytes(buffer[line_end + 2 : line_end + 2 + size]))
            del buffer[: line_end + 2 + size + 2]


def _decoded(answer: _Answer) -> bytes:
    encoding = answer.headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        return zlib.decompress(answer.body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompress(answer.body)
    return answer.body


class LeanClient:
    """POSTs JSON to one server and returns the parsed answer; see the module docstring.

    Bound to the event loop of its first request; used from another loop it starts a fresh pool
    (connections cannot move between loops).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str,
        max_retries: int = 2,
        timeout: float = 600.0,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/") + "/"
        self.max_retries = max_retries
        self.timeout = timeout
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._https = parts.scheme == "https"
        self._tls: ssl.SSLContext | None = None  # made on the first connection: it costs 0.1 s
        self._prefix = parts.path.rstrip("/")
        host = parts.netloc.rpartition("@")[2]
        headers = {
            "Host": host,
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
        }
        for header, variable in (
            ("OpenAI-Organization", "OPENAI_ORG_ID"),
            ("OpenAI-Project", "OPENAI_PROJECT_ID"),
        ):
            if os.environ.get(variable):
                headers[header] = os.environ[variable]
        self._headers = headers
        self._head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def post(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON to ``path`` (under the base URL); the answer's parsed JSON.

        Raises the ``openai`` error the client would; ``ValueError`` for a 2xx answer that is
        not JSON.
        """
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        url = self._prefix + "/" + path.lstrip("/")
        for retries in range(self.max_retries + 1):
            remaining = self.max_retries - retries
            try:
                answer = await self._exchange(url, payload, retries)
            except _ReadTimeout as exc:
                if remaining:
                    await self._sleep(retries, None)
                    continue
                raise _openai_error(self, url, exc) from exc
            except (_TransportError, OSError) as exc:
                if remaining:
                    await self._sleep(retries, None)
                    continue
                raise _openai_error(self, url, exc) from exc
            status = answer.status
            if status < 300:
                return json.loads(_decoded(answer))
            if remaining and should_retry(status, answer.headers):
                await self._sleep(retries, answer.headers)
                continue
            raise _status_error(self, url, answer)
        raise AssertionError("unreachable")

    async def _sleep(self, retries: int, headers: Mapping[str, str] | None) -> None:
        delay = retry_delay(retries, headers)
        log.info("retrying in %.3f s (retry %d of %d)", delay, retries + 1, self.max_retries)
        await asyncio.sleep(delay)

    async def _exchange(self, url: str, payload: bytes, retries: int) -> _Answer:
        connection = await self._connection()
        head = (
            f"POST {url} HTTP/1.1\r\n{self._head}x-stainless-retry-count: {retries}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        try:
            answer = await connection.send(head.encode("latin-1") + payload, self.timeout)
        except BaseException:
            connection.abort()  # an answer may still be due on it: never reuse it
            raise
        reusable = answer.keep_alive and not connection.closed and not self._closed
        if reusable and len(self._idle) < _MAX_IDLE:
            self._idle.append(connection)
        else:
            connection.abort()
        return answer

    async def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._drop_idle()
            self._loop = loop
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        if self._https and self._tls is None:
            self._tls = ssl.create_default_context()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop), self._host, self._port, ssl=self._tls
                ),
                self.timeout,
            )
        except asyncio.TimeoutError as exc:
            raise _ReadTimeout(f"could not connect within {self.timeout:g} s") from exc
        return connection

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(RuntimeError):  # its loop may be closed already
                connection.abort()

    async def aclose(self) -> None:
        self._closed = True
        self._drop_idle()

    def request(self, url: str) -> Any:
        """The ``httpx2.Request`` an error names: what was sent, without the body."""
        import httpx2

        parts = urllib.parse.urlsplit(self.base_url)
        return httpx2.Request(
            "POST", f"{parts.scheme}://{parts.netloc}{url}", headers=self._headers
        )


def _openai_error(client: LeanClient, url: str, exc: Exception) -> Exception:
    import openai

    if isinstance(exc, _ReadTimeout):
        return openai.APITimeoutError(request=client.request(url))
    return openai.APIConnectionError(request=client.request(url))


def _status_error(client: LeanClient, url: str, answer: _Answer) -> Exception:
    """The ``openai`` client's error for an answer of status >= 300."""
    import httpx2

    response = httpx2.Response(
        answer.status, headers=answer.headers, content=answer.body, request=client.request(url)
    )
    message = f"Error code: {answer.status}"
    text = _decoded(answer).decode("utf-8", "replace").strip()
    body: object = text
    with contextlib.suppress(ValueError):
        body = json.loads(text)
        error = body.get("error", body) if isinstance(body, dict) else None
        detail = error.get("message") if isinstance(error, dict) else None
        if isinstance(detail, str) and detail:
            message += f" - {detail}"
    data = body.get("error", body) if isinstance(body, dict) else body
    return openai_error_class(answer.status)(message, response=response, body=data)
