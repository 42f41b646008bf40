"""The proxy's HTTP layer: errors in OpenAI's shape, metrics, bodies read, answers streamed.

:func:`error_for` is where an error becomes an HTTP answer: a request refused for what it asked
gets the shape :func:`ttscale.openai_errors.error_shape` gives it (which a wrapped client raises as
the ``openai`` error for it): every :class:`~ttscale.errors.ConfigError` (bad settings, a bad
request) is the client's 400 naming its field, code execution refused a 403. An upstream's own
4xx is relayed as that 4xx (but a 401 or 403, which is about the proxy's key, is a 502); other
sampling failures are 502s. Anything else is a bug, logged, and a 500 in the same shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, StreamingResponse

from ttscale.errors import SamplerError, UpstreamError, VerifierError
from ttscale.openai_errors import error_kind, error_shape

__all__ = [
    "BodyTooLarge",
    "HeldStream",
    "Metrics",
    "Slot",
    "StreamSpend",
    "error_for",
    "error_response",
    "read_body",
    "relay",
    "relayed_headers",
]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# -- metrics -------------------------------------------------------------------------------------


class Metrics:
    """Counters and a latency histogram, rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.samples = 0
        self.tokens = {"prompt": 0, "completion": 0}
        self.rejected: dict[str, int] = {}
        self.in_flight = 0
        self.latency_counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe(self, endpoint: str, mode: str, status: int, seconds: float) -> None:
        key = (endpoint, mode, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency_sum += seconds
        for position, bound in enumerate(_LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_counts[position] += 1
                break
        else:
            self.latency_counts[-1] += 1

    def spend(self, samples: int, prompt_tokens: int, completion_tokens: int) -> None:
        self.samples += samples
        self.tokens["prompt"] += prompt_tokens
        self.tokens["completion"] += completion_tokens

    def render(self) -> str:
        lines = [
            "# HELP ttscale_requests_total Requests answered, by endpoint, mode and status.",
            "# TYPE ttscale_requests_total counter",
        ]
        for (endpoint, mode, status), count in sorted(self.requests.items()):
            lines.append(
                f'ttscale_requests_total{{endpoint="{endpoint}",mode="{mode}",'
                f'status="{status}"}} {count}'
            )
        lines += [
            "# HELP ttscale_samples_total Samples drawn from the upstream for scaled requests.",
            "# TYPE ttscale_samples_total counter",
            f"ttscale_samples_total {self.samples}",
            "# HELP ttscale_tokens_total Tokens the upstream reported, by kind.",
            "# TYPE ttscale_tokens_total counter",
        ]
        for kind, count in self.tokens.items():
            lines.append(f'ttscale_tokens_total{{kind="{kind}"}} {count}')
        lines += [
            "# HELP ttscale_rejected_total Requests refused before any work, by reason.",
            "# TYPE ttscale_rejected_total counter",
        ]
        for reason, count in sorted(self.rejected.items()):
            lines.append(f'ttscale_rejected_total{{reason="{reason}"}} {count}')
        lines += [
            "# HELP ttscale_in_flight Requests being served now.",
            "# TYPE ttscale_in_flight gauge",
            f"ttscale_in_flight {self.in_flight}",
            "# HELP ttscale_request_latency_seconds Time to answer a request.",
            "# TYPE ttscale_request_latency_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip(_LATENCY_BUCKETS, self.latency_counts, strict=False):
            cumulative += count
            lines.append(f'ttscale_request_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
        total = cumulative + self.latency_counts[-1]
        lines += [
            f'ttscale_request_latency_seconds_bucket{{le="+Inf"}} {total}',
            f"ttscale_request_latency_seconds_sum {self.latency_sum:.6f}",
            f"ttscale_request_latency_seconds_count {total}",
        ]
        return "\n".join(lines) + "\n"


# -- errors --------------------------------------------------------------------------------------


def error_response(
    status: int, message: str, *, param: str | None = None, kind: str | None = None
) -> JSONResponse:
    """An error in OpenAI's format."""
    default_kind = error_kind(status)
    return JSONResponse(
        {
            "error": {
                "message": message,
                "type": kind or default_kind,
                "param": param,
                "code": None,
            }
        },
        status_code=status,
    )


def _upstream_status(exc: UpstreamError) -> int:
    status = exc.status_code
    # The upstream's own 4xx is the request's fault, but not a 401/403: that is the proxy's key.
    if status is not None and 400 <= status < 500 and status not in (401, 403):
        return status
    return 502


def error_for(exc: Exception) -> JSONResponse:
    """The HTTP answer to an error raised while checking or answering a request."""
    shape = error_shape(exc)
    if shape is not None:
        return error_response(shape.status, shape.message, param=shape.param, kind=shape.type)
    if isinstance(exc, UpstreamError):
        status = _upstream_status(exc)
        log.warning("upstream failed: %s", exc)
        if status < 500:
            return error_response(status, f"the upstream model server refused: {exc}")
        return error_response(502, f"the upstream model server failed: {exc}")
    if isinstance(exc, SamplerError | VerifierError):
        log.warning("sampling failed: %s", exc)
        return error_response(502, f"sampling failed: {exc}")
    log.error("unexpected error answering a request", exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}", kind="server_error")


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class BodyAbandoned(Exception):
    pass


async def read_body(request: Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The request's body, at most ``limit`` bytes (else BodyTooLarge), whole within
    ``timeout_s`` (else BodyTooSlow: a client trickling bytes would hold its slot among the
    requests served at once for as long as it liked); BodyAbandoned when the client hung up."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge

    async def whole() -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    from starlette.requests import ClientDisconnect

    try:
        return await asyncio.wait_for(whole(), timeout=timeout_s)
    except asyncio.TimeoutError as exc:
        raise BodyTooSlow from exc
    except ClientDisconnect as exc:
        raise BodyAbandoned from exc


# -- answers held until sent ---------------------------------------------------------------------


@dataclass
class Slot:
    """One request's place among those served at once, and its latency clock.

    Held from admission until the answer is sent: for a stream that is when the last byte went
    out or the client hung up, not when the handler returned.
    """

    metrics: Metrics
    endpoint: str
    started: float
    mode: str = "error"
    status: int = 500
    owner: object | None = None
    released: bool = False

    def __post_init__(self) -> None:
        self.metrics.in_flight += 1

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.metrics.in_flight -= 1
        self.metrics.observe(
            self.endpoint, self.mode, self.status, time.perf_counter() - self.started
        )


class HeldStream(StreamingResponse):
    """A streamed answer that holds its request's slot until the stream has ended.

    Ending covers every way out: the last chunk sent, the client gone (Starlette stops sending),
    or an error. The body iterator is closed then too, so that a scaled stream's sampling stops
    and a relayed upstream response is closed even if sending never started. A stream the client
    left before its end is counted with status 499 (nginx's "client closed request").
    """

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        *,
        cleanup: Callable[[], Awaitable[None]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(self._until_the_end(content), **options)
        self._content = content
        self._cleanup = cleanup
        self._slot: Slot | None = None
        self._ended = False

    @property
    def slot(self) -> Slot | None:
        return self._slot

    @slot.setter
    def slot(self, slot: Slot) -> None:
        slot.owner = self
        self._slot = slot

    async def _until_the_end(self, content: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
        async for chunk in content:
            yield chunk
        self._ended = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Starlette returns normally when the client hangs up; a failure while streaming raises.
        hung_up = True
        try:
            await super().__call__(scope, receive, send)
        except Exception as exc:
            hung_up = isinstance(exc, ClientDisconnect | OSError)
            raise
        finally:
            if self._slot is not None:
                if not self._ended:
                    self._slot.status = 499 if hung_up else 500
                # First, and without awaiting: nothing below can keep the slot taken.
                self._slot.release()
            # Shielded: a cancelled request must still close what it opened.
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await self._content.aclose()
                if self._cleanup is not None:
                    with contextlib.suppress(Exception):
                        await self._cleanup()


# Headers that describe one hop, or the body as the proxy sends it again, not the answer.
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)


def relayed_headers(headers: httpx2.Headers) -> dict[str, str]:
    """The upstream's headers a relayed answer keeps (content type, retry-after, request ids)."""
    kept = {name: value for name, value in headers.items() if name not in HOP_HEADERS}
    kept.setdefault("content-type", "application/json")
    return kept


async def relay(
    upstream: httpx2.Response, watch: StreamSpend | None = None
) -> AsyncGenerator[bytes, None]:
    """The upstream's bytes as they come; ``watch`` reads what they say was spent."""
    try:
        async for chunk in upstream.aiter_raw():
            if watch is not None:
                watch.feed(chunk)
            yield chunk
    finally:
        await upstream.aclose()


_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')


def _lf(data: bytes) -> bytes:
    """Server-sent events' line ends (CRLF, LF or a bare CR) as LF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


class StreamSpend:
    """What a relayed event stream says it spent: the choices that finished, and the last
    ``usage`` it carried (a server sends one at the end when the client asked for it with
    ``stream_options.include_usage``; without it, the tokens are not known and count 0).

    Only events that mention a finish or a usage are decoded, so relaying stays cheap. A stream
    that is not plain server-sent events (compressed, say) is not read.
    """

    _LONGEST_EVENT = 1 << 20

    def __init__(self, headers: httpx2.Headers) -> None:
        self.readable = headers.get("content-encoding", "identity") == "identity"
        self.finished: set[int] = set()
        self.usage: Any = None
        self._pending: list[bytes] = []  # the bytes since the last event's end
        self._held = 0
        self._recent = b""  # the last bytes seen: an event's end may straddle two pieces

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes. The cost is linear in the stream: held bytes are joined only
        when the new ones end an event, and a stream whose event outgrows any real one is let go."""
        if not self.readable:
            return
        self._pending.append(chunk)
        self._held += len(chunk)
        around = self._recent + chunk
        self._recent = around[-3:]
        if b"\n\n" not in _lf(around):  # no event ended here
            if self._held > self._LONGEST_EVENT:
                self.readable = False  # no event is this long: not a stream this can read
                self._pending.clear()
                self._held = 0
            return
        # A "\r\n" split between two pieces reads as two line ends here; each data line is read
        # on its own, so an event cut in two that way is counted the same.
        *events, tail = _lf(b"".join(self._pending)).split(b"\n\n")
        self._pending, self._held = [tail], len(tail)
        for event in events:
            self._take(event)

    def close(self) -> None:
        """The stream ended: a last event with no blank line after it counts too."""
        if self.readable and self._pending:
            self._take(_lf(b"".join(self._pending)))
        self._pending.clear()

    def _take(self, event: bytes) -> None:
        if b'"usage"' in event or _FINISHED.search(event):
            self._read(event)

    def _read(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            with contextlib.suppress(ValueError):
                data = json.loads(line[5:])
                if not isinstance(data, dict):
                    continue
                if isinstance(data.get("usage"), dict):
                    self.usage = data["usage"]
                for choice in data.get("choices") or ():
                    if isinstance(choice, dict) and choice.get("finish_reason") is not None:
                        index = choice.get("index", 0)
                        self.finished.add(index if isinstance(index, int) else 0)
