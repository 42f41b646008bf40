"""``ttscale serve``: the unmodified openai client against the proxy before the loopback server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx2
import openai
import pytest

from ttscale.proxy import (
    BackgroundProxy,
    ProxyConfig,
    endpoint_key_path,
    load_presets,
    parse_preset_option,
)
from ttscale.scaling import RequestLimits, ScaleSettings
from ttscale.testing.server import Fault, LoopbackServer, ScriptRequest

QUESTION = "What is 6 * 7?"
VOTES = ["\\boxed{42}", "\\boxed{41}", "so \\boxed{42}", "\\boxed{13}"]


def respond(request: ScriptRequest) -> str:
    if request.prompt.startswith("Rate how good"):
        # The judge: rates answers that say 42 highly.
        return (
            "Looks right. Score: 9" if "42" in request.prompt.split("Response:")[1] else "Score: 2"
        )
    if request.prompt == QUESTION:
        return VOTES[request.index % len(VOTES)]
    return "The answer is 42."


def messages(text: str = QUESTION) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


PRESETS = {
    "maj8": ScaleSettings(strategy="majority", samples=8, model="loopback"),
    "judge4": ScaleSettings(strategy="best_of_n", samples=4, verifier="judge"),
}


@pytest.fixture
def upstream() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=respond) as server:
        yield server


def start(upstream: LoopbackServer, **overrides: Any) -> BackgroundProxy:
    options: dict[str, Any] = {
        "base_url": upstream.base_url,
        "model": "loopback",
        "presets": PRESETS,
        "keep_alive_s": 0.05,
    }
    options.update(overrides)
    return BackgroundProxy(ProxyConfig(**options)).start()


@pytest.fixture
def proxy(upstream: LoopbackServer) -> Iterator[BackgroundProxy]:
    running = start(upstream)
    yield running
    running.stop()


def client(proxy: BackgroundProxy, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key="client-key", max_retries=0, **options)


def meta(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = response.model_extra["ttscale"]
    return data


def test_preset_majority_with_n_as_k_and_exact_usage(
    proxy: BackgroundProxy, upstream: LoopbackServer
) -> None:
    response = client(proxy).chat.completions.create(model="maj8", messages=messages(), n=2)
    assert [c.message.content for c in response.choices] == ["\\boxed{42}", "\\boxed{41}"]
    info = meta(response)
    assert info["strategy"] == "majority"
    assert info["samples_used"] == 8 and info["k"] == 2
    assert info["votes"] == {"42": 4, "41": 2, "13": 2}
    served = upstream.delivered_usage()
    assert served["samples"] == 8
    assert response.usage is not None
    assert response.usage.prompt_tokens == served["prompt_tokens"]
    assert response.usage.completion_tokens == served["completion_tokens"]
    assert info["usage"]["sampling"]["samples"] == 8
    # The upstream got the upstream model's name, not the preset's.
    assert {r.body["model"] for r in upstream.records if r.body} == {"loopback"}


def test_usage_counts_the_judges_tokens(proxy: BackgroundProxy, upstream: LoopbackServer) -> None:
    response = client(proxy).chat.completions.create(model="judge4", messages=messages())
    info = meta(response)
    assert response.choices[0].message.content in ("\\boxed{42}", "so \\boxed{42}")
    assert [s["value"] for s in info["scores"]] == [0.9, 0.2, 0.9, 0.2]
    served = upstream.delivered_usage()
    # 4 samples plus one judge call per candidate, all in the usage the client sees.
    assert served["samples"] == 8
    assert response.usage is not None
    assert response.usage.total_tokens == served["prompt_tokens"] + served["completion_tokens"]
    assert info["usage"]["verifier"]["requests"] == 4
    assert info["usage"]["verifier"]["total_tokens"] > 0


def test_extra_body_headers_and_preset_precedence(
    proxy: BackgroundProxy, upstream: LoopbackServer
) -> None:
    api = client(proxy)
    body = {"ttscale": {"samples": 6}}
    headers = {"X-TTScale-Samples": "4", "X-TTScale-Strategy": "majority"}
    # body beats header beats preset
    both = api.chat.completions.create(
        model="maj8", messages=messages(), extra_body=body, extra_headers=headers
    )
    assert meta(both)["samples_used"] == 6
    header_only = api.chat.completions.create(
        model="maj8", messages=messages(), extra_headers=headers
    )
    assert meta(header_only)["samples_used"] == 4
    preset_only = api.chat.completions.create(model="maj8", messages=messages())
    assert meta(preset_only)["samples_used"] == 8
    # headers alone scale a plain upstream model; options travel as headers too
    plain = api.chat.completions.create(
        model="loopback",
        messages=messages(),
        extra_headers={"X-TTScale-Strategy": "ahead_by_k", "X-TTScale-Margin": "2"},
    )
    assert meta(plain)["strategy"] == "ahead_by_k"
    assert meta(plain)["stop"] == "ahead_by_k"


def test_async_client_extra_body_and_other_params_go_upstream(
    proxy: BackgroundProxy, upstream: LoopbackServer
) -> None:
    asyncio.run(_async_client(proxy, upstream))


async def _async_client(proxy: BackgroundProxy, upstream: LoopbackServer) -> None:
    api = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="k", max_retries=0)
    response = await api.chat.completions.create(
        model="loopback",
        messages=messages(),
        temperature=0.7,
        seed=11,
        extra_body={
            "ttscale": {"strategy": "majority", "samples": 5, "budget": {"tokens": 10_000}},
            "top_k": 20,
            "min_p": 0.05,
        },
    )
    assert meta(response)["samples_used"] == 5
    bodies = [r.body for r in upstream.records if r.body]
    assert all(b["top_k"] == 20 and b["min_p"] == 0.05 for b in bodies)
    assert all(b["temperature"] == 0.7 for b in bodies)
    assert "ttscale" not in bodies[0]
    # Concurrent requests never share per-request state: each gets its own votes and usage.
    results = await asyncio.gather(
        *(
            api.chat.completions.create(
                model="loopback",
                messages=messages(f"q{i}"),
                extra_body={"ttscale": {"samples": 2 + i}},
            )
            for i in range(6)
        )
    )
    assert [meta(r)["samples_used"] for r in results] == [2, 3, 4, 5, 6, 7]
    assert [meta(r)["votes"] for r in results] == [{"42": 2 + i} for i in range(6)]
    await api.close()


def test_pass_through_is_untouched_and_streams_tokens(
    proxy: BackgroundProxy, upstream: LoopbackServer
) -> None:
    api = client(proxy)
    sent = {"top_k": 5, "repetition_penalty": 1.1}
    direct = openai.OpenAI(base_url=upstream.base_url, api_key="k").chat.completions.create(
        model="loopback", messages=messages(), seed=3, max_tokens=100, extra_body=sent
    )
    via = api.chat.completions.create(
        model="loopback", messages=messages(), seed=3, max_tokens=100, extra_body=sent
    )
    assert via.choices[0].message.content == VOTES[1]  # the upstream's next answer, as sent
    assert direct.choices[0].message.content == VOTES[0]
    assert "ttscale" not in (via.model_extra or {})
    bodies = [r.body for r in upstream.records if r.body]
    assert bodies[0] == bodies[1]  # exactly what the client sent
    stream = api.chat.completions.create(
        model="loopback",
        messages=messages(),
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices]
    assert len(pieces) > 3  # token by token, as the upstream streamed it
    assert "".join(p or "" for p in pieces) == VOTES[2]
    legacy = api.completions.create(model="loopback", prompt="Say hi", max_tokens=5)
    assert legacy.choices[0].text


def test_scaled_stream_keep_alive_then_answer_usage_and_done(upstream: LoopbackServer) -> None:
    with LoopbackServer(answers=respond, latency=0.3) as slow:
        running = start(slow)
        try:
            with httpx2.stream(
                "POST",
                running.base_url + "/chat/completions",
                json={
                    "model": "maj8",
                    "messages": messages(),
                    "n": 2,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
                timeout=30,
            ) as response:
                assert response.status_code == 200
                lines = [line for line in response.iter_lines() if line]
        finally:
            running.stop()
    assert lines[0].startswith(":")
    assert any(line == ": keep-alive" for line in lines)
    events = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    by_choice: dict[int, str] = {}
    finishes = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            by_choice[choice["index"]] = by_choice.get(choice["index"], "") + (
                choice["delta"].get("content") or ""
            )
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    assert by_choice == {0: "\\boxed{42}", 1: "\\boxed{41}"}
    assert finishes == {0: "stop", 1: "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert chunks[-1]["ttscale"]["samples_used"] == 8


def test_openai_streaming_client_reads_a_scaled_answer(proxy: BackgroundProxy) -> None:
    stream = client(proxy).chat.completions.create(
        model="maj8", messages=messages(), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "\\boxed{42}"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completions_endpoint_with_a_preset(
    proxy: BackgroundProxy, upstream: LoopbackServer
) -> None:
    response = client(proxy).completions.create(model="maj8", prompt=QUESTION, n=1)
    assert response.choices[0].text == "\\boxed{42}"
    assert response.object == "text_completion"
    assert all(r.path == "/v1/completions" for r in upstream.records if r.body)


def test_budget_stops_drawing_and_keeps_what_was_paid_for(proxy: BackgroundProxy) -> None:
    response = client(proxy).chat.completions.create(
        model="loopback",
        messages=messages(),
        extra_body={"ttscale": {"strategy": "adaptive", "samples": 40, "budget": {"samples": 3}}},
    )
    info = meta(response)
    assert info["samples_used"] == 3
    assert info["budget"]["spent"]["samples"] == 3
    assert response.choices[0].message.content


def test_a_tokens_budget_refuses_the_judges_calls(
    proxy: BackgroundProxy, upstream: LoopbackServer
) -> None:
    # The samples' one request goes out with nothing spent; it spends past the limit, so every
    # judge call after it is refused, and the server sees none of them.
    response = client(proxy).chat.completions.create(
        model="loopback",
        messages=messages(),
        extra_body={
            "ttscale": {
                "strategy": "best_of_n",
                "samples": 4,
                "verifier": "judge",
                "budget": {"tokens": 1},
            }
        },
    )
    info = meta(response)
    judged = [r for r in upstream.records if r.body and "Rate how good" in json.dumps(r.body)]
    assert judged == []
    served = upstream.delivered_usage()
    assert served["requests"] == 1 and served["samples"] == 4
    assert info["usage"]["verifier"]["requests"] == 0
    assert (
        info["budget"]["spent"]["total_tokens"]
        == served["prompt_tokens"] + served["completion_tokens"]
    )
    assert response.usage is not None
    assert response.usage.total_tokens == info["budget"]["spent"]["total_tokens"]
    assert response.choices[0].message.content in VOTES
    # Without the limit the same request judges all four.
    upstream.reset_log()
    judged_in_full = client(proxy).chat.completions.create(
        model="loopback",
        messages=messages(),
        extra_body={"ttscale": {"strategy": "best_of_n", "samples": 4, "verifier": "judge"}},
    )
    assert meta(judged_in_full)["usage"]["verifier"]["requests"] == 4


def test_samplers_share_the_upstream_client_and_what_it_learnt_of_n() -> None:
    with LoopbackServer(answers=respond, n_support="reject") as upstream:
        running = start(upstream)
        try:
            api = client(running)
            for model in ("first", "second"):
                api.chat.completions.create(
                    model=model,
                    messages=messages(),
                    extra_body={"ttscale": {"strategy": "majority", "samples": 4}},
                )
            asked_n = [
                (r.body["model"], r.status) for r in upstream.records if r.body and "n" in r.body
            ]
            singles = [r.body["model"] for r in upstream.records if r.body and "n" not in r.body]
            upstream.reset_log()
            # A pass-through, then a one-sample scaled request: one after the other, the second
            # reuses the kept-alive connection of the first when both go through one client.
            api.chat.completions.create(model="third", messages=messages())
            api.chat.completions.create(
                model="third",
                messages=messages(),
                extra_body={"ttscale": {"strategy": "majority", "samples": 1}},
            )
            connections = {r.connection for r in upstream.records if r.body}
        finally:
            running.stop()
    # Only the first model paid for learning that n > 1 is rejected; the second drew singles.
    assert asked_n == [("first", 400)]
    assert sorted(singles) == ["first"] * 4 + ["second"] * 4
    assert len(connections) == 1


def bad(param: str, **fields: Any) -> tuple[dict[str, Any], str]:
    return {"model": "maj8", "messages": messages(), **fields}, param


BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    bad("messages", messages="hi"),
    bad("messages[0].role", messages=[{"content": "hi"}]),
    bad("n", n="two"),
    bad("temperature", temperature="hot"),
    bad("model", model=7),
    bad("ttscale.strategy", ttscale={"strategy": "nope"}),
    bad("ttscale.verifier", ttscale={"verifier": "nope"}),
    bad("ttscale.bogus", ttscale={"bogus": 1}),
    bad("ttscale.samples", ttscale={"samples": 1_000_000}),
    bad("ttscale.samples", ttscale={"samples": 0}),
    bad("ttscale.budget.money", ttscale={"budget": {"money": 1}}),
    bad("max_tokens", max_tokens=10**7),
    bad("n", n=3, ttscale={"k": 2}),
    bad("ttscale", ttscale="majority"),
    bad("ttscale", model="loopback", ttscale={"strategy": "best_of_n"}),
    bad("logprobs", logprobs=1),
    bad("top_logprobs", top_logprobs=5),
    bad("stream_options", stream_options=0),
    bad("stream_options.include_usage", stream=True, stream_options={"include_usage": "no"}),
]


@pytest.mark.parametrize(("body", "param"), BAD_REQUESTS)
def test_bad_requests_get_a_400_naming_the_field(
    proxy: BackgroundProxy, body: dict[str, Any], param: str
) -> None:
    response = httpx2.post(proxy.base_url + "/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    # The server keeps serving.
    ok = client(proxy).chat.completions.create(model="maj8", messages=messages())
    assert ok.choices


def elsewhere_spec(base_url: str, **model: Any) -> dict[str, Any]:
    """An inline graph whose one model lives on ``base_url``."""
    return {
        "nodes": [{"id": "answer", "model": "big"}],
        "models": {"big": {"name": "loopback", "base_url": base_url, **model}},
    }


def test_endpoint_key_path_finds_servers_and_keys_anywhere() -> None:
    spec = elsewhere_spec("http://elsewhere/v1")
    assert endpoint_key_path(ScaleSettings(strategy="graph", options={"spec": spec})) == (
        "spec", "models", "big", "base_url",
    )  # fmt: skip
    keyed = {"nodes": [{"id": "a"}], "models": {"big": {"api_key": "sk-x"}}}
    assert endpoint_key_path(ScaleSettings(options={"spec": keyed})) == (
        "spec", "models", "big", "api_key",
    )  # fmt: skip
    served = ScaleSettings(verifier="reward_model", verifier_options={"base_url": "http://rm"})
    assert endpoint_key_path(served) == ("verifier", "base_url")
    nested = ScaleSettings(
        verifier="cascade", verifier_options={"stages": [{"name": "x"}, {"api_key_env": "HOME"}]}
    )
    assert endpoint_key_path(nested) == ("verifier", "stages[1]", "api_key_env")
    # A spec without servers, or with an explicit null, names none.
    plain = {"nodes": [{"id": "a", "model": "big"}], "models": {"big": {"base_url": None}}}
    assert endpoint_key_path(ScaleSettings(strategy="graph", options={"spec": plain})) is None
    assert endpoint_key_path(PRESETS["judge4"]) is None


def test_requests_may_not_point_the_proxy_at_other_servers(upstream: LoopbackServer) -> None:
    with LoopbackServer(answers=respond) as elsewhere:
        graph = {"strategy": "graph", "spec": elsewhere_spec(elsewhere.base_url)}
        cases = [
            ({"ttscale": graph}, {}, "ttscale.spec.models.big.base_url"),
            (
                {"ttscale": {"strategy": "graph", "spec": elsewhere_spec("", api_key="sk-1")}},
                {},
                "ttscale.spec.models.big.api_key",
            ),
            (
                {"ttscale": {"verifier": {"name": "reward_model", "base_url": elsewhere.base_url}}},
                {},
                "ttscale.verifier.base_url",
            ),
            (
                {},
                {"X-TTScale-Strategy": "graph", "X-TTScale-Spec": json.dumps(graph["spec"])},
                "X-TTScale-Spec.models.big.base_url",
            ),
        ]
        running = start(upstream)
        try:
            for extra, headers, param in cases:
                refused = httpx2.post(
                    running.base_url + "/chat/completions",
                    json={"model": "maj8", "messages": messages(), **extra},
                    headers=headers,
                    timeout=30,
                )
                assert refused.status_code == 400, refused.text
                error = refused.json()["error"]
                assert error["param"] == param and error["type"] == "invalid_request_error"
                assert "server or a key" in error["message"]
        finally:
            running.stop()
        assert elsewhere.request_count == 0 and upstream.request_count == 0
        # The operator may allow it: then the graph's model is asked on its own server.
        running = start(upstream, allow_request_endpoints=True)
        try:
            reply = client(running).chat.completions.create(
                model="loopback", messages=messages(), extra_body={"ttscale": graph}
            )
        finally:
            running.stop()
        assert meta(reply)["strategy"] == "graph"
        assert elsewhere.delivered_usage()["samples"] == 1
        assert upstream.request_count == 0


def test_malformed_json_oversized_body_and_unknown_path(upstream: LoopbackServer) -> None:
    running = start(upstream, max_body_bytes=2000)
    try:
        url = running.base_url + "/chat/completions"
        broken = httpx2.post(url, content=b'{"model": "maj8", "messages": [', timeout=30)
        assert broken.status_code == 400
        assert "not valid JSON" in broken.json()["error"]["message"]
        big = {"model": "maj8", "messages": messages("x" * 5000)}
        too_big = httpx2.post(url, json=big, timeout=30)
        assert too_big.status_code == 413
        assert "2000 bytes" in too_big.json()["error"]["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit still holds
            yield json.dumps(big).encode()

        chunked = httpx2.post(url, content=chunks(), timeout=30)
        assert chunked.status_code == 413
        ok = httpx2.post(url, json={"model": "maj8", "messages": messages()}, timeout=30)
        assert ok.status_code == 200
        # Unknown paths and methods get errors in OpenAI's shape too.
        nowhere = httpx2.post(running.base_url + "/embeddings", json={}, timeout=30)
        assert nowhere.status_code == 404
        assert "/v1/embeddings" in nowhere.json()["error"]["message"]
        wrong_method = httpx2.get(url, timeout=30)
        assert wrong_method.status_code == 405
        assert "GET" in wrong_method.json()["error"]["message"]
    finally:
        running.stop()


def test_pass_through_relays_upstream_errors_as_sent() -> None:
    # The proxy does not retry a pass-through the upstream answered: the client sees the 429 or
    # 500 (and its own client's retries decide), and the upstream is asked once.
    faults = (Fault("rate_limit", on_requests=frozenset({0}), retry_after=7.0),)
    with LoopbackServer(answers=respond, faults=faults) as limited:
        running = start(limited)
        try:
            url = running.base_url + "/chat/completions"
            refused = httpx2.post(url, json={"model": "loopback", "messages": messages()})
            answered = httpx2.post(url, json={"model": "loopback", "messages": messages()})
        finally:
            running.stop()
        asked = [r for r in limited.records if r.body]
    assert refused.status_code == 429
    assert "injected by the loopback server" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "7"  # for the client's own retries
    assert answered.status_code == 200
    assert [r.status for r in asked] == [429, 200]


def test_proxy_key_and_the_upstream_key_never_echoed(
    upstream: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-upstream-secret-123"
    with LoopbackServer(answers=respond, faults=(Fault("server_error", every=1),)) as failing:
        running = start(failing, proxy_key="proxy-key", api_key=secret, max_retries=0)
        try:
            for key in (None, "wrong"):
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                refused = httpx2.post(
                    running.base_url + "/chat/completions",
                    json={"model": "maj8", "messages": messages()},
                    headers=headers,
                    timeout=30,
                )
                assert refused.status_code == 401
                assert refused.json()["error"]["type"] == "authentication_error"
            assert httpx2.get(running.base_url + "/models").status_code == 401
            authed = openai.OpenAI(base_url=running.base_url, api_key="proxy-key", max_retries=0)
            with pytest.raises(openai.APIStatusError) as failed:
                authed.chat.completions.create(model="maj8", messages=messages())
            assert failed.value.status_code == 502
            with pytest.raises(openai.InternalServerError) as relayed:
                authed.chat.completions.create(model="loopback", messages=messages())
            assert relayed.value.status_code == 500
            texts = [str(failed.value.body), str(relayed.value.body), caplog.text]
            assert all(secret not in text for text in texts)
            assert secret not in repr(running.proxy.config)
        finally:
            running.stop()


def test_saturated_proxy_answers_429_and_recovers() -> None:
    with LoopbackServer(answers=respond, latency=0.5) as slow:
        running = start(slow, max_concurrent_requests=2)
        try:

            async def burst() -> list[int]:
                async with httpx2.AsyncClient(timeout=30) as http:
                    replies = await asyncio.gather(
                        *(
                            http.post(
                                running.base_url + "/chat/completions",
                                json={"model": "maj8", "messages": messages()},
                            )
                            for _ in range(6)
                        )
                    )
                return sorted(r.status_code for r in replies)

            statuses = asyncio.run(burst())
            assert statuses.count(200) >= 2 and statuses.count(429) >= 1
            assert set(statuses) <= {200, 429}
            again = httpx2.post(
                running.base_url + "/chat/completions",
                json={"model": "maj8", "messages": messages()},
                timeout=30,
            )
            assert again.status_code == 200
        finally:
            running.stop()


# The upstream holds the first two generation requests for ten minutes (streams the test ends by
# hanging up) and the third for FINISHING seconds (a stream that ends by itself).
FINISHING = 2.0
SLOW_UPSTREAM = (
    Fault("slow", on_requests=frozenset({0, 1}), delay=600.0),
    Fault("slow", on_requests=frozenset({2}), delay=FINISHING),
)


def root(running: BackgroundProxy) -> str:
    return running.base_url.removesuffix("/v1")


def wait_in_flight(running: BackgroundProxy, expected: int) -> None:
    deadline = time.monotonic() + 30
    while (now := httpx2.get(root(running) + "/health").json()["in_flight"]) != expected:
        assert time.monotonic() < deadline, f"in flight: {now}, expected {expected}"
        time.sleep(0.02)


def open_stream(
    stack: contextlib.ExitStack, http: httpx2.Client, url: str, body: dict[str, Any]
) -> tuple[contextlib.ExitStack, Iterator[str]]:
    """A stream read up to its first SSE comment: under way, not finished; close() hangs up."""
    own = stack.enter_context(contextlib.ExitStack())
    response = own.enter_context(http.stream("POST", url, json=body))
    assert response.status_code == 200
    lines = response.iter_lines()
    assert next(lines).startswith(":")  # the (scaling) proxy's first keep-alive comment
    return own, lines


def streams_hold_their_slots(front: BackgroundProxy, inner: BackgroundProxy | None) -> str:
    """Two held streams fill ``front`` (limit 2); hanging up frees a slot; returns /metrics."""
    url = front.base_url + "/chat/completions"
    body = {"model": "maj8", "messages": messages(), "stream": True}
    with httpx2.Client(timeout=30) as http, contextlib.ExitStack() as stack:
        # Each stream's line iterator is kept: dropping one closes its connection (a hang-up).
        first, first_lines = open_stream(stack, http, url, body)
        second, second_lines = open_stream(stack, http, url, body)
        # Both are drawing from the upstream: full, for streams and plain requests alike.
        for extra in (body, {**body, "stream": False}):
            refused = http.post(url, json=extra)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["type"] == "rate_limit_exceeded"
        first.close()  # the client goes away mid-stream: its slot comes back
        wait_in_flight(front, 1)
        if inner is not None:
            # The front closed its upstream stream too: the inner proxy stopped sampling.
            wait_in_flight(inner, 1)
        _, lines = open_stream(stack, http, url, body)  # held FINISHING seconds upstream
        assert [line for line in lines if line][-1] == "data: [DONE]"
        wait_in_flight(front, 1)  # that stream's slot is back; the second still holds its own
        second.close()
        wait_in_flight(front, 0)
        del first_lines, second_lines
    return httpx2.get(root(front) + "/metrics").text


def check_stream_metrics(metrics: str, mode: str) -> None:
    assert f'mode="{mode}",status="200"}} 1' in metrics
    assert f'mode="{mode}",status="499"}} 2' in metrics  # the two the client left
    assert 'ttscale_rejected_total{reason="busy"} 2' in metrics
    assert "ttscale_request_latency_seconds_count 3" in metrics
    # Latency runs to a stream's end, so the finished one brings the upstream's time.
    total = float(metrics.split("ttscale_request_latency_seconds_sum ")[1].split()[0])
    assert total >= FINISHING


def test_scaled_streams_hold_their_slot_until_they_end() -> None:
    with LoopbackServer(answers=respond, faults=SLOW_UPSTREAM) as slow:
        # The draws of the streams left hang for ten minutes: closing waits for them only briefly.
        running = start(slow, max_concurrent_requests=2, drain_timeout_s=0.2)
        try:
            metrics = streams_hold_their_slots(running, None)
        finally:
            running.stop()
        # Sampling stopped for the clients that left: only the finished stream's draw arrived.
        assert slow.delivered_usage()["samples"] == 8
    check_stream_metrics(metrics, "scaled")


def test_pass_through_streams_hold_their_slot_until_they_end() -> None:
    with LoopbackServer(answers=respond, faults=SLOW_UPSTREAM) as slow:
        # The upstream is a second proxy scaling "maj8": its stream stays open, sending comments,
        # while it samples, as a slow model streams its tokens. The front proxy has no presets
        # and passes every request through.
        inner = start(slow, drain_timeout_s=0.2)
        front = BackgroundProxy(
            ProxyConfig(base_url=inner.base_url, max_concurrent_requests=2)
        ).start()
        try:
            metrics = streams_hold_their_slots(front, inner)
            wait_in_flight(inner, 0)
            # Every relayed stream, finished or left, gave its upstream connection pool back.
            deadline = time.monotonic() + 30
            while any(front.proxy.upstream_clients.in_flight):
                assert time.monotonic() < deadline, front.proxy.upstream_clients.in_flight
                time.sleep(0.02)
        finally:
            front.stop()
            inner.stop()
        assert slow.delivered_usage()["samples"] == 8
    check_stream_metrics(metrics, "passthrough")


def metric(metrics: str, name: str) -> int:
    return int(metrics.split(f"\n{name} ", 1)[1].split()[0])


def test_a_stream_its_client_left_counts_its_draws_when_they_end() -> None:
    with LoopbackServer(answers=respond, latency=1.0) as slow:
        running = start(slow)
        try:
            url = running.base_url + "/chat/completions"
            body = {"model": "judge4", "messages": messages(), "stream": True}
            with httpx2.Client(timeout=30) as http, contextlib.ExitStack() as stack:
                own, lines = open_stream(stack, http, url, body)
                deadline = time.monotonic() + 30
                while slow.request_count < 1:  # the samples' draw is at the upstream
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                own.close()  # the client leaves before the draw has come back
                del lines
            wait_in_flight(running, 0)
            assert slow.delivered_usage()["samples"] == 0  # nothing has come back yet
        finally:
            # Stopping waits for the draw in flight rather than cutting it off.
            running.stop()
        metrics = running.proxy.metrics
        served = slow.delivered_usage()
    # The draw came back after the client had gone; no judge call followed it.
    assert served["requests"] == 1 and served["samples"] == 4
    assert metrics.samples == served["samples"]
    assert metrics.tokens == {
        "prompt": served["prompt_tokens"],
        "completion": served["completion_tokens"],
    }


def test_a_failed_request_counts_what_it_spent() -> None:
    # 20 samples are two requests (16 and 4 choices, at once); the first to arrive fails, the
    # other's samples arrive: a 502, and what arrived is in the metrics.
    with LoopbackServer(
        answers=respond, faults=(Fault("server_error", on_requests=frozenset({0})),)
    ) as failing:
        running = start(failing, max_retries=0)
        try:
            response = httpx2.post(
                running.base_url + "/chat/completions",
                json={"model": "loopback", "messages": messages(), "ttscale": {"samples": 20}},
                timeout=30,
            )
            text = httpx2.get(root(running) + "/metrics", timeout=30).text
        finally:
            running.stop()
        served = failing.delivered_usage()
    assert response.status_code == 502, response.text
    assert served["requests"] == 1 and served["samples"] in (4, 16)
    assert metric(text, "ttscale_samples_total") == served["samples"]
    assert metric(text, 'ttscale_tokens_total{kind="prompt"}') == served["prompt_tokens"]
    assert metric(text, 'ttscale_tokens_total{kind="completion"}') == served["completion_tokens"]


def test_models_health_and_metrics(proxy: BackgroundProxy) -> None:
    api = client(proxy)
    api.chat.completions.create(model="maj8", messages=messages())
    api.chat.completions.create(model="loopback", messages=messages())
    ids = [model.id for model in api.models.list().data]
    assert ids[:2] == ["judge4", "maj8"] and "loopback" in ids
    root = proxy.base_url.removesuffix("/v1")
    assert httpx2.get(root + "/health").json()["status"] == "ok"
    text = httpx2.get(root + "/metrics").text
    assert 'ttscale_requests_total{endpoint="chat",mode="scaled",status="200"} 1' in text
    assert 'ttscale_requests_total{endpoint="chat",mode="passthrough",status="200"} 1' in text
    assert "ttscale_samples_total 9" in text
    assert "ttscale_request_latency_seconds_count 2" in text


class Served(NamedTuple):
    """What a client got from one request: its kind, text, samples and the usage it was told."""

    kind: str
    text: str
    samples: int
    prompt_tokens: int
    completion_tokens: int


async def one_request(api: openai.AsyncOpenAI, kind: str, number: int, request: int) -> Served:
    scaled = kind.startswith("scaled")
    options: dict[str, Any] = {
        "model": ("maj8" if request % 2 else "loopback") if scaled else "loopback",
        "messages": messages(QUESTION if number % 2 else f"c{number}"),
    }
    if scaled:
        options["extra_body"] = {"ttscale": {"samples": 1 + request % 4}}
    if not kind.endswith("stream"):
        reply = await api.chat.completions.create(**options)
        assert reply.usage is not None
        samples = meta(reply)["samples_used"] if scaled else len(reply.choices)
        return Served(
            kind,
            reply.choices[0].message.content or "",
            samples,
            reply.usage.prompt_tokens,
            reply.usage.completion_tokens,
        )
    stream = await api.chat.completions.create(
        **options, stream=True, stream_options={"include_usage": True}
    )
    text, finished, last = "", 0, None
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.index == 0:
                text += choice.delta.content or ""
            finished += choice.finish_reason is not None
        last = chunk
    assert last is not None and last.usage is not None  # the usage chunk ends every stream
    samples = (last.model_extra or {})["ttscale"]["samples_used"] if scaled else finished
    return Served(kind, text, samples, last.usage.prompt_tokens, last.usage.completion_tokens)


KINDS = ("scaled", "passthrough", "scaled stream", "passthrough stream")


def test_load_64_clients_20_requests_each_usage_exact(upstream: LoopbackServer) -> None:
    running = start(upstream)
    try:

        async def one_client(api: openai.AsyncOpenAI, number: int) -> list[Served]:
            # Every client sends every kind, shifted by its number, so all kinds run at once.
            return [
                await one_request(api, KINDS[(number + request) % 4], number, request)
                for request in range(20)
            ]

        async def everyone() -> list[Served]:
            api = openai.AsyncOpenAI(base_url=running.base_url, api_key="k", max_retries=0)
            try:
                groups = await asyncio.gather(*(one_client(api, n) for n in range(64)))
            finally:
                await api.close()
            return [reply for group in groups for reply in group]

        replies = asyncio.run(everyone())
        metrics = httpx2.get(root(running) + "/metrics").text
    finally:
        running.stop()
    assert len(replies) == 64 * 20
    assert {kind: sum(r.kind == kind for r in replies) for kind in KINDS} == dict.fromkeys(
        KINDS, 64 * 5
    )
    assert all(r.text for r in replies)
    served = upstream.delivered_usage()
    generated = upstream.generated_usage()
    assert served == generated  # nothing generated was lost on the way
    assert sum(r.samples for r in replies) == served["samples"]
    assert sum(r.prompt_tokens for r in replies) == served["prompt_tokens"]
    assert sum(r.completion_tokens for r in replies) == served["completion_tokens"]
    # Every request was answered (no 429 at this load, no error), and none is left in flight.
    assert 'mode="scaled",status="200"} 640' in metrics
    assert 'mode="passthrough",status="200"} 640' in metrics
    assert "ttscale_request_latency_seconds_count 1280" in metrics
    assert "ttscale_in_flight 0" in metrics


def test_presets_file_and_command_line_presets(tmp_path: Path) -> None:
    good = tmp_path / "presets.toml"
    good.write_text(
        '[presets.maj16]\nstrategy = "majority"\nsamples = 16\nmodel = "qwen"\n'
        '[presets.bom]\nstrategy = "best_of_majority"\nsamples = 8\nk = 2\n'
        'verifier = { name = "judge", mode = "yes_no" }\nbudget = { tokens = 5000 }\n'
    )
    presets = load_presets(good)
    assert presets["maj16"] == ScaleSettings(strategy="majority", samples=16, model="qwen")
    assert presets["bom"].verifier_options == {"mode": "yes_no"}
    bad = tmp_path / "bad.toml"
    bad.write_text('[presets.x]\nsamples = "many"\n')
    with pytest.raises(Exception, match=r"bad.toml.*samples") as error:
        load_presets(bad)
    assert "presets.x.samples" in str(error.value)
    name, settings = parse_preset_option("maj4=strategy=majority,samples=4,weighted=true")
    assert name == "maj4" and settings.samples == 4 and settings.options == {"weighted": True}


def test_settings_over_keeps_options_with_their_strategy() -> None:
    graph = ScaleSettings(strategy="graph", samples=3, options={"spec": "/srv/vote.json"})
    # Another strategy brings only its own options; what is not an option still layers.
    other = ScaleSettings(strategy="majority", options={"weighted": True}).over(graph)
    assert other.strategy == "majority" and other.options == {"weighted": True}
    assert other.samples == 3
    # The same strategy, or none named, refines the layer below.
    same = ScaleSettings(strategy="graph", options={"budget_units": 2}).over(graph)
    assert same.options == {"spec": "/srv/vote.json", "budget_units": 2}
    unnamed = ScaleSettings(options={"budget_units": 2}).over(graph)
    assert unnamed.strategy == "graph" and unnamed.options == same.options
    # Options said without a strategy apply to whichever strategy runs.
    loose = ScaleSettings(options={"alpha": 0.01})
    assert ScaleSettings(strategy="adaptive").over(loose).options == {"alpha": 0.01}
    # Verifier options behave alike.
    judged = ScaleSettings(verifier="judge", verifier_options={"mode": "yes_no"})
    assert ScaleSettings(verifier="math").over(judged).verifier_options == {}
    assert ScaleSettings(verifier="judge").over(judged).verifier_options == {"mode": "yes_no"}


def test_request_limits_reject_bad_caps() -> None:
    with pytest.raises(ValueError, match="max_samples"):
        RequestLimits(max_samples=0)


def test_ttscale_serve_command(upstream: LoopbackServer, tmp_path: Path) -> None:
    presets = tmp_path / "presets.toml"
    presets.write_text('[presets.maj3]\nstrategy = "majority"\nsamples = 3\n')
    env = {**os.environ, "PROXY_KEY": "let-me-in", "UPSTREAM_KEY": "sk-hidden"}
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "ttscale.cli", "serve",
        "--base-url", upstream.base_url, "--model", "loopback", "--port", str(port),
        "--presets", str(presets), "--preset", "maj2=strategy=majority,samples=2",
        "--proxy-key-env", "PROXY_KEY", "--api-key-env", "UPSTREAM_KEY",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.1)
        api = openai.OpenAI(base_url=base + "/v1", api_key="let-me-in", max_retries=0)
        assert (
            meta(api.chat.completions.create(model="maj3", messages=messages()))["samples_used"]
            == 3
        )
        assert (
            meta(api.chat.completions.create(model="maj2", messages=messages()))["samples_used"]
            == 2
        )
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert "sk-hidden" not in stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[presets.x]\nbudget = { dollars = 1 }\n")
    failed = subprocess.run(
        [sys.executable, "-m", "ttscale.cli", "serve", "--base-url", upstream.base_url,
         "--presets", str(broken), "--port", str(port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert failed.returncode == 2
    assert "broken.toml" in failed.stderr and "presets.x.budget.dollars" in failed.stderr


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_streamed_scaled_answer_carries_the_logprobs_a_whole_one_does(endpoint: str) -> None:
    long_answer = "Six times seven: 6 * 7 = 42, and a check says 42 again, so \\boxed{42}."
    with LoopbackServer(default_answer=long_answer) as server:
        running = start(server)
        try:
            asked = client(running)
            create: Any = (
                asked.chat.completions.create if endpoint == "chat" else asked.completions.create
            )
            prompt = {"messages": messages()} if endpoint == "chat" else {"prompt": QUESTION}
            logprobs = (
                {"logprobs": True, "top_logprobs": 2} if endpoint == "chat" else {"logprobs": 2}
            )
            scaled = {"ttscale": {"strategy": "majority", "samples": 2}}
            whole = create(model="loopback", extra_body=scaled, **prompt, **logprobs)
            chunks = list(
                create(model="loopback", stream=True, extra_body=scaled, **prompt, **logprobs)
            )
            plain = list(create(model="loopback", stream=True, extra_body=scaled, **prompt))
        finally:
            running.stop()
    if endpoint == "chat":
        expected = [(t.token, t.logprob) for t in whole.choices[0].logprobs.content]
        streamed = [
            (t.token, t.logprob)
            for c in chunks
            if c.choices and c.choices[0].logprobs is not None
            for t in c.choices[0].logprobs.content
        ]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        unasked = [c.choices[0].logprobs for c in plain if c.choices]
    else:
        expected = list(
            zip(
                whole.choices[0].logprobs.tokens,
                whole.choices[0].logprobs.token_logprobs,
                strict=True,
            )
        )
        streamed = [
            pair
            for c in chunks
            if c.choices and c.choices[0].logprobs is not None
            for pair in zip(
                c.choices[0].logprobs.tokens, c.choices[0].logprobs.token_logprobs, strict=True
            )
        ]
        text = "".join(c.choices[0].text or "" for c in chunks if c.choices)
        unasked = [c.choices[0].logprobs for c in plain if c.choices]
    assert text == long_answer and len(expected) > 8  # several deltas
    assert streamed == expected and "".join(token for token, _ in streamed) == text
    assert unasked and all(value is None for value in unasked)  # control: none when not asked


def test_a_pass_through_stream_is_counted_in_the_metrics_as_a_whole_answer_is() -> None:
    with LoopbackServer(answers=respond) as server:
        running = start(server)
        try:
            api = client(running)
            stream = api.chat.completions.create(
                model="loopback",
                messages=messages(),
                n=2,
                stream=True,
                stream_options={"include_usage": True},
            )
            told = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
            api.chat.completions.create(model="loopback", messages=messages())  # a whole one
            text = httpx2.get(root(running) + "/metrics", timeout=30).text
            # Control: a stream without usage counts its choices, and no tokens it cannot know.
            list(api.chat.completions.create(model="loopback", messages=messages(), stream=True))
            after = httpx2.get(root(running) + "/metrics", timeout=30).text
        finally:
            running.stop()
        served = server.delivered_usage()
    assert served["samples"] == 4
    assert metric(text, "ttscale_samples_total") == 3
    assert metric(text, 'ttscale_tokens_total{kind="completion"}') == sum(
        r.completion_tokens for r in server.records[:2]
    )
    assert told.completion_tokens == server.records[0].completion_tokens
    assert metric(after, "ttscale_samples_total") == 4
    assert metric(after, 'ttscale_tokens_total{kind="completion"}') == metric(
        text, 'ttscale_tokens_total{kind="completion"}'
    )


def _sse(*events: dict[str, Any], eol: str = "\n") -> bytes:
    text = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"
    return text.replace("\n", eol).encode()


STREAM_END = (
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [{"index": 1, "delta": {}, "finish_reason": "length"}]},
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}},
)


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("size", [1, 3, 7, 1 << 20])
def test_stream_spend_reads_events_however_the_bytes_are_split(eol: str, size: int) -> None:
    from ttscale.serving import StreamSpend

    data = _sse(*STREAM_END, eol=eol)
    spend = StreamSpend(httpx2.Headers())
    for start in range(0, len(data), size):
        spend.feed(data[start : start + size])
    spend.close()
    assert spend.finished == {0, 1} and spend.usage == {"prompt_tokens": 5, "completion_tokens": 7}


def test_stream_spend_lets_go_of_a_stream_with_no_event_ends_and_counts_a_last_unended_one() -> (
    None
):
    from ttscale.serving import StreamSpend

    endless = StreamSpend(httpx2.Headers())
    for _ in range((StreamSpend._LONGEST_EVENT >> 4) + 2):
        endless.feed(b"data: xxxxxxxxxx")  # 16 bytes at a time, never a blank line
    assert not endless.readable and endless._held == 0  # nothing is held for it any more
    last = StreamSpend(httpx2.Headers())
    last.feed(_sse(STREAM_END[0]).removesuffix(b"data: [DONE]\n\n").rstrip(b"\n"))
    assert last.finished == set()  # the event has not ended yet...
    last.close()
    assert last.finished == {0}  # ...until the stream does
    compressed = StreamSpend(httpx2.Headers({"content-encoding": "gzip"}))
    compressed.feed(_sse(*STREAM_END))
    assert compressed.finished == set() and compressed.usage is None  # control: not read
