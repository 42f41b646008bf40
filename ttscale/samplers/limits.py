"""The waits a sampler's request passes before it goes out: requests and tokens per minute, then
a bound on the requests in flight.

:class:`RequestGate` holds them for one sampler (and its ``with_model`` twins, which share the
gate by reference, so the bound and the limits span every model they ask). Its asyncio primitives
are made on first use, on the loop that uses them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

__all__ = ["RequestGate", "token_estimate"]

# Characters per token for the tokens-per-minute estimate of a prompt; the real count is unknown
# until the server answers, and a limiter has to decide before it asks.
CHARS_PER_TOKEN_ESTIMATE = 4
DEFAULT_COMPLETION_ESTIMATE = 256


def token_estimate(
    request_input: str | Sequence[dict[str, Any]], max_tokens: int | None, count: int
) -> float:
    """What a request of ``count`` choices is reckoned to spend before the server says (pure):
    the prompt's characters over 4, plus ``max_tokens`` (else 256) per choice."""
    text = (
        request_input
        if isinstance(request_input, str)
        else " ".join(str(message.get("content", "")) for message in request_input)
    )
    completion = max_tokens or DEFAULT_COMPLETION_ESTIMATE
    return len(text) / CHARS_PER_TOKEN_ESTIMATE + completion * count


class RequestGate:
    """A concurrency bound with optional requests- and tokens-per-minute limits in front of it."""

    def __init__(
        self,
        concurrency: int,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._semaphore: asyncio.Semaphore | None = None
        self._request_limiter: AsyncLimiter | None = None
        self._token_limiter: AsyncLimiter | None = None

    def _primitives(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            from aiolimiter import AsyncLimiter

            self._semaphore = asyncio.Semaphore(self.concurrency)
            rpm = self.requests_per_minute
            if rpm:
                # aiolimiter lets a whole period's allowance through at once; a one-second period
                # (or one request per interval below 60/min) keeps bursts to a second's worth.
                self._request_limiter = (
                    AsyncLimiter(rpm / 60, 1) if rpm >= 60 else AsyncLimiter(1, 60 / rpm)
                )
            if self.tokens_per_minute:
                self._token_limiter = AsyncLimiter(self.tokens_per_minute, 60)
        return self._semaphore

    async def admit(
        self, request_input: str | Sequence[dict[str, Any]], max_tokens: int | None, count: int
    ) -> asyncio.Semaphore:
        """Wait for the rate limiters; returns the concurrency bound to hold while asking."""
        semaphore = self._primitives()
        if self._request_limiter is not None:
            await self._request_limiter.acquire()
        if self._token_limiter is not None:
            # A request larger than a whole minute's allowance still has to go out, alone.
            amount = min(
                token_estimate(request_input, max_tokens, count), self.tokens_per_minute or 0.0
            )
            await self._token_limiter.acquire(amount)
        return semaphore
