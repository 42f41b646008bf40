"""One long-lived event loop on a daemon thread, on which every synchronous facade runs.

Sync code (scripts, notebooks) calls into the async core through :meth:`Portal.call`. The loop lives
as long as the process, so connection pools, semaphores and rate limiters built on it keep working
across calls, which ``asyncio.run`` per call would break. Because the loop runs on its own thread, a
call works from inside a running event loop too (as in Jupyter): the caller's thread waits while the
portal's loop does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ttscale.errors import ConfigError

__all__ = ["CLEAN_UP_TIMEOUT_S", "Portal", "default_portal"]

T = TypeVar("T")

log = logging.getLogger(__name__)

CLEAN_UP_TIMEOUT_S = 120.0
"""How long an interrupted call waits for its work to clean up (requests in flight to return)."""


class Portal:
    """An event loop running forever on a daemon thread."""

    def __init__(self, name: str = "ttscale-portal") -> None:
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.call_soon(started.set)
            self._loop.run_forever()

        # A daemon thread: an idle portal must never keep the interpreter from exiting.
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()
        started.wait()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def call(self, function: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``function(*args, **kwargs)`` on the portal's loop and wait for its result."""
        if threading.current_thread() is self._thread:
            raise ConfigError(
                "a synchronous ttscale facade was called from its own portal's loop; "
                "await the async API there instead"
            )
        if self._loop.is_closed():
            raise ConfigError("the portal is closed")

        ended = threading.Event()

        async def invoke() -> T:
            try:
                return await function(*args, **kwargs)
            finally:
                ended.set()

        future = asyncio.run_coroutine_threadsafe(invoke(), self._loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            # Ctrl-C while waiting: cancel the work on the loop, then let its clean-up run (the
            # cancelled future says "done" at once, but answers already on the wire are paid
            # for, and the work keeps them: a solve journals them) before the process exits,
            # which would stop the loop's daemon thread wherever it was.
            future.cancel()
            self._wait_for_clean_up(ended)
            raise
        except BaseException:
            future.cancel()
            raise

    @staticmethod
    def _wait_for_clean_up(ended: threading.Event) -> None:
        if ended.wait(timeout=0.2):
            return
        log.warning(
            "interrupted: keeping what the requests in flight return (up to %.0f s; Ctrl-C "
            "again to stop now and lose them)",
            CLEAN_UP_TIMEOUT_S,
        )
        with contextlib.suppress(KeyboardInterrupt):
            if not ended.wait(timeout=CLEAN_UP_TIMEOUT_S):
                log.warning("stopped waiting: the requests in flight did not end in time")

    def close(self) -> None:
        """Stop the loop and its thread. Calls after this raise."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


_default: Portal | None = None
_default_lock = threading.Lock()


def default_portal() -> Portal:
    """The process-wide portal, started on first use."""
    global _default
    with _default_lock:
        if _default is None or _default.loop.is_closed():
            _default = Portal()
        return _default
