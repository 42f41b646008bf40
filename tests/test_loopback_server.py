"""The loopback OpenAI-compatible server, driven over real TCP by the openai client and httpx2."""

from __future__ import annotations

import asyncio
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from ttscale.errors import ConfigError, TTScaleError
from ttscale.testing.server import (
    CONFIDENT,
    UNCONFIDENT,
    Fault,
    LoopbackServer,
    RequestRecord,
    ScriptedAnswer,
    ScriptRequest,
    ServerConfig,
    TokenProfile,
    count_tokens,
)

DEFAULT_ANSWER = "The answer is 42."  # 5 tokens: The, answer, is, 42, .


def client_for(server: LoopbackServer, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, **options)


def chat_body(prompt: str = "q", **fields: Any) -> dict[str, Any]:
    return {"model": "loopback", "messages": [{"role": "user", "content": prompt}], **fields}


def raw_exchange(server: LoopbackServer, data: bytes) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        received = []
        while chunk := sock.recv(65536):
            received.append(chunk)
    return b"".join(received)


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def assert_openai_error(response: httpx2.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        yield running


# -- tokens, choices and usage -------------------------------------------------------------------


def test_count_tokens_counts_word_runs_and_punctuation() -> None:
    assert count_tokens("") == 0
    assert count_tokens("   \n") == 0
    assert count_tokens(DEFAULT_ANSWER) == 5
    assert count_tokens("What is 2+2?") == 6
    assert count_tokens("snake_case x1") == 2


def test_chat_returns_n_choices_with_exact_usage(server: LoopbackServer) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    response = client_for(server).chat.completions.create(model="loopback", messages=messages, n=3)
    assert response.object == "chat.completion"
    assert response.model == "loopback"
    assert [choice.index for choice in response.choices] == [0, 1, 2]
    assert all(choice.message.content == DEFAULT_ANSWER for choice in response.choices)
    assert all(choice.message.role == "assistant" for choice in response.choices)
    assert all(choice.finish_reason == "stop" for choice in response.choices)
    assert response.usage is not None
    # Each message costs its tokens plus 4; the prompt is charged once per request, not per choice.
    assert response.usage.prompt_tokens == (3 + 4) + (6 + 4)
    assert response.usage.completion_tokens == 3 * 5
    assert response.usage.total_tokens == 17 + 15
    (record,) = server.records
    assert record.ordinal == 0 and record.status == 200 and record.delivered and record.generated
    assert record.path == "/v1/chat/completions" and record.method == "POST"
    assert record.body is not None and record.body["n"] == 3
    assert record.started_at <= record.finished_at
    expected = {"prompt_tokens": 17, "completion_tokens": 15, "requests": 1, "samples": 3}
    assert server.delivered_usage() == expected
    assert server.generated_usage() == expected
    assert server.request_count == 1


def test_completions_return_n_choices_with_exact_usage(server: LoopbackServer) -> None:
    response = client_for(server).completions.create(model="loopback", prompt="Say hi!", n=2)
    assert response.object == "text_completion"
    assert [choice.text for choice in response.choices] == [DEFAULT_ANSWER] * 2
    assert [choice.index for choice in response.choices] == [0, 1]
    assert response.usage is not None
    assert response.usage.prompt_tokens == 3
    assert response.usage.completion_tokens == 10
    assert response.usage.total_tokens == 13
    assert server.delivered_usage() == {
        "prompt_tokens": 3,
        "completion_tokens": 10,
        "requests": 1,
        "samples": 2,
    }


def test_table_answers_are_fixed_or_cycled_by_index_per_prompt() -> None:
    answers = {"fixed": "Always this.", "cycled": ["a", "b", "c"]}
    with LoopbackServer(answers=answers, default_answer="unknown") as server:
        client = client_for(server)
        chat = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "cycled"}], n=2
        )
        assert [choice.message.content for choice in chat.choices] == ["a", "b"]
        # The index counts samples of the same prompt across requests and endpoints.
        completion = client.completions.create(model="m", prompt="cycled", n=2)
        assert [choice.text for choice in completion.choices] == ["c", "a"]
        fixed = client.completions.create(model="m", prompt="fixed", n=2)
        assert [choice.text for choice in fixed.choices] == ["Always this."] * 2
        other = client.completions.create(model="m", prompt="anything else")
        assert other.choices[0].text == "unknown"

        server.reset_log()
        assert server.records == [] and server.request_count == 0
        again = client.completions.create(model="m", prompt="cycled")
        assert again.choices[0].text == "a"  # indices start over with the log
        assert server.records[0].ordinal == 0


def test_function_responder_is_told_prompt_index_choice_seed_and_temperature() -> None:
    seen: list[ScriptRequest] = []

    def respond(request: ScriptRequest) -> str:
        seen.append(request)
        return f"{request.prompt} #{request.index} choice {request.choice}"

    with LoopbackServer(answers=respond) as server:
        client = client_for(server)
        first = client.chat.completions.create(
            model="m",
            messages=[
                {"role": "user", "content": "earlier question"},
                {"role": "assistant", "content": "earlier answer"},
                {"role": "user", "content": "q"},
            ],
            n=2,
            seed=7,
            temperature=0.5,
        )
        second = client.completions.create(model="m", prompt="q", n=2, seed=8)
        parts = client.chat.completions.create(
            model="m",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "part one"},
                        {"type": "text", "text": "part two"},
                    ],
                }
            ],
        )
    assert [c.message.content for c in first.choices] == ["q #0 choice 0", "q #1 choice 1"]
    assert [c.text for c in second.choices] == ["q #2 choice 0", "q #3 choice 1"]
    assert parts.choices[0].message.content == "part one\npart two #0 choice 0"
    assert [(r.seed, r.temperature) for r in seen[:4]] == [(7, 0.5), (7, 0.5), (8, None), (8, None)]
    assert seen[0].body["model"] == "m" and seen[0].body["n"] == 2


def test_max_tokens_truncates_to_whole_tokens_with_finish_length() -> None:
    answer = "Hello, brave new world!"  # Hello , brave new world ! = 6 tokens
    with LoopbackServer(default_answer=answer) as server:
        client = client_for(server)
        short = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "q"}], max_tokens=3
        )
        assert short.choices[0].message.content == "Hello, brave"
        assert short.choices[0].finish_reason == "length"
        assert short.usage is not None and short.usage.completion_tokens == 3
        exact = client.completions.create(model="m", prompt="q", max_tokens=6)
        assert exact.choices[0].text == answer
        assert exact.choices[0].finish_reason == "stop"
        one = client.completions.create(model="m", prompt="q", max_tokens=1)
        assert one.choices[0].text == "Hello" and one.choices[0].finish_reason == "length"
        assert server.delivered_usage()["completion_tokens"] == 3 + 6 + 1


def test_stop_cuts_at_the_first_stop_string() -> None:
    with LoopbackServer(default_answer="one two; three. four") as server:
        client = client_for(server)
        listed = client.completions.create(model="m", prompt="q", stop=[".", ";"])
        assert listed.choices[0].text == "one two"
        assert listed.choices[0].finish_reason == "stop"
        single = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "q"}], stop="three"
        )
        assert single.choices[0].message.content == "one two; "
        assert single.usage is not None and single.usage.completion_tokens == 3


# -- logprobs -----------------------------------------------------------------------------------


def test_chat_logprobs_have_one_entry_per_token_with_top_alternatives(
    server: LoopbackServer,
) -> None:
    client = client_for(server)
    response = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "q"}], logprobs=True, top_logprobs=3, n=2
    )
    for choice in response.choices:
        assert choice.logprobs is not None and choice.logprobs.content is not None
        entries = choice.logprobs.content
        assert "".join(entry.token for entry in entries) == choice.message.content
        assert len(entries) == count_tokens(DEFAULT_ANSWER)
        for entry in entries:
            assert entry.logprob < 0
            assert entry.bytes == list(entry.token.encode())
            assert len(entry.top_logprobs) == 3
            assert entry.top_logprobs[0].token == entry.token
            assert entry.top_logprobs[0].logprob == entry.logprob
            values = [alternative.logprob for alternative in entry.top_logprobs]
            assert values == sorted(values, reverse=True)
    plain = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "q"}], logprobs=True
    )
    assert plain.choices[0].logprobs is not None and plain.choices[0].logprobs.content
    assert all(entry.top_logprobs == [] for entry in plain.choices[0].logprobs.content)
    without = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
    assert without.choices[0].logprobs is None


def test_completions_logprobs_use_the_legacy_format(server: LoopbackServer) -> None:
    response = client_for(server).completions.create(model="m", prompt="q", logprobs=2)
    logprobs = response.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens is not None and logprobs.token_logprobs is not None
    assert logprobs.top_logprobs is not None and logprobs.text_offset is not None
    assert "".join(logprobs.tokens) == response.choices[0].text
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 5
    for token, value, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert len(top) == 2
        assert next(iter(top.items())) == (token, value)
    offsets = [sum(len(token) for token in logprobs.tokens[:i]) for i in range(5)]
    assert logprobs.text_offset == offsets


# -- streaming ----------------------------------------------------------------------------------


def test_streamed_chat_through_the_openai_client_with_usage(server: LoopbackServer) -> None:
    stream = client_for(server).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "q"}],
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    texts = {0: "", 1: ""}
    content_chunks = {0: 0, 1: 0}
    roles: dict[int, str | None] = {}
    finishes: dict[int, str | None] = {}
    for chunk in chunks[:-1]:
        assert chunk.object == "chat.completion.chunk" and chunk.usage is None
        (choice,) = chunk.choices
        roles.setdefault(choice.index, choice.delta.role)
        if choice.delta.content:
            texts[choice.index] += choice.delta.content
            content_chunks[choice.index] += 1
        if choice.finish_reason is not None:
            finishes[choice.index] = choice.finish_reason
    assert texts == {0: DEFAULT_ANSWER, 1: DEFAULT_ANSWER}
    assert content_chunks == {0: 5, 1: 5}  # one chunk per token
    assert roles == {0: "assistant", 1: "assistant"}
    assert finishes == {0: "stop", 1: "stop"}
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (5, 10)
    assert server.delivered_usage()["completion_tokens"] == 10


# -- scripted confidence and paced streams --------------------------------------------------

PROFILED = ScriptedAnswer("one two three four five six", (CONFIDENT, CONFIDENT, UNCONFIDENT))


def test_scripted_profiles_set_every_tokens_logprobs() -> None:
    with LoopbackServer(answers={"q": PROFILED}) as server:
        response = client_for(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "q"}], logprobs=True, top_logprobs=4
        )
    content = response.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 6
    # Tokens past the profile's end repeat its last entry.
    levels = [CONFIDENT, CONFIDENT, UNCONFIDENT, UNCONFIDENT, UNCONFIDENT, UNCONFIDENT]
    for entry, level in zip(content, levels, strict=True):
        assert entry.logprob == level.logprob
        values = [alternative.logprob for alternative in entry.top_logprobs]
        assert values == pytest.approx([level.logprob - rank * level.gap for rank in range(4)])
    # Control: a plain answer keeps the made-up logprobs, alternatives 1 apart (not 5).
    with LoopbackServer(answers={"q": "one two"}) as server:
        plain = client_for(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "q"}], logprobs=True, top_logprobs=2
        )
    first = plain.choices[0].logprobs.content[0]  # type: ignore[union-attr]
    assert first.top_logprobs[1].logprob == pytest.approx(first.logprob - 1.0)
    with pytest.raises(ConfigError):
        TokenProfile(logprob=0.5, gap=1.0)
    with pytest.raises(ConfigError):
        ServerConfig(answers={"q": [PROFILED, 3]})  # type: ignore[list-item]


def wait_for_records(server: LoopbackServer, count: int, timeout: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while len(server.records) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.records


def test_a_paced_stream_read_to_the_end_is_logged_whole() -> None:
    with LoopbackServer(answers={"q": PROFILED}, token_interval=0.01) as server:
        stream = client_for(server).chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "q"}],
            stream=True,
            logprobs=True,
            top_logprobs=2,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        [record] = wait_for_records(server, 1)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == PROFILED.text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert (record.streamed_tokens, record.client_closed, record.delivered) == (6, False, True)
    assert record.completion_tokens == 6


@pytest.mark.parametrize("read", [1, 3])
def test_a_paced_stream_closed_by_the_client_is_logged_where_it_was_closed(read: int) -> None:
    # Tokens 0.2 s apart: the client closes long before the next one is due.
    with LoopbackServer(answers={"q": PROFILED}, token_interval=0.2) as server:
        stream = client_for(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "q"}], stream=True
        )
        seen = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen += 1
                if seen == read:
                    break
        stream.close()
        [record] = wait_for_records(server, 1)
    assert record.client_closed and not record.delivered
    assert record.streamed_tokens == read
    # The server stops generating when the client goes: it spent what it had written.
    assert record.completion_tokens == read
    assert server.generated_usage()["completion_tokens"] == read


def test_unpaced_streams_are_written_at_once_and_logged_as_before(server: LoopbackServer) -> None:
    stream = client_for(server).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "q"}], stream=True
    )
    list(stream)
    [record] = server.records
    assert record.streamed_tokens is None and not record.client_closed


def test_streamed_completions_are_chunked_server_sent_events(server: LoopbackServer) -> None:
    with httpx2.Client(timeout=10) as client:
        body = {"model": "m", "prompt": "q", "stream": True, "max_tokens": 4}
        response = client.post(f"{server.base_url}/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["transfer-encoding"] == "chunked"
    events = [line for line in response.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(line.removeprefix("data: ")) for line in events[:-1]]
    assert "".join(p["choices"][0]["text"] for p in payloads) == "The answer is 42"
    assert [p["choices"][0]["finish_reason"] for p in payloads][-1] == "length"
    assert all("usage" not in p for p in payloads)  # include_usage was not asked for

    stream = client_for(server).completions.create(model="m", prompt="q", stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == DEFAULT_ANSWER


# -- other endpoints and bad requests -------------------------------------------------------------


def test_models_and_health(server: LoopbackServer) -> None:
    models = client_for(server).models.list()
    assert [model.id for model in models.data] == ["loopback"]
    with httpx2.Client(timeout=10) as client:
        health = client.get(f"http://127.0.0.1:{server.port}/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert server.request_count == 0  # neither is a generation request
    assert [record.ordinal for record in server.records] == [-1, -1]


def test_unknown_paths_and_invalid_json_get_openai_errors(server: LoopbackServer) -> None:
    with httpx2.Client(timeout=10) as client:
        missing = client.get(f"{server.base_url}/nope")
        assert_openai_error(missing, 404)
        wrong_method = client.get(f"{server.base_url}/chat/completions")
        assert_openai_error(wrong_method, 405)
        broken = client.post(
            f"{server.base_url}/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert_openai_error(broken, 400)
        not_object = client.post(f"{server.base_url}/completions", json=["a list"])
        assert_openai_error(not_object, 400)
        no_prompt = client.post(f"{server.base_url}/completions", json={"model": "m"})
        assert assert_openai_error(no_prompt, 400)["param"] == "prompt"
        # The connection survives all of that.
        assert client.post(f"{server.base_url}/completions", json={"prompt": "q"}).is_success
    assert len({record.connection for record in server.records}) == 1
    assert server.request_count == 2  # only requests with a JSON object body are generations
    assert server.delivered_usage()["requests"] == 1


def test_bodies_that_cannot_be_read_get_411_or_400(server: LoopbackServer) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
    no_length = raw_exchange(server, head + b"\r\n")
    assert no_length.startswith(b"HTTP/1.1 411 ")
    chunked = raw_exchange(server, head + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411 ")
    bad_length = raw_exchange(server, head + b"Content-Length: ten\r\n\r\n")
    assert bad_length.startswith(b"HTTP/1.1 400 ")
    garbage = raw_exchange(server, b"this is not http\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert all(b"connection: close" in reply.lower() for reply in (no_length, chunked, garbage))
    assert [record.status for record in server.records] == [411, 411, 400, 400]


def test_connection_close_is_honoured(server: LoopbackServer) -> None:
    body = json.dumps({"prompt": "q"}).encode()
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    reply = raw_exchange(server, request)  # returns only because the server closed
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head.lower()
    assert json.loads(payload)["choices"][0]["text"] == DEFAULT_ANSWER


def test_keep_alive_serves_many_requests_on_one_connection(server: LoopbackServer) -> None:
    with httpx2.Client(timeout=10) as client:
        for _ in range(3):
            client.post(f"{server.base_url}/chat/completions", json=chat_body()).raise_for_status()
            client.get(f"{server.base_url}/models").raise_for_status()
        closing = client.post(
            f"{server.base_url}/completions", json={"prompt": "q"}, headers={"connection": "close"}
        )
        assert closing.headers["connection"] == "close"
        client.post(f"{server.base_url}/completions", json={"prompt": "q"}).raise_for_status()
    connections = [record.connection for record in server.records]
    assert len(connections) == 8
    assert len(set(connections[:7])) == 1  # one connection until the client asked to close it
    assert connections[7] != connections[0]


# -- n support ------------------------------------------------------------------------------------


def test_n_support_reject_answers_400_naming_n() -> None:
    with LoopbackServer(n_support="reject") as server:
        client = client_for(server)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "q"}], n=2
            )
        assert caught.value.status_code == 400
        assert caught.value.response.json()["error"]["param"] == "n"
        single = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "q"}], n=1
        )
        assert len(single.choices) == 1
        assert [record.status for record in server.records] == [400, 200]
        assert not server.records[0].generated
        assert server.generated_usage()["requests"] == 1


def test_n_support_ignore_returns_one_choice() -> None:
    with LoopbackServer(n_support="ignore") as server:
        response = client_for(server).completions.create(model="m", prompt="q", n=4)
        assert len(response.choices) == 1
        assert response.usage is not None and response.usage.completion_tokens == 5
        assert server.delivered_usage()["samples"] == 1


def test_max_choices_caps_the_choices_returned() -> None:
    with LoopbackServer(max_choices=2) as server:
        client = client_for(server)
        capped = client.completions.create(model="m", prompt="q", n=5)
        assert len(capped.choices) == 2
        single = client.completions.create(model="m", prompt="q")
        assert len(single.choices) == 1
        assert server.delivered_usage()["samples"] == 3


# -- faults ---------------------------------------------------------------------------------------


def test_rate_limit_fault_sends_429_with_retry_after() -> None:
    fault = Fault("rate_limit", on_requests=frozenset({0}), retry_after=1.5)
    with LoopbackServer(faults=(fault,)) as server, httpx2.Client(timeout=10) as client:
        limited = client.post(f"{server.base_url}/chat/completions", json=chat_body())
        assert_openai_error(limited, 429)
        assert limited.headers["retry-after"] == "1.5"
        assert limited.headers["retry-after-ms"] == "1500"
        assert client.post(f"{server.base_url}/chat/completions", json=chat_body()).is_success
        first, second = server.records
        assert (first.status, first.fault, first.generated) == (429, "rate_limit", False)
        assert (second.status, second.fault) == (200, None)
        assert server.delivered_usage()["requests"] == 1
        assert server.generated_usage()["requests"] == 1


def test_server_error_fault_every_second_request() -> None:
    with LoopbackServer(faults=(Fault("server_error", every=2),)) as server:
        client = client_for(server)
        client.completions.create(model="m", prompt="q")
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model="m", prompt="q")
        client.completions.create(model="m", prompt="q")
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model="m", prompt="q")
        assert [record.status for record in server.records] == [200, 500, 200, 500]
        assert server.generated_usage()["requests"] == 2


def test_reset_fault_aborts_the_connection() -> None:
    with LoopbackServer(faults=(Fault("reset", on_requests=frozenset({0})),)) as server:
        with httpx2.Client(timeout=10) as client, pytest.raises(httpx2.TransportError):
            client.post(f"{server.base_url}/chat/completions", json=chat_body())
        (record,) = server.records
        assert (record.status, record.fault) == (0, "reset")
        assert not record.generated and not record.delivered
        with httpx2.Client(timeout=10) as client:
            assert client.post(f"{server.base_url}/chat/completions", json=chat_body()).is_success
        assert server.delivered_usage()["requests"] == 1
        assert server.generated_usage()["requests"] == 1


def test_slow_fault_abandoned_by_the_client_is_generated_but_not_delivered() -> None:
    fault = Fault("slow", on_requests=frozenset({0}), delay=1.5)
    with LoopbackServer(faults=(fault,)) as server:
        with httpx2.Client(timeout=0.3) as client, pytest.raises(httpx2.TimeoutException):
            client.post(f"{server.base_url}/chat/completions", json=chat_body())
        # Other requests are not held up meanwhile.
        with httpx2.Client(timeout=10) as client:
            assert client.post(f"{server.base_url}/chat/completions", json=chat_body()).is_success
        wait_for(lambda: len(server.records) == 2)
        slow = next(record for record in server.records if record.ordinal == 0)
        assert slow.fault == "slow" and slow.generated and not slow.delivered
        assert slow.finished_at - slow.started_at >= 1.4
        assert server.delivered_usage()["requests"] == 1
        assert server.generated_usage()["requests"] == 2


def test_slow_fault_answers_a_patient_client() -> None:
    fault = Fault("slow", on_requests=frozenset({0}), delay=0.2)
    with LoopbackServer(faults=(fault,)) as server:
        response = client_for(server, timeout=10).completions.create(model="m", prompt="q")
        assert response.choices[0].text == DEFAULT_ANSWER
        assert server.records[0].delivered


def test_malformed_json_fault_sends_an_unparseable_200() -> None:
    with LoopbackServer(faults=(Fault("malformed_json", on_requests=frozenset({0})),)) as server:
        with httpx2.Client(timeout=10) as client:
            broken = client.post(f"{server.base_url}/chat/completions", json=chat_body())
        assert broken.status_code == 200
        assert broken.headers["content-type"] == "application/json"
        with pytest.raises(ValueError, match=r"Expecting|Unterminated|delimiter"):
            json.loads(broken.content)
        (record,) = server.records
        assert record.generated and not record.delivered
        assert server.delivered_usage()["requests"] == 0
        assert server.generated_usage() == {
            "prompt_tokens": 5,
            "completion_tokens": 5,
            "requests": 1,
            "samples": 1,
        }


# -- concurrency ----------------------------------------------------------------------------------


def test_peak_concurrency_counts_overlapping_requests() -> None:
    workers = 10
    with LoopbackServer(latency=0.2) as server:
        barrier = threading.Barrier(workers)
        failures: list[BaseException] = []

        def work() -> None:
            try:
                with httpx2.Client(timeout=30) as client:
                    client.get(f"{server.base_url}/models")  # connect before the race starts
                    barrier.wait(timeout=30)
                    url = f"{server.base_url}/chat/completions"
                    client.post(url, json=chat_body()).raise_for_status()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=work) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert failures == []
        assert server.request_count == workers
        assert server.peak_concurrency == workers


def test_records_are_a_snapshot() -> None:
    with LoopbackServer() as server:
        before: list[RequestRecord] = server.records
        client_for(server).completions.create(model="m", prompt="q")
        assert before == [] and len(server.records) == 1


# -- running --------------------------------------------------------------------------------------


def test_serves_async_clients_from_its_thread_and_on_the_callers_loop() -> None:
    async def from_thread() -> str | None:
        async with LoopbackServer(default_answer="threaded") as server:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            async with client:
                response = await client.completions.create(model="m", prompt="q")
        return response.choices[0].text

    async def on_this_loop() -> str | None:
        server = LoopbackServer(default_answer="in loop")
        stop = asyncio.Event()
        listening = asyncio.Event()
        serving = asyncio.create_task(
            server.serve(until=stop, on_listening=lambda _url: listening.set())
        )
        await listening.wait()
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="x", max_retries=0
        ) as client:
            response = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "q"}]
            )
        stop.set()
        await serving
        return response.choices[0].message.content

    assert asyncio.run(from_thread()) == "threaded"
    assert asyncio.run(on_this_loop()) == "in loop"


def test_base_url_survives_stop_and_the_port_is_then_closed() -> None:
    with LoopbackServer() as server:
        port = server.port
        assert server.base_url == f"http://127.0.0.1:{port}/v1"
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=5),
    ):
        pass


def test_a_port_in_use_fails_start_with_a_ttscale_error() -> None:
    with LoopbackServer() as first:
        second = LoopbackServer(port=first.port)
        with pytest.raises(TTScaleError, match="could not start"):
            second.start()


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        Fault("reset")  # hits no request
    with pytest.raises(ConfigError):
        Fault("explode", every=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ServerConfig(n_support="maybe")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ServerConfig(answers={"q": []})
    with pytest.raises(ConfigError):
        LoopbackServer(latency_ms=3)


def test_module_cli_prints_listening_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({"q": ["first", "second"]}), encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "ttscale.testing",
        "--answers",
        str(answers),
        "--latency",
        "0.01",
        "--n-support",
        "reject",
    ]
    # No PYTHONUNBUFFERED: the server must flush its one line into the pipe by itself.
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            with selectors.DefaultSelector() as selector:
                selector.register(process.stdout, selectors.EVENT_READ)
                assert selector.select(timeout=60), "the server printed nothing"
            line = process.stdout.readline()
            assert line.startswith("LISTENING http://127.0.0.1:") and line.endswith("/v1\n")
            base_url = line.split()[1]
            with openai.OpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
                texts = [
                    client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "q"}]
                    )
                    .choices[0]
                    .message.content
                    for _ in range(2)
                ]
                assert texts == ["first", "second"]
                with pytest.raises(openai.BadRequestError):
                    client.completions.create(model="m", prompt="q", n=2)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
            assert process.stdout.read() == ""  # exactly one line was printed
        finally:
            if process.poll() is None:
                process.kill()
