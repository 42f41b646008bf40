"""The connections to one model server: ``openai`` clients in shards, and which is least busy.

httpcore's pool looks at every one of its connections on each request, so one pool of 64
connections costs more CPU per request than the rest of a request together. Several clients with
smaller pools (each still the ``openai`` client with its own retries and pooling) keep that cost
flat as the concurrency grows. :class:`UpstreamClients` holds them and the requests in flight on
each; :class:`~ttscale.samplers.openai_sampler.OpenAISampler` draws through one, and the proxy
shares its own with its samplers and its pass-through requests, so all of them balance over the
same connections.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx2
import openai

__all__ = ["UpstreamClients"]


class UpstreamClients:
    """``openai`` clients of one server and the requests in flight on each.

    ``pools`` are the clients' HTTP connection pools where the caller made them (to send on them
    directly); :meth:`aclose` closes clients and pools when ``owned``.
    """

    def __init__(
        self,
        clients: Sequence[openai.AsyncOpenAI],
        *,
        pools: Sequence[httpx2.AsyncClient] = (),
        owned: bool = True,
    ) -> None:
        if not clients:
            raise ValueError("UpstreamClients needs at least one client")
        self.clients = list(clients)
        self.pools = list(pools)
        self.owned = owned
        self.in_flight = [0] * len(self.clients)

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
    ) -> UpstreamClients:
        """``shards`` clients of ``base_url``; ``with_pools`` makes their connection pools here,
        so that requests can be sent on them directly (see :attr:`pools`)."""
        pools = (
            [
                openai.DefaultAsyncHttpxClient(timeout=httpx2.Timeout(timeout, connect=5.0))
                for _ in range(shards)
            ]
            if with_pools
            else []
        )
        clients = [
            openai.AsyncOpenAI(
                base_url=base_url,
                api_key=api_key or "not-needed",
                max_retries=max_retries,
                timeout=timeout,
                http_client=pools[shard] if pools else None,
            )
            for shard in range(shards)
        ]
        return cls(clients, pools=pools)

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
        for client in self.clients:
            await client.close()
        for pool in self.pools:
            await pool.aclose()
