"""``ttscale.scale`` and ``ttscale.wrap`` against the loopback server, through the openai client."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx2
import openai
import pytest

import ttscale
from ttscale import ConfigError, Problem
from ttscale.budget import max_samples
from ttscale.errors import BudgetExhausted
from ttscale.proxy import BackgroundProxy, ProxyConfig
from ttscale.strategies import BestOfN
from ttscale.testing.server import LoopbackServer, ScriptRequest
from ttscale.types import Candidate, Score

VOTES = ["\\boxed{42}", "\\boxed{41}", "so \\boxed{42}", "\\boxed{13}"]


def respond(request: ScriptRequest) -> str:
    return VOTES[request.index % len(VOTES)]


@pytest.fixture
def upstream() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=respond) as server:
        yield server


def messages(text: str = "What is 6 * 7?") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_scale_a_sync_function_returning_chat_completions(upstream: LoopbackServer) -> None:
    client = openai.OpenAI(base_url=upstream.base_url, api_key="k")

    @ttscale.scale(strategy="majority", samples=8, seed=5)
    def ask(question: str, seed: int | None = None) -> Any:
        return client.chat.completions.create(
            model="loopback", messages=messages(question), seed=seed
        )

    answer, result = ask("What is 6 * 7?")
    # Concurrent calls reach the server in any order, so the texts behind a vote vary; the vote not.
    assert result.answers[0] == "42" and answer in ("\\boxed{42}", "so \\boxed{42}")
    assert len(result.candidates) == 8
    seeds = [c.seed for c in result.candidates]
    assert seeds == [ttscale.derive_seed(5, i) for i in range(8)]
    # Every seed reached the server, and usage is what it reported.
    assert sorted(r.body["seed"] for r in upstream.records if r.body) == sorted(seeds)
    served = upstream.delivered_usage()
    assert result.usage.prompt_tokens == served["prompt_tokens"]
    assert result.usage.completion_tokens == served["completion_tokens"]
    assert result.usage.samples == 8 and all(c.tokens_exact for c in result.candidates)
    # A seed passed at call time is the base of that call's seeds.
    again = ask("What is 6 * 7?", seed=9)
    assert [c.seed for c in again.candidates] == [ttscale.derive_seed(9, i) for i in range(8)]


def test_scale_an_async_function_with_temperatures_and_a_verifier() -> None:
    seen: list[tuple[float, str]] = []

    @ttscale.scale(
        strategy="best_of_n",
        samples=6,
        k=2,
        temperatures=(0.2, 1.0),
        verifier=lambda p, cs: [float(len(c.text)) for c in cs],
    )
    async def write(topic: str, temperature: float = 0.7) -> str:
        seen.append((temperature, topic))
        await asyncio.sleep(0)
        return f"{topic} " + "x" * len(seen)

    scaled = asyncio.run(write("poem"))
    assert sorted(t for t, _ in seen) == [0.2, 0.2, 0.2, 1.0, 1.0, 1.0]
    assert [c.temperature for c in scaled.candidates] == [0.2, 1.0] * 3
    assert len(scaled.answers) == 2
    assert scaled.answer is not None and len(scaled.answer) == max(
        len(c.text) for c in scaled.candidates
    )
    assert not any(c.tokens_exact for c in scaled.candidates)  # a string says nothing of tokens


def test_scale_bare_decorator_budget_and_custom_problem() -> None:
    calls = 0

    @ttscale.scale
    def guess(question: str) -> str:
        nonlocal calls
        calls += 1
        return "\\boxed{7}"

    answer, result = guess("q")
    assert answer == "\\boxed{7}" and calls == 8 and result.selected[0].seed is None

    def exact(problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        return [Score(1.0 if problem.answer in c.text else 0.0) for c in candidates]

    budgeted = ttscale.scale(
        lambda q: "\\boxed{3}",
        strategy="adaptive",
        samples=40,
        budget={"samples": 5},
        verifier=exact,
        problem=lambda q: Problem(id="p", prompt=q, answer="3"),
    )
    scaled = budgeted("q")
    assert len(scaled.candidates) <= 5 and scaled.answer == "\\boxed{3}"
    with pytest.raises(ConfigError, match="temperature"):
        ttscale.scale(lambda q: q, temperatures=(0.5,))
    with pytest.raises(ConfigError, match="unknown budget"):
        ttscale.scale(lambda q: q, budget={"dollars": 1})


def test_sync_wrapper_works_inside_a_running_event_loop() -> None:
    @ttscale.scale(samples=3)
    def answer(question: str) -> str:
        return "\\boxed{1}"

    async def notebook_cell() -> str | None:
        # Jupyter runs cells inside a loop; the sync facade must not need one of its own.
        return answer("q").answer

    assert asyncio.run(notebook_cell()) == "\\boxed{1}"


def test_wrapped_sync_client_works_inside_a_running_event_loop(upstream: LoopbackServer) -> None:
    client = ttscale.wrap(
        openai.OpenAI(base_url=upstream.base_url, api_key="k"), strategy="majority", samples=4
    )

    async def notebook_cell() -> tuple[Any, list[Any]]:
        # Jupyter runs cells inside a running loop; the sync client must neither start a loop of
        # its own there (asyncio.run would refuse) nor wait on this one (it is blocked).
        assert asyncio.get_running_loop() is not None
        reply = client.chat.completions.create(model="loopback", messages=messages())
        chunks = list(
            client.chat.completions.create(model="loopback", messages=messages(), stream=True)
        )
        client.close()
        return reply, chunks

    reply, chunks = asyncio.run(notebook_cell())
    # The first 4 samples: 42 twice, 41 and 13 once.
    assert reply.choices[0].message.content in ("\\boxed{42}", "so \\boxed{42}")
    assert reply.model_extra["ttscale"]["votes"] == {"42": 2, "41": 1, "13": 1}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) in (
        "\\boxed{42}",
        "so \\boxed{42}",
    )
    assert upstream.delivered_usage()["samples"] == 8


def test_wrapped_sync_client(upstream: LoopbackServer) -> None:
    client = ttscale.wrap(openai.OpenAI(base_url=upstream.base_url, api_key="k"))
    plain = client.chat.completions.create(model="loopback", messages=messages())
    assert plain.choices[0].message.content == VOTES[0]
    assert "ttscale" not in (plain.model_extra or {})
    scaled = client.chat.completions.create(
        model="loopback",
        messages=messages(),
        n=2,
        extra_body={"ttscale": {"strategy": "majority", "samples": 8}},
    )
    # The upstream's answers 1..8 (the plain call took the first): 42 four times, then 41.
    assert [c.message.content for c in scaled.choices] == ["so \\boxed{42}", "\\boxed{41}"]
    info = scaled.model_extra["ttscale"]
    assert info["samples_used"] == 8 and info["k"] == 2
    # One request with n=8 went upstream: the client's n where the server has it.
    scaled_requests = [r for r in upstream.records if r.body and r.body.get("n") == 8]
    assert len(scaled_requests) == 1
    served = upstream.delivered_usage()
    assert plain.usage is not None and scaled.usage is not None
    assert plain.usage.total_tokens + scaled.usage.total_tokens == (
        served["prompt_tokens"] + served["completion_tokens"]
    )
    assert client.models.list() is not None  # everything else is the client's own
    client.close()


def test_scaled_calls_send_the_clients_default_headers_and_query(
    upstream: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The server reads the headers: a ttscale proxy, which scales a request its X-TTScale-*
    # headers ask it to. The wrapped client's one draw (n=2) becomes 3 samples upstream only if
    # the client's default headers went with it.
    scale_upstream = {"X-TTScale-Strategy": "majority", "X-TTScale-Samples": "3"}
    with BackgroundProxy(ProxyConfig(base_url=upstream.base_url)) as proxy:
        client = ttscale.wrap(
            openai.OpenAI(base_url=proxy.base_url, api_key="k", default_headers=scale_upstream)
        )
        reply = client.chat.completions.create(
            model="loopback",
            messages=messages(),
            extra_body={"ttscale": {"strategy": "majority", "samples": 2}},
        )
        client.close()
    assert reply.model_extra["ttscale"]["samples_used"] == 2
    assert upstream.delivered_usage()["samples"] == 3
    served = upstream.delivered_usage()
    assert reply.usage is not None
    assert reply.usage.total_tokens == served["prompt_tokens"] + served["completion_tokens"]

    # Query parameters and headers as sent, seen by an http_client given for the scaled calls.
    sent: list[httpx2.Request] = []

    async def record(request: httpx2.Request) -> None:
        sent.append(request)

    http = httpx2.AsyncClient(event_hooks={"request": [record]})
    plain = openai.OpenAI(
        base_url=upstream.base_url,
        api_key="k",
        default_headers={"X-Team": "search"},
        default_query={"tenant": "a"},
    )
    client = ttscale.wrap(plain, strategy="majority", samples=4, http_client=http)
    client.chat.completions.create(model="loopback", messages=messages())
    client.close()
    assert len(sent) == 1 and upstream.request_count == 2  # one draw of n=4, after the first
    assert sent[0].headers["x-team"] == "search" and sent[0].url.params["tenant"] == "a"
    assert sent[0].headers["authorization"] == "Bearer k"
    # The call set no max_tokens, so none went upstream: the server's own default applies.
    assert "max_tokens" not in json.loads(sent[0].content)
    assert http.is_closed  # closed with the wrapped client

    # A custom sync transport cannot serve the async draws: wrap() says so.
    with caplog.at_level(logging.WARNING, logger="ttscale.wrap"):
        ttscale.wrap(
            openai.OpenAI(base_url=upstream.base_url, api_key="k", http_client=httpx2.Client())
        )
    assert "http_client" in caplog.text
    with pytest.raises(ConfigError, match="http_client"):
        ttscale.wrap(openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k"), http_client=http)


def test_wrapped_client_defaults_objects_and_a_shared_budget(upstream: LoopbackServer) -> None:
    def longest(problem: Problem, candidates: Sequence[Candidate]) -> list[float]:
        return [float(len(c.text)) for c in candidates]

    client = ttscale.wrap(
        openai.OpenAI(base_url=upstream.base_url, api_key="k"),
        strategy=BestOfN(samples=4),
        verifier=longest,
        budget=max_samples(6),
    )
    first = client.chat.completions.create(model="loopback", messages=messages())
    assert first.choices[0].message.content == "so \\boxed{42}"
    assert first.model_extra["ttscale"]["samples_used"] == 4
    second = client.chat.completions.create(model="loopback", messages=messages())
    assert second.model_extra["ttscale"]["samples_used"] == 2  # the budget spans calls
    with pytest.raises(BudgetExhausted):
        client.chat.completions.create(model="loopback", messages=messages())


def test_a_shared_budget_spans_every_models_calls(upstream: LoopbackServer) -> None:
    client = ttscale.wrap(
        openai.OpenAI(base_url=upstream.base_url, api_key="k"),
        strategy="majority",
        samples=4,
        budget=max_samples(6),
    )
    first = client.chat.completions.create(model="first", messages=messages())
    second = client.chat.completions.create(model="second", messages=messages())
    client.close()
    assert first.model_extra["ttscale"]["samples_used"] == 4
    assert second.model_extra["ttscale"]["samples_used"] == 2  # what the first model left
    assert upstream.delivered_usage()["samples"] == 6


def wait_for_a_request(server: LoopbackServer) -> None:
    deadline = time.monotonic() + 30
    while server.request_count < 1:
        assert time.monotonic() < deadline, "no request reached the server"
        time.sleep(0.01)


def test_closing_waits_for_the_draws_of_a_cancelled_call() -> None:
    async def main(server: LoopbackServer) -> None:
        client = ttscale.wrap(
            openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0),
            strategy="majority",
            samples=4,
        )
        call = asyncio.create_task(
            client.chat.completions.create(model="loopback", messages=messages())
        )
        await asyncio.to_thread(wait_for_a_request, server)  # the draw is at the server
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # The call is gone, its request is not: closing waits for it rather than cutting it off.
        await client.close()

    with LoopbackServer(answers=respond, latency=0.5) as slow:
        asyncio.run(main(slow))
        records = [r for r in slow.records if r.body]
    assert len(records) == 1
    assert records[0].delivered and records[0].choices == 4


def test_wrapped_async_client_and_streaming(upstream: LoopbackServer) -> None:
    async def main() -> None:
        client = ttscale.wrap(
            openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k"),
            strategy="majority",
            samples=4,
        )
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(model="loopback", messages=messages(str(i)))
                for i in range(5)
            )
        )
        assert all(r.model_extra["ttscale"]["samples_used"] == 4 for r in replies)
        stream = await client.chat.completions.create(
            model="loopback",
            messages=messages(),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "\\boxed{42}"
        assert chunks[-1].usage is not None
        with pytest.raises(ttscale.RequestError, match="samples"):
            await client.chat.completions.create(
                model="loopback", messages=messages(), extra_body={"ttscale": {"samples": 0}}
            )
        await client.close()

    asyncio.run(main())


def test_wrapped_client_reports_what_the_proxy_reports(upstream: LoopbackServer) -> None:
    body = {"ttscale": {"strategy": "majority", "samples": 4}}
    wrapped = ttscale.wrap(openai.OpenAI(base_url=upstream.base_url, api_key="k"))
    direct = wrapped.chat.completions.create(model="loopback", messages=messages(), extra_body=body)
    with BackgroundProxy(ProxyConfig(base_url=upstream.base_url)) as proxy:
        via = openai.OpenAI(base_url=proxy.base_url, api_key="k").chat.completions.create(
            model="loopback", messages=messages(), extra_body=body
        )
    assert set(direct.model_extra["ttscale"]) == set(via.model_extra["ttscale"])
    assert direct.model_extra["ttscale"]["votes"] == via.model_extra["ttscale"]["votes"]


def test_wrap_rejects_what_is_not_a_client() -> None:
    with pytest.raises(ConfigError, match="wrap"):
        ttscale.wrap(object())  # type: ignore[arg-type]
