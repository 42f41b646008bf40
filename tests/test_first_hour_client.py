"""What a new user's own client met (issue 18): the ``openai`` SDK's raw and streaming responses
through ``wrap``, and the errors a wrapped client raises for a bad request.

Everything runs through the real ``openai`` client against the loopback server, whose request log
says how many samples were drawn and what each request carried; the control is the unwrapped
client, which draws one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import ttscale
from ttscale.errors import (
    ConfigError,
    RequestError,
    TTScaleError,
    UnknownNameError,
    UpstreamError,
)
from ttscale.proxy import (
    BackgroundProxy,
    ProxyConfig,
    parse_default_option,
    parse_preset_option,
)
from ttscale.scaling import parse_request, plan_scaled, resolve_settings
from ttscale.settings import parse_settings
from ttscale.strategies.selection import (
    rank_by_score,
    select_best_of_majority,
    select_majority,
    select_unscored,
)
from ttscale.testing import ScriptedSampler
from ttscale.testing.server import Fault, LoopbackServer, ScriptRequest

VOTES = ["\\boxed{42}", "\\boxed{41}", "so \\boxed{42}", "\\boxed{13}"]
SCALED: dict[str, Any] = {"ttscale": {"strategy": "majority", "samples": 8}}


def respond(request: ScriptRequest) -> str:
    return VOTES[request.index % len(VOTES)]


@pytest.fixture
def upstream() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=respond) as server:
        yield server


def messages(text: str = "What is 6 * 7?") -> Any:
    return [{"role": "user", "content": text}]


def samples_seen(server: LoopbackServer) -> int:
    return sum(record.choices for record in server.records if record.body)


def ttscale_sent(server: LoopbackServer) -> bool:
    return any("ttscale" in (record.body or {}) for record in server.records)


def assert_scaled(reply: Any, server: LoopbackServer) -> None:
    assert isinstance(reply, ChatCompletion)
    assert reply.model_extra is not None and reply.model_extra["ttscale"]["samples_used"] == 8
    assert reply.model_extra["ttscale"]["votes"] == {"42": 4, "41": 2, "13": 2}
    assert (
        reply.usage is not None
        and reply.usage.completion_tokens == (server.delivered_usage()["completion_tokens"])
    )
    assert samples_seen(server) == 8 and not ttscale_sent(server)


# -- item 1: with_raw_response and with_streaming_response scale like create -----------------


def test_plain_client_control_draws_one(upstream: LoopbackServer) -> None:
    # The control: the unwrapped client sends the ttscale field upstream and draws one sample, as
    # the wrapped client's raw response did before the fix.
    plain = openai.OpenAI(base_url=upstream.base_url, api_key="k")
    raw = plain.chat.completions.with_raw_response.create(
        model="m", messages=messages(), extra_body=SCALED
    )
    assert raw.parse().choices[0].message.content == VOTES[0]
    assert samples_seen(upstream) == 1 and ttscale_sent(upstream)


@pytest.mark.parametrize("where", ["call", "wrap"])
def test_sync_raw_response_scales(upstream: LoopbackServer, where: str) -> None:
    plain = openai.OpenAI(base_url=upstream.base_url, api_key="k")
    client = ttscale.wrap(plain) if where == "call" else ttscale.wrap(plain, **SCALED["ttscale"])
    extra = {"extra_body": SCALED} if where == "call" else {}
    raw = client.chat.completions.with_raw_response.create(model="m", messages=messages(), **extra)
    assert raw.status_code == 200 and raw.http_response.status_code == 200
    assert raw.headers["x-ttscale-samples"] == "8"
    assert raw.headers["content-type"] == "application/json"
    reply = raw.parse()
    assert_scaled(reply, upstream)
    assert raw.request_id == reply.id and json.loads(raw.text)["id"] == reply.id
    assert str(raw.url).endswith("/chat/completions") and raw.method == "POST"
    # The client-level accessor reaches the same scaled create.
    upstream.reset_log()
    again = client.with_raw_response.chat.completions.create(
        model="m", messages=messages(), **extra
    )
    assert_scaled(again.parse(), upstream)
    client.close()


def test_sync_streaming_response_scales(upstream: LoopbackServer) -> None:
    client = ttscale.wrap(openai.OpenAI(base_url=upstream.base_url, api_key="k"))
    with client.chat.completions.with_streaming_response.create(
        model="m", messages=messages(), extra_body=SCALED
    ) as response:
        assert response.status_code == 200 and response.headers["x-ttscale-samples"] == "8"
        assert_scaled(response.parse(), upstream)
        assert response.json()["ttscale"]["samples_used"] == 8
    upstream.reset_log()
    # stream=True: the body is server-sent events ending in [DONE]; parse() gives the chunks.
    with client.chat.completions.with_streaming_response.create(
        model="m", messages=messages(), extra_body=SCALED, stream=True
    ) as response:
        lines = [line for line in response.iter_lines() if line]
        chunks = list(response.parse())
    assert lines[-1] == "data: [DONE]" and response.headers["content-type"] == "text/event-stream"
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "42" in text and samples_seen(upstream) == 8 and not ttscale_sent(upstream)
    client.close()


def test_async_raw_and_streaming_responses_scale(upstream: LoopbackServer) -> None:
    async def main() -> None:
        client = ttscale.wrap(
            openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k"), **SCALED["ttscale"]
        )
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=messages())
        assert_scaled(raw.parse(), upstream)
        upstream.reset_log()
        async with client.chat.completions.with_streaming_response.create(
            model="m", messages=messages()
        ) as response:
            assert_scaled(await response.parse(), upstream)
            lines = [line async for line in response.iter_lines()]
        assert json.loads("".join(lines))["ttscale"]["samples_used"] == 8
        upstream.reset_log()
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=messages(), stream=True
        )
        chunks = [chunk async for chunk in raw.parse()]
        assert chunks and samples_seen(upstream) == 8
        await client.close()

    asyncio.run(main())


def test_unscaled_raw_calls_are_the_clients_own(upstream: LoopbackServer) -> None:
    client = ttscale.wrap(openai.OpenAI(base_url=upstream.base_url, api_key="k"))
    raw = client.chat.completions.with_raw_response.create(model="m", messages=messages())
    assert type(raw).__module__.startswith("openai.")  # the plain client's own object
    assert raw.parse().choices[0].message.content == VOTES[0] and samples_seen(upstream) == 1
    with client.chat.completions.with_streaming_response.create(
        model="m", messages=messages()
    ) as response:
        assert type(response).__module__.startswith("openai.")
    client.close()


def test_a_call_that_cannot_scale_says_so(upstream: LoopbackServer) -> None:
    client = ttscale.wrap(openai.OpenAI(base_url=upstream.base_url, api_key="k"))
    for method in ("parse", "stream"):
        with pytest.raises(ConfigError, match=rf"chat.completions.{method}\(\)"):
            getattr(client.chat.completions, method)(
                model="m", messages=messages(), extra_body=SCALED
            )
    # Legacy completions are not scaled by wrap: asked to be (by the call, or by a wrap that
    # scales every call), they refuse rather than send the ttscale field upstream.
    always = ttscale.wrap(openai.OpenAI(base_url=upstream.base_url, api_key="k"), samples=4)
    for accessor, extra in (
        (client.completions, {"extra_body": SCALED}),
        (client.completions.with_raw_response, {"extra_body": SCALED}),
        (client.with_raw_response.completions, {"extra_body": SCALED}),
        (client.with_streaming_response.completions, {"extra_body": SCALED}),
        (always.completions, {}),
    ):
        with pytest.raises(ConfigError, match=r"completions.create\(\) of a wrapped client"):
            accessor.create(model="m", prompt="2+2=", **extra)
    assert upstream.records == []  # nothing went upstream, ttscale field or not
    # The control: without ttscale settings, legacy completions are the client's own.
    assert client.completions.create(model="m", prompt="2+2=").choices[0].text == VOTES[0]
    assert len(upstream.records) == 1 and not ttscale_sent(upstream)
    client.close()
    always.close()


def test_a_copy_with_options_still_scales(upstream: LoopbackServer) -> None:
    client = ttscale.wrap(openai.OpenAI(base_url=upstream.base_url, api_key="k"))
    for copied in (client.with_options(timeout=30.0), client.copy(max_retries=0)):
        upstream.reset_log()
        reply = copied.chat.completions.create(model="m", messages=messages(), extra_body=SCALED)
        assert_scaled(reply, upstream)
        copied.close()

    async def main() -> None:
        wrapped = ttscale.wrap(openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k"))
        copied = wrapped.with_options(timeout=30.0)
        upstream.reset_log()
        assert_scaled(
            await copied.chat.completions.create(model="m", messages=messages(), extra_body=SCALED),
            upstream,
        )
        await wrapped.close()

    asyncio.run(main())
    # A copy would not share a client-wide budget: it says so instead.
    budgeted = ttscale.wrap(
        openai.OpenAI(base_url=upstream.base_url, api_key="k"), budget=ttscale.max_samples(64)
    )
    with pytest.raises(ConfigError, match="second budget"):
        budgeted.with_options(timeout=30.0)
    budgeted.close()
    client.close()


# -- item 2: a bad request is the openai error the plain client would get --------------------

BAD_REQUESTS: dict[str, dict[str, Any]] = {
    "samples": {"extra_body": {"ttscale": {"samples": 0}}},
    "strategy": {"extra_body": {"ttscale": {"strategy": "no_such_strategy"}}},
    "option": {"extra_body": {"ttscale": {"strategy": "majority", "no_such_option": 1}}},
    "budget": {"extra_body": {"ttscale": {"budget": {"dollars": 1}}}},
    "k": {"n": 4, "extra_body": {"ttscale": {"samples": 2}}},
    "content": {"messages": [{"role": "user", "content": 7}], "extra_body": {"ttscale": {}}},
    "header": {"extra_headers": {"X-TTScale-Samples": "-3"}},
}


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[LoopbackServer, BackgroundProxy]]:
    with (
        LoopbackServer(answers=respond) as server,
        BackgroundProxy(ProxyConfig(base_url=server.base_url)) as proxy,
    ):
        yield server, proxy


@pytest.mark.parametrize("kind", sorted(BAD_REQUESTS))
def test_bad_requests_are_openai_errors_as_through_the_proxy(
    proxied: tuple[LoopbackServer, BackgroundProxy], kind: str
) -> None:
    server, proxy = proxied
    call = {"model": "m", "messages": messages(), **BAD_REQUESTS[kind]}
    wrapped = ttscale.wrap(openai.OpenAI(base_url=server.base_url, api_key="k"))
    try:
        wrapped.chat.completions.create(**call)
    except openai.BadRequestError as exc:
        caught = exc
    else:
        pytest.fail("no error")
    assert isinstance(caught, RequestError | ConfigError) and isinstance(caught, TTScaleError)
    with pytest.raises(openai.BadRequestError) as through_proxy:
        openai.OpenAI(base_url=proxy.base_url, api_key="k").chat.completions.create(**call)
    theirs = through_proxy.value
    assert (caught.status_code, caught.type, caught.param) == (
        theirs.status_code,
        theirs.type,
        theirs.param,
    )
    assert caught.param and caught.body == theirs.body and str(caught) == str(theirs)
    assert caught.response.json() == theirs.response.json()
    # The raw and streaming accessors raise the same.
    with pytest.raises(openai.BadRequestError):
        wrapped.chat.completions.with_raw_response.create(**call)
    wrapped.close()


def test_an_upstream_error_is_the_openai_error_the_plain_client_gets() -> None:
    faults = [Fault("rate_limit", every=1)]
    with LoopbackServer(answers=respond, faults=faults) as server:
        plain = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        with pytest.raises(openai.RateLimitError) as theirs:
            plain.chat.completions.create(model="m", messages=messages())
        wrapped = ttscale.wrap(plain)
        with pytest.raises(openai.RateLimitError) as ours:
            wrapped.chat.completions.create(model="m", messages=messages(), extra_body=SCALED)
        wrapped.close()
    assert isinstance(ours.value, UpstreamError) and ours.value.status_code == 429
    assert str(ours.value) == str(theirs.value) and ours.value.body == theirs.value.body


def test_a_wrapped_error_keeps_its_ttscale_class_and_fields(upstream: LoopbackServer) -> None:
    async def main() -> None:
        client = ttscale.wrap(openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k"))
        with pytest.raises(UnknownNameError) as caught:
            await client.chat.completions.create(
                model="m", messages=messages(), extra_body={"ttscale": {"strategy": "nope"}}
            )
        error = caught.value
        assert isinstance(error, openai.BadRequestError) and error.name == "nope"
        assert error.param == "ttscale.strategy" and "majority" in error.known
        assert isinstance(error.__cause__, UnknownNameError)
        assert not isinstance(error.__cause__, openai.APIError)  # the original, chained
        await client.close()

    asyncio.run(main())


# -- item 3: presets and the server default pin sampling settings; greedy samples warn -------


def lm_eval_body(model: str) -> dict[str, Any]:
    """The body lm-evaluation-harness's ``local-chat-completions`` sends (greedy by default)."""
    return {
        "messages": messages("Question: What is 6 * 7?\nAnswer:"),
        "model": model,
        "max_tokens": 64,
        "temperature": 0,
        "stop": ["\n\n", "Question:"],
        "seed": 1234,
    }


def temperatures_sent(server: LoopbackServer) -> list[Any]:
    return [record.body.get("temperature") for record in server.records if record.body]


def test_lm_eval_greedy_requests_against_a_majority_preset(
    upstream: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    presets = {
        "maj8": parse_settings({"strategy": "majority", "samples": 8}, allow_model=True),
        "maj8-warm": parse_preset_option(
            "maj8-warm=strategy=majority,samples=8,sampling.temperature=0.7,sampling.top_k=40"
        )[1],
    }
    config = ProxyConfig(base_url=upstream.base_url, model="m", presets=presets)
    with BackgroundProxy(config) as proxy, caplog.at_level(logging.WARNING):
        url = proxy.base_url + "/chat/completions"
        # No pin: the samples are drawn at the client's temperature 0, and the answer says so.
        greedy = httpx2.post(url, json=lm_eval_body("maj8"), timeout=60).json()
        assert temperatures_sent(upstream) == [0] * len(upstream.records)
        assert samples_seen(upstream) == 8
        (warning,) = greedy["ttscale"]["warnings"]
        assert "greedily (temperature 0)" in warning and "sampling.temperature" in warning
        assert any(
            warning in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records
        )
        upstream.reset_log()
        caplog.clear()
        # Pinned: every sample at the preset's temperature (and top_k), whatever the client sent.
        warm = httpx2.post(url, json=lm_eval_body("maj8-warm"), timeout=60).json()
        bodies = [record.body for record in upstream.records if record.body]
        assert bodies and all(b["temperature"] == 0.7 and b["top_k"] == 40 for b in bodies)
        assert all(b["max_tokens"] == 64 and b["stop"] == ["\n\n", "Question:"] for b in bodies)
        assert samples_seen(upstream) == 8 and warm["ttscale"]["warnings"] == []
        assert not [r for r in caplog.records if "greedily" in r.getMessage()]
        # A request's own ttscale.sampling wins over the preset's pin, key by key.
        upstream.reset_log()
        body = {**lm_eval_body("maj8-warm"), "ttscale": {"sampling": {"temperature": 1.1}}}
        httpx2.post(url, json=body, timeout=60).raise_for_status()
        bodies = [record.body for record in upstream.records if record.body]
        assert all(b["temperature"] == 1.1 and b["top_k"] == 40 for b in bodies)


def test_the_server_default_pins_too_and_bad_pins_name_the_field(upstream: LoopbackServer) -> None:
    default = parse_default_option("majority,samples=4,sampling.temperature=0.6")
    with BackgroundProxy(ProxyConfig(base_url=upstream.base_url, default=default)) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="k", max_retries=0)
        reply = client.chat.completions.create(model="m", messages=messages(), temperature=0)
        assert reply.model_extra is not None and reply.model_extra["ttscale"]["warnings"] == []
        assert temperatures_sent(upstream) == [0.6] * len(upstream.records)
        assert samples_seen(upstream) == 4
        for pins, param in (
            ({"temp": 1}, "ttscale.sampling.temp"),
            ({"temperature": 3}, "ttscale.sampling.temperature"),
            ({"top_k": 1.5}, "ttscale.sampling.top_k"),
            ([0.5], "ttscale.sampling"),
        ):
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(
                    model="m", messages=messages(), extra_body={"ttscale": {"sampling": pins}}
                )
            assert caught.value.param == param
    with pytest.raises(ConfigError, match="--default-strategy"):
        parse_default_option("majority,sampling.temp=1")


def test_ttscale_serve_default_strategy_pins_the_temperature(
    upstream: LoopbackServer, tmp_path: Path
) -> None:
    pytest.importorskip("uvicorn")
    port_file = tmp_path / "port"
    default = "majority,samples=4,sampling.temperature=0.6"
    command = [sys.executable, "-m", "ttscale.cli", "serve", "--base-url", upstream.base_url]
    command += ["--port", "0", "--port-file", str(port_file), "--default-strategy", default]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else b""
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port_file.read_text().strip()}/v1"
        reply = httpx2.post(base + "/chat/completions", json=lm_eval_body("m"), timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["ttscale"]["warnings"] == []
        assert temperatures_sent(upstream) == [0.6] * len(upstream.records)
        assert samples_seen(upstream) == 4
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_a_wrapped_client_pins_and_warns_as_the_proxy(upstream: LoopbackServer) -> None:
    plain = openai.OpenAI(base_url=upstream.base_url, api_key="k")
    greedy = ttscale.wrap(plain, strategy="majority", samples=4)
    reply = greedy.chat.completions.create(model="m", messages=messages(), temperature=0)
    assert reply.model_extra is not None and len(reply.model_extra["ttscale"]["warnings"]) == 1
    upstream.reset_log()
    warm = ttscale.wrap(plain, strategy="majority", samples=4, sampling={"temperature": 0.9})
    reply = warm.chat.completions.create(model="m", messages=messages(), temperature=0)
    assert reply.model_extra is not None and reply.model_extra["ttscale"]["warnings"] == []
    assert temperatures_sent(upstream) == [0.9] * len(upstream.records)
    # One sample, or top_k 1: the control and the other greedy rule.
    one = greedy.chat.completions.create(
        model="m", messages=messages(), temperature=0, extra_body={"ttscale": {"samples": 1}}
    )
    assert one.model_extra is not None and one.model_extra["ttscale"]["warnings"] == []
    top1 = warm.chat.completions.create(
        model="m", messages=messages(), extra_body={"ttscale": {"sampling": {"top_k": 1}}}
    )
    assert top1.model_extra is not None
    assert "top_k 1" in top1.model_extra["ttscale"]["warnings"][0]
    greedy.close()
    warm.close()


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ({"strategy": "majority", "samples": 4}, True),
        ({"strategy": "majority", "samples": 1}, False),  # one sample: nothing to choose
        ({"strategy": "beam_search", "samples": 4}, False),  # draws at its own 0.8
        ({"strategy": "beam_search", "samples": 4, "temperature": 0}, True),
        ({"strategy": "majority", "samples": 4, "sampling": {"temperature": 0.5}}, False),
    ],
)
def test_the_greedy_warning_reads_the_temperature_samples_are_drawn_at(
    settings: dict[str, Any], warned: bool
) -> None:
    # Nothing is drawn while planning: the warning is known before a request runs.
    body = {**lm_eval_body("m"), "ttscale": settings}
    request = parse_request(body, chat=True)
    plan = plan_scaled(request, resolve_settings(request.settings), ScriptedSampler(answers={}))
    assert bool(plan.warnings) is warned


# -- item 8: a judge whose replies cannot be read gives no score; best-of-N says it fell back --

JUDGE_REPLIES = {"junk": "I would rather not say.", "41": "Looks right. Score: 9"}


def judging(mode: str) -> Any:
    """Candidates as VOTES; the judge replies junk, or rates the \\boxed{41} candidates 9/10 and
    replies junk to the rest (``41``), or rates everything 5/10 (``all``)."""

    def respond_or_judge(request: ScriptRequest) -> str:
        if not request.prompt.startswith("Rate how good"):
            return respond(request)
        if mode == "all":
            return "Score: 5"
        if mode == "41" and "\\boxed{41}" in request.prompt:
            return JUDGE_REPLIES["41"]
        return JUDGE_REPLIES["junk"]

    return respond_or_judge


BEST_OF_4 = {"ttscale": {"strategy": "best_of_n", "samples": 4, "verifier": "judge"}}


def judged(mode: str, caplog: pytest.LogCaptureFixture) -> tuple[dict[str, Any], list[str]]:
    with LoopbackServer(answers=judging(mode)) as server:
        client = ttscale.wrap(openai.OpenAI(base_url=server.base_url, api_key="k"))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            reply = client.chat.completions.create(
                model="m", messages=messages(), extra_body=BEST_OF_4
            )
        client.close()
        judge_calls = [r for r in server.records if r.body and "Rate how" in json.dumps(r.body)]
        assert len(judge_calls) == 4  # one per candidate
    assert reply.model_extra is not None
    return reply.model_extra["ttscale"], [r.getMessage() for r in caplog.records]


def test_unreadable_judge_replies_are_no_scores_and_best_of_n_falls_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    meta, logged = judged("junk", caplog)
    assert [score["value"] for score in meta["scores"]] == [None] * 4  # not 0.0
    assert all(score["verdict"] is None for score in meta["scores"])
    judge_warnings = [line for line in logged if line.startswith("judge:")]
    assert len(judge_warnings) == 1 and "4 of 4 candidates" in judge_warnings[0]
    (fallback,) = meta["warnings"]
    assert "fell back to majority voting" in fallback
    assert any("fell back to majority voting" in line for line in logged)
    # The documented rule: majority over the answers (42 twice, 41 once, 13 once), first drawn.
    assert meta["answers"] == ["42"]


def test_partly_unreadable_judge_replies_rank_the_scored_ones_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    meta, logged = judged("41", caplog)
    values = {score["index"]: score["value"] for score in meta["scores"]}
    assert sorted(values.values(), key=str) == [0.9, None, None, None]
    assert meta["answers"] == ["41"] and meta["warnings"] == []  # the scored one, no fallback
    first = next(line for line in logged if line.startswith("judge:"))
    assert first.startswith("judge: 3 of 4")


def test_readable_judge_replies_control(caplog: pytest.LogCaptureFixture) -> None:
    meta, logged = judged("all", caplog)
    assert [score["value"] for score in meta["scores"]] == [0.5] * 4
    assert meta["warnings"] == [] and not [line for line in logged if "judge:" in line]
    assert meta["answers"] == ["42"]  # a tie: the first drawn (sample 0)


def test_the_fallback_rule_is_majority_then_first_drawn() -> None:
    # Pure: the largest answer group's first-drawn member, not simply the first drawn.
    assert select_unscored(["1", "2", "2", "3"], 1) == [1]
    assert select_unscored(["1", "2", "2", "3"], 2, indices=[9, 8, 7, 6]) == [2, 3]
    assert select_unscored([None, None, "5"], 3) == [2, 0, 1]  # answerless ones last, in order
    assert rank_by_score([math.nan, 0.1, math.nan]) == [1, 0, 2]  # unscored rank last
    # Best-of-Majority's mean over a group counts its scored members only: an unscored member
    # does not sink the group (before: its NaN made the mean -inf, and "b" won).
    groups, _ = select_best_of_majority(
        ["a", "a", "b", "b"], [0.9, math.nan, 0.5, 0.6], 1, group_score="mean"
    )
    assert groups[0].answer == "a"
    assert select_majority(["a", "b", "b"], weights=[0.9, math.nan, math.nan])[0].answer == "a"


# -- item 7: a client-wide budget shows its limits ----------------------------------------------


def test_a_client_wide_budget_shows_its_limits_and_spend(upstream: LoopbackServer) -> None:
    budget = ttscale.max_samples(64) | ttscale.max_tokens(200_000)
    client = ttscale.wrap(
        openai.OpenAI(base_url=upstream.base_url, api_key="k"), samples=4, budget=budget
    )
    for call in (1, 2):
        reply = client.chat.completions.create(model="m", messages=messages())
        assert reply.model_extra is not None
        shown = reply.model_extra["ttscale"]["budget"]
        assert shown["limits"] == {"client": "max_samples(64) | max_tokens(200000)"}  # not {}
        assert shown["spent"]["samples"] == 4  # this call's
        assert shown["client_spent"]["samples"] == 4 * call  # every call's so far
    # A per-call budget keeps its own limits beside the client's.
    reply = client.chat.completions.create(
        model="m", messages=messages(), extra_body={"ttscale": {"budget": {"tokens": 5000}}}
    )
    assert reply.model_extra is not None
    assert reply.model_extra["ttscale"]["budget"]["limits"] == {
        "tokens": 5000,
        "client": "max_samples(64) | max_tokens(200000)",
    }
    client.close()
