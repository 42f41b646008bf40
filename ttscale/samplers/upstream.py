"""The connections to one model server: a lean JSON client, ``openai`` clients in shards, and
which shard is least busy.

Plain JSON requests (the samplers' non-streamed draws) go through a
:class:`~ttscale.samplers.transport.LeanClient` when the server is reachable without an HTTP proxy:
it keeps the ``openai`` client's retries, timeouts and error types at a fraction of its CPU per
request (see that module). Streams, servers behind a proxy, and clients a caller passes in go
through ``openai`` clients, made on first use (importing ``openai`` takes longer than the rest of
the package).

httpcore's pool looks at every one of its connections on each request, so one pool of 64
connections costs more CPU per request than the rest of a request together. Several ``openai``
clients with smaller pools keep that cost flat as the concurrency grows. :class:`UpstreamClients`
holds them and the requests in flight on each; the proxy sends its pass-through requests on their
connection pools (:attr:`UpstreamClients.pools`) directly, and its samplers draw through the same
clients, so all of them balance over the same connections.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from ttscale.samplers.transport import LeanClient, lean_supported

if TYPE_CHECKING:
    import httpx2
    import openai

__all__ = ["Transport", "UpstreamClients", "resolve_base_url"]

Transport = Literal["auto", "openai"]

_DEFAULT_BASE_URL = "https://api.openai.com/v1"


def resolve_base_url(base_url: str | None) -> str:
    """The base URL an ``openai`` client would use: given, else ``OPENAI_BASE_URL``, else
    OpenAI's own."""
    return base_url or os.environ.get("OPENAI_BASE_URL") or _DEFAULT_BASE_URL


class UpstreamClients:
    """``openai`` clients of one server, the requests in flight on each, and the lean client.

    ``pools`` are the clients' HTTP connection pools where the caller made them (to send on them
    directly); :meth:`aclose` closes clients and pools when ``owned``.
    """

    def __init__(
        self,
        clients: Sequence[openai.AsyncOpenAI] = (),
        *,
        pools: Sequence[httpx2.AsyncClient] = (),
        owned: bool = True,
        lean: LeanClient | None = None,
        settings: dict[str, Any] | None = None,
        shards: int | None = None,
    ) -> None:
        if not clients and settings is None:
            raise ValueError("UpstreamClients needs at least one client")
        self._clients = list(clients)
        self._settings = settings or {}
        self.pools = list(pools)
        self.owned = owned
        self.lean = lean
        count = len(self._clients) or shards or 1
        self.in_flight = [0] * count
        if clients:
            self.base_url = str(self._clients[0].base_url)
        else:
            self.base_url = resolve_base_url(self._settings["base_url"]).rstrip("/") + "/"

    @classmethod
    def create(
        cls,
        *,
        base_url: str | None,
        api_key: str | None,
        max_retries: int,
        timeout: float,
        shards: int,
        with_pools: bool = False,
        transport: Transport = "auto",
    ) -> UpstreamClients:
        """``shards`` clients of ``base_url``, made on first use; ``with_pools`` makes their
        connection pools now, so that requests can be sent on them directly (see :attr:`pools`).
        With ``transport="auto"`` JSON requests go through a :class:`LeanClient` where it can
        reach the server, unless ``with_pools``: then everything shares the pools' connections
        (the proxy's pass-through requests and its samplers' draws)."""
        url = resolve_base_url(base_url)
        pools = _pools(timeout, shards) if with_pools else []
        lean = None
        if transport == "auto" and not with_pools and lean_supported(url):
            lean = LeanClient(
                url, api_key=api_key or "not-needed", max_retries=max_retries, timeout=timeout
            )
        settings = {
            "base_url": base_url,
            "api_key": api_key or "not-needed",
            "max_retries": max_retries,
            "timeout": timeout,
        }
        return cls(pools=pools, lean=lean, settings=settings, shards=shards)

    @property
    def clients(self) -> list[openai.AsyncOpenAI]:
        """The ``openai`` clients, made on first use."""
        if not self._clients:
            import openai

            self._clients = [
                openai.AsyncOpenAI(
                    **self._settings, http_client=self.pools[shard] if self.pools else None
                )
                for shard in range(len(self.in_flight))
            ]
        return self._clients

    @property
    def key(self) -> object:
        """What samplers key what they learn of the server by: the first ``openai`` client
        given, or this object."""
        return self._clients[0] if not self._settings else self

    async def post(self, path: str, body: dict[str, Any]) -> object:
        """POST a JSON body to ``path``; the answer's parsed JSON. Raises the ``openai`` errors."""
        if self.lean is not None:
            return await self.lean.post(path, body)
        # The client's generic post keeps its retries, backoff, auth and connection pool, and
        # skips the typed-params transform and the pydantic response models.
        shard = self.acquire()
        try:
            return await self.clients[shard].post(path, cast_to=object, body=body)
        finally:
            self.release(shard)

    def acquire(self) -> int:
        """The least busy shard, counted busier by one until :meth:`release`."""
        in_flight = self.in_flight
        shard = min(range(len(in_flight)), key=in_flight.__getitem__)
        in_flight[shard] += 1
        return shard

    def release(self, shard: int) -> None:
        self.in_flight[shard] -= 1

    async def aclose(self) -> None:
        if not self.owned:
            return
        if self.lean is not None:
            await self.lean.aclose()
        for client in self._clients:
            await client.close()
        for pool in self.pools:
            await pool.aclose()


def _pools(timeout: float, count: int) -> list[httpx2.AsyncClient]:
    """Connection pools set up as ``openai``'s default one (``DefaultAsyncHttpxClient``), made
    without importing ``openai``. They share one TLS context (httpx's default one): each pool
    would otherwise load the certificate store again, most of a proxy's start-up."""
    import httpx2

    context = httpx2.create_ssl_context()
    return [
        httpx2.AsyncClient(
            timeout=httpx2.Timeout(timeout, connect=5.0),
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100),
            follow_redirects=True,
            verify=context,
        )
        for _ in range(count)
    ]
