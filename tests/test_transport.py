"""The lean JSON client against the loopback server: the same answers, retries and errors as the
``openai`` client it replaces on the sampler's hot path, which serves as the reference here."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest

from ttscale import OpenAISampler
from ttscale.samplers.transport import LeanClient, lean_supported, retry_delay, should_retry
from ttscale.testing.server import Fault, LoopbackServer

BODY = {"model": "loopback", "messages": [{"role": "user", "content": "q"}]}
Post = Callable[[str, dict[str, Any]], Awaitable[object]]


def lean_post(server: LoopbackServer, **options: Any) -> tuple[Post, Callable[[], Awaitable[None]]]:
    client = LeanClient(server.base_url, api_key="k", **options)
    return client.post, client.aclose


def openai_post(
    server: LoopbackServer, **options: Any
) -> tuple[Post, Callable[[], Awaitable[None]]]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", **options)

    async def post(path: str, body: dict[str, Any]) -> object:
        return await client.post(path, cast_to=object, body=body)

    return post, client.close


CLIENTS = {"lean": lean_post, "openai": openai_post}


def outcome(make: Any, server: LoopbackServer, body: dict[str, Any], **options: Any) -> Any:
    """What one POST gives: the answer, or the error raised (type, status, body, message)."""

    async def run() -> Any:
        post, close = make(server, **options)
        try:
            return await post("/chat/completions", body)
        except openai.APIError as exc:
            return exc
        finally:
            await close()

    return asyncio.run(run())


def described(result: Any) -> Any:
    if isinstance(result, openai.APIStatusError):
        return (type(result), result.status_code, result.body, result.message)
    if isinstance(result, openai.APIError):
        return (type(result), result.message)
    return ("answer", sorted(result))


# -- the same outcome as the openai client --------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "body", "options"),
    [
        ((), BODY, {}),
        ((), {**BODY, "n": 0}, {}),  # 400 naming the parameter
        ((), {"model": "loopback"}, {}),  # 400: no messages
        ((Fault("server_error", every=1),), BODY, {"max_retries": 1}),
        ((Fault("rate_limit", every=1, retry_after=0.01),), BODY, {"max_retries": 1}),
        ((Fault("reset", every=1),), BODY, {"max_retries": 1}),
        ((Fault("slow", every=1, delay=30.0),), BODY, {"max_retries": 0, "timeout": 0.3}),
        ((Fault("malformed_json", every=1),), BODY, {"max_retries": 0}),
    ],
    ids=["ok", "bad-n", "no-messages", "5xx", "429", "reset", "timeout", "malformed"],
)
def test_the_same_answer_or_error_as_the_openai_client(
    faults: tuple[Fault, ...], body: dict[str, Any], options: dict[str, Any]
) -> None:
    seen = {}
    requests = {}
    for name, make in CLIENTS.items():
        with LoopbackServer(faults=faults) as server:
            try:
                result = outcome(make, server, body, **options)
            except ValueError:  # a 200 that is not JSON: both raise a ValueError
                result = ("not json",)
            seen[name] = described(result) if not isinstance(result, tuple) else result
            requests[name] = server.request_count
    assert seen["lean"] == seen["openai"]
    assert requests["lean"] == requests["openai"]  # as many attempts: the same retries


def test_a_retry_after_the_server_asks_for_is_waited() -> None:
    fault = Fault("rate_limit", on_requests=frozenset({0}), retry_after=0.4)
    with LoopbackServer(faults=(fault,)) as server:
        outcome(lean_post, server, BODY, max_retries=1)
        first, second = sorted(server.records, key=lambda record: record.ordinal)
    assert first.status == 429 and second.status == 200
    assert second.started_at - first.finished_at >= 0.4  # a lower bound: waited as asked


def test_retries_run_out_as_the_openai_clients_do() -> None:
    with LoopbackServer(faults=(Fault("server_error", every=1),)) as server:
        error = outcome(lean_post, server, BODY, max_retries=2)
        assert isinstance(error, openai.InternalServerError)
        assert server.request_count == 3
    # Control: no retries, one attempt.
    with LoopbackServer(faults=(Fault("server_error", every=1),)) as server:
        outcome(lean_post, server, BODY, max_retries=0)
        assert server.request_count == 1


def test_an_unreachable_server_is_a_connection_error() -> None:
    with LoopbackServer() as server:
        gone = server
    error = outcome(lean_post, gone, BODY, max_retries=0)
    assert type(error) is openai.APIConnectionError


def test_keep_alive_connections_are_reused_and_survive_a_new_event_loop() -> None:
    with LoopbackServer() as server:
        client = LeanClient(server.base_url, api_key="k")

        async def three() -> None:
            for _ in range(3):
                await client.post("/chat/completions", BODY)

        asyncio.run(three())
        asyncio.run(three())  # another loop: a fresh pool, not a dead loop's sockets
        asyncio.run(client.aclose())
        connections = [r.connection for r in server.records]
    assert len(set(connections[:3])) == 1 and len(set(connections[3:])) == 1
    assert connections[0] != connections[3]


# -- what is sent, and answers the loopback server does not give ----------------------------


async def raw_server(answer: bytes, heads: list[bytes]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        heads.append(head)
        writer.write(answer)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def exchange(answer: bytes) -> tuple[Any, bytes]:
    heads: list[bytes] = []

    async def run() -> Any:
        server = await raw_server(answer, heads)
        port = server.sockets[0].getsockname()[1]
        client = LeanClient(f"http://127.0.0.1:{port}/v1", api_key="secret", max_retries=0)
        try:
            return await client.post("/chat/completions", {"x": 1})
        finally:
            await client.aclose()
            server.close()

    return asyncio.run(run()), heads[0]


def test_headers_sent_are_the_ones_users_rely_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_ORG_ID", "org-1")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-1")
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    result, head = exchange(answer)
    assert result == {}
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    headers = {
        k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    assert headers["authorization"] == "Bearer secret"
    assert headers["content-type"] == "application/json"
    assert headers["openai-organization"] == "org-1" and headers["openai-project"] == "proj-1"
    assert headers["x-stainless-retry-count"] == "0"


def test_chunked_and_close_delimited_answers_are_read() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"a":\r\n2;ext=1\r\n 1\r\n1\r\n}\r\n0\r\n\r\n'
    )
    assert exchange(chunked)[0] == {"a": 1}
    until_close = b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"b": 2}'
    assert exchange(until_close)[0] == {"b": 2}


# -- the retry policy, as plain functions -----------------------------------------------------


def test_retry_policy_follows_the_openai_client() -> None:
    assert should_retry(429, {}) and should_retry(500, {}) and should_retry(408, {})
    assert should_retry(409, {}) and not should_retry(400, {}) and not should_retry(404, {})
    assert should_retry(400, {"x-should-retry": "true"})
    assert not should_retry(503, {"x-should-retry": "false"})
    assert not should_retry(429, {"retry-after": "121"})  # longer than two minutes: give up
    assert retry_delay(0, {"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_delay(0, {"retry-after": "3"}) == 3.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_delay(0, {"retry-after": later}) <= 30
    for retries, top in ((0, 0.5), (1, 1.0), (3, 4.0), (10, 8.0)):
        delay = retry_delay(retries, {})
        assert 0.75 * top <= delay <= top
    assert 0.375 <= retry_delay(0, {"retry-after": "0"}) <= 0.5  # zero: back off instead


def test_a_proxy_in_the_environment_sends_the_sampler_through_openai(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert lean_supported("http://10.1.2.3:8000/v1")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert not lean_supported("http://10.1.2.3:8000/v1")
    monkeypatch.setenv("NO_PROXY", "10.1.2.3")
    assert lean_supported("http://10.1.2.3:8000/v1")
    assert not lean_supported("ftp://10.1.2.3/v1")


def test_transport_openai_keeps_every_request_on_the_openai_client() -> None:
    with LoopbackServer() as server:
        lean = OpenAISampler(model="m", base_url=server.base_url, api_key="k")
        plain = OpenAISampler(model="m", base_url=server.base_url, api_key="k", transport="openai")
        assert lean._upstream.lean is not None
        assert plain._upstream.lean is None


def test_the_comparison_sees_a_different_retry_policy() -> None:
    # Control for the comparison above: one retry fewer on the lean side shows in the attempts.
    counts = []
    for make, retries in ((lean_post, 0), (openai_post, 1)):
        with LoopbackServer(faults=(Fault("server_error", every=1),)) as server:
            outcome(make, server, BODY, max_retries=retries)
            counts.append(server.request_count)
    assert counts == [1, 2]


@pytest.mark.parametrize("transport", ["auto", "openai"])
@pytest.mark.parametrize(
    "fault",
    [
        Fault("rate_limit", on_requests=frozenset({0, 2}), retry_after=0.05),
        Fault("reset", on_requests=frozenset({0, 3})),
    ],
    ids=lambda fault: fault.kind,
)
def test_the_sampler_loses_no_sample_on_either_transport(fault: Fault, transport: str) -> None:
    with LoopbackServer(answers=lambda r: f"answer {r.index}", faults=(fault,)) as server:
        sampler = OpenAISampler(
            model="m",
            base_url=server.base_url,
            api_key="k",
            max_n=4,
            timeout=1.0,
            max_retries=3,
            transport=transport,
        )

        async def draw() -> Any:
            async with sampler:
                return await sampler.sample("q", 16)

        batch = asyncio.run(draw())
        assert [c.index for c in batch.candidates] == list(range(16))
        assert len({c.text for c in batch.candidates}) == 16
        assert batch.usage.requests == server.delivered_usage()["requests"]
