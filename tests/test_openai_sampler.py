"""OpenAISampler against the real loopback server: batching, fallback, seeds, usage, faults."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from ttscale import (
    ConfigError,
    OpenAISampler,
    OpenAISamplerConfig,
    Pricing,
    SampleBatch,
    SamplerError,
    SamplingParams,
    SyncSampler,
    UpstreamError,
    Usage,
)
from ttscale.budget import BudgetedSampler
from ttscale.errors import UnknownOptionError
from ttscale.portal import default_portal
from ttscale.testing.server import Fault, LoopbackServer, ScriptRequest


def numbered(request: ScriptRequest) -> str:
    """A different answer per sample, so lost or duplicated samples show."""
    return f"answer {request.index} to {request.prompt}"


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=numbered) as running:
        yield running


def make_sampler(server: LoopbackServer, **options: object) -> OpenAISampler:
    options.setdefault("max_retries", 3)
    return OpenAISampler(model="loopback", base_url=server.base_url, api_key="test", **options)


def draw(sampler: OpenAISampler, prompt: str, n: int, **kwargs: object) -> object:
    async def run() -> object:
        async with sampler:
            return await sampler.sample(prompt, n, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(run())


def assert_matches_server(usage: Usage, server: LoopbackServer) -> None:
    delivered = server.delivered_usage()
    assert usage.prompt_tokens == delivered["prompt_tokens"]
    assert usage.completion_tokens == delivered["completion_tokens"]
    assert usage.requests == delivered["requests"]
    assert usage.samples == delivered["samples"]


def generation_bodies(server: LoopbackServer) -> list[dict[str, object]]:
    return [r.body for r in server.records if r.path.endswith("completions") and r.body]


# -- n batching and its fallback -------------------------------------------------------------


def test_n_batches_requests_of_at_most_max_n(server: LoopbackServer) -> None:
    batch = draw(make_sampler(server, max_n=16), "q", 40)
    assert [c.index for c in batch.candidates] == list(range(40))
    assert sorted(body.get("n", 1) for body in generation_bodies(server)) == [8, 16, 16]
    assert batch.usage.requests == 3 and batch.usage.samples == 40
    assert len({c.text for c in batch.candidates}) == 40
    assert_matches_server(batch.usage, server)


def test_server_rejecting_n_falls_back_to_single_requests_and_remembers() -> None:
    with LoopbackServer(answers=numbered, n_support="reject") as server:
        sampler = make_sampler(server, max_n=8)

        async def run() -> tuple[object, object]:
            async with sampler:
                first = await sampler.sample("q", 8)
                second = await sampler.sample("q", 8, start_index=8)
                return first, second

        first, second = asyncio.run(run())
        assert sampler.n_supported is False
        assert [c.index for c in first.candidates] == list(range(8))
        assert [c.index for c in second.candidates] == list(range(8, 16))
        rejected = [r for r in server.records if r.status == 400]
        assert len(rejected) == 1  # the second draw never asks for n again
        assert first.usage.failed_requests == 1
        assert first.usage.requests == 8 and second.usage.requests == 8
        assert_matches_server(first.usage + second.usage, server)


def test_what_n_support_was_learnt_is_shared_by_twins_and_by_samplers_on_one_client() -> None:
    with LoopbackServer(answers=numbered, n_support="reject") as server:
        sampler = make_sampler(server, max_n=8)
        twin = sampler.with_model("another-model")
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test")
        on_client = OpenAISampler(model="loopback", client=client, max_n=8)
        neighbour = OpenAISampler(model="loopback", client=client, max_n=8)

        async def run() -> list[SampleBatch]:
            async with sampler:
                batches = [await sampler.sample("q", 4), await twin.sample("q", 4, start_index=4)]
                batches += [
                    await on_client.sample("r", 4),
                    await neighbour.sample("r", 4, start_index=4),
                ]
                await client.close()
                return batches

        batches = asyncio.run(run())
        assert twin.n_supported is False and neighbour.n_supported is False
        # One rejection per memory: the sampler's (its twin asked nothing) and the client's.
        rejected = [r for r in server.records if r.status == 400]
        assert len(rejected) == 2 and all(r.body and r.body["n"] == 4 for r in rejected)
        assert {r.body["model"] for r in rejected if r.body} == {"loopback"}
        assert all(len(b.candidates) == 4 for b in batches)
        assert_matches_server(Usage.total([b.usage for b in batches]), server)


def test_a_sampler_with_its_own_client_learns_afresh() -> None:
    with LoopbackServer(answers=numbered, n_support="reject") as server:
        first, second = make_sampler(server, max_n=8), make_sampler(server, max_n=8)
        draw(first, "q", 4)
        assert first.n_supported is False and second.n_supported is None


def test_an_unrelated_bad_request_does_not_switch_n_off(server: LoopbackServer) -> None:
    bad = SamplingParams(extra_body={"logprobs": "yes"})  # the server wants a boolean
    sampler = make_sampler(server, max_n=8)

    async def run() -> SampleBatch:
        async with sampler:
            with pytest.raises(UpstreamError) as caught:
                await sampler.sample("q", 4, bad)
            assert caught.value.status_code == 400
            return await sampler.sample("q", 4, start_index=4)

    batch = asyncio.run(run())
    assert sampler.n_supported is True  # learnt from the second draw, which still used n
    assert [body.get("n") for body in generation_bodies(server)] == [4, 4]
    assert [c.index for c in batch.candidates] == [4, 5, 6, 7]


def refusing_n_with(status: int, body: object) -> httpx2.MockTransport:
    """A server that answers every request asking for n > 1 with ``status`` and ``body``."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        sent = json.loads(request.content)
        if sent.get("n", 1) > 1:
            return httpx2.Response(status, json=body)
        choice = {"index": 0, "message": {"role": "assistant", "content": "hi"}}
        usage = {"prompt_tokens": 3, "completion_tokens": 1}
        return httpx2.Response(200, json={"id": "x", "choices": [choice], "usage": usage})

    return httpx2.MockTransport(handle)


@pytest.mark.parametrize(
    ("status", "body", "about_n"),
    [
        (400, {"error": {"message": "this server does not support n > 1", "param": "n"}}, True),
        (400, {"error": {"message": "Invalid 'n': integer above maximum value"}}, True),
        (400, {"error": {"message": "n must be 1 for this model", "param": None}}, True),
        (400, {"error": {"message": "Only one completion choice is allowed"}}, True),
        (400, {"error": {"message": "Unsupported parameter: n"}}, True),
        (400, {"error": "only n=1 is supported"}, True),
        (422, {"detail": [{"loc": ["body", "n"], "msg": "must be <= 1"}]}, True),
        # Errors about something else, some of which mention an n in passing.
        (400, {"error": {"message": "The tool function must have a name"}}, False),
        (400, {"error": {"message": "prompt_len + gen_len > max_model_len"}}, False),
        (400, {"error": {"message": "top_n must be at most 20"}}, False),
        (400, {"error": {"message": "n must be 1 when best_of is set", "param": "best_of"}}, False),
        (400, {"error": {"message": "This model's maximum context length is 2048 tokens"}}, False),
        (422, {"detail": [{"loc": ["body", "temperature"], "msg": "n must be 1"}]}, False),
    ],
)
def test_only_an_error_naming_n_switches_n_off(status: int, body: object, about_n: bool) -> None:
    # The real openai client over a scripted transport: these error bodies come from servers
    # other than the loopback one, and the exception is the one the client really raises.
    http_client = httpx2.AsyncClient(transport=refusing_n_with(status, body))
    client = openai.AsyncOpenAI(
        base_url="http://upstream.test/v1", api_key="x", max_retries=0, http_client=http_client
    )
    sampler = OpenAISampler(model="m", client=client, max_n=4)

    async def run() -> SampleBatch:
        async with client:
            return await sampler.sample("q", 4)

    if about_n:
        assert len(asyncio.run(run()).candidates) == 4
        assert sampler.n_supported is False
    else:
        with pytest.raises(UpstreamError) as caught:
            asyncio.run(run())
        assert caught.value.status_code == status
        assert sampler.n_supported is None


def test_server_ignoring_n_keeps_the_choice_it_paid_for() -> None:
    with LoopbackServer(answers=numbered, n_support="ignore") as server:
        sampler = make_sampler(server, max_n=8)
        batch = draw(sampler, "q", 8)
        assert sampler.n_supported is False
        assert [c.index for c in batch.candidates] == list(range(8))
        # One request with n=8 returned one choice (kept), then seven single requests.
        assert batch.usage.requests == 8
        assert len({c.text for c in batch.candidates}) == 8
        assert_matches_server(batch.usage, server)


def test_server_returning_fewer_choices_than_asked() -> None:
    with LoopbackServer(answers=numbered, max_choices=3) as server:
        sampler = make_sampler(server, max_n=10)
        batch = draw(sampler, "q", 10)
        assert [c.index for c in batch.candidates] == list(range(10))
        assert batch.usage.requests == 1 + 7  # 3 kept from the short answer, 7 drawn one by one
        assert_matches_server(batch.usage, server)


def test_n_mode_never_sends_single_requests(server: LoopbackServer) -> None:
    batch = draw(make_sampler(server, n_mode="never"), "q", 5)
    assert all("n" not in body for body in generation_bodies(server))
    assert batch.usage.requests == 5


# -- seeds ------------------------------------------------------------------------------------


def test_every_request_gets_a_distinct_seed_across_draws(server: LoopbackServer) -> None:
    sampler = make_sampler(server, n_mode="never", params=SamplingParams(seed=7))

    async def run() -> None:
        async with sampler:
            await sampler.sample("q", 50)
            await sampler.sample("q", 50, start_index=50)

    asyncio.run(run())
    seeds = [body["seed"] for body in generation_bodies(server)]
    assert len(seeds) == 100 and len(set(seeds)) == 100


def test_seeds_are_reproducible_from_the_base_seed(server: LoopbackServer) -> None:
    one = draw(make_sampler(server, params=SamplingParams(seed=3)), "q", 4)
    two = draw(make_sampler(server, params=SamplingParams(seed=3)), "q", 4)
    other = draw(make_sampler(server, params=SamplingParams(seed=4)), "q", 4)
    assert [c.seed for c in one.candidates] == [c.seed for c in two.candidates]
    assert {c.seed for c in one.candidates}.isdisjoint({c.seed for c in other.candidates})


def test_batched_requests_get_distinct_seeds(server: LoopbackServer) -> None:
    draw(make_sampler(server, max_n=4, params=SamplingParams(seed=1)), "q", 32)
    seeds = [body["seed"] for body in generation_bodies(server)]
    assert len(seeds) == 8 and len(set(seeds)) == 8


# -- concurrency and rate limits ----------------------------------------------------------------


def test_peak_concurrency_never_exceeds_the_bound_across_prompts() -> None:
    with LoopbackServer(answers=numbered, latency=0.03) as server:
        sampler = make_sampler(server, concurrency=6, n_mode="never")

        async def run() -> list[object]:
            async with sampler:
                return list(await asyncio.gather(*(sampler.sample(f"p{i}", 12) for i in range(8))))

        batches = asyncio.run(run())
        assert server.peak_concurrency <= 6
        assert server.peak_concurrency >= 2  # the bound is shared, not one request at a time
        assert sum(len(b.candidates) for b in batches) == 96
        assert_matches_server(Usage.total([b.usage for b in batches]), server)


def test_twins_share_the_concurrency_bound_across_models() -> None:
    with LoopbackServer(answers=numbered, latency=0.03) as server:

        async def run(first: OpenAISampler, second: OpenAISampler) -> None:
            async with first, second:
                draws = [s.sample(f"p{i}", 4) for i, s in enumerate([first, second] * 2)]
                await asyncio.gather(*draws)

        sampler = make_sampler(server, concurrency=2, n_mode="never")
        asyncio.run(run(sampler, sampler.with_model("other")))
        assert server.peak_concurrency <= 2
        assert {record.body["model"] for record in server.records} == {"loopback", "other"}
        # Control: two samplers of their own each have a bound of 2, so 4 requests are in flight.
        server.reset_log()
        asyncio.run(
            run(
                make_sampler(server, concurrency=2, n_mode="never"),
                make_sampler(server, concurrency=2, n_mode="never"),
            )
        )
        assert server.peak_concurrency > 2


def test_requests_per_minute_limit_spaces_requests(server: LoopbackServer) -> None:
    sampler = make_sampler(server, n_mode="never", requests_per_minute=1200)  # 20 per second
    started = time.monotonic()
    draw(sampler, "q", 30)
    # 20 may go at once; the other 10 need half a second more at 20 per second.
    assert time.monotonic() - started >= 0.4


def test_tokens_per_minute_limit_waits_for_allowance(server: LoopbackServer) -> None:
    params = SamplingParams(max_tokens=100)
    sampler = make_sampler(server, n_mode="never", tokens_per_minute=6000, params=params)
    started = time.monotonic()
    draw(sampler, "q", 61)  # each request is estimated at ~100 tokens; 60 fit in the first minute
    assert time.monotonic() - started >= 0.5


# -- usage ------------------------------------------------------------------------------------


def test_usage_equals_what_the_server_reported_with_pricing(server: LoopbackServer) -> None:
    pricing = Pricing(input_per_million=2.0, output_per_million=8.0)
    batch = draw(make_sampler(server, max_n=5, pricing=pricing), "count the tokens", 12)
    assert_matches_server(batch.usage, server)
    assert sum(c.completion_tokens for c in batch.candidates) == batch.usage.completion_tokens
    expected_cost = (batch.usage.prompt_tokens * 2.0 + batch.usage.completion_tokens * 8.0) / 1e6
    assert batch.usage.cost == pytest.approx(expected_cost, rel=1e-12)
    assert not all(c.tokens_exact for c in batch.candidates)  # apportioned over n choices


def test_logprobs_make_per_sample_tokens_exact(server: LoopbackServer) -> None:
    params = SamplingParams(logprobs=2)
    batch = draw(make_sampler(server, max_n=4, params=params), "q", 4)
    for candidate in batch.candidates:
        assert candidate.tokens_exact
        assert candidate.logprobs is not None
        assert candidate.completion_tokens == len(candidate.logprobs)
        assert all(len(t.top) == 2 for t in candidate.logprobs)
    assert_matches_server(batch.usage, server)


def test_completions_endpoint_with_logprobs(server: LoopbackServer) -> None:
    params = SamplingParams(logprobs=1, temperature=0.5)
    sampler = make_sampler(server, endpoint="completions", max_n=3, params=params)
    batch = draw(sampler, "complete me", 6)
    assert [c.index for c in batch.candidates] == list(range(6))
    assert all(c.logprobs and c.completion_tokens == len(c.logprobs) for c in batch.candidates)
    assert all(r.path.endswith("/v1/completions") for r in server.records)
    assert_matches_server(batch.usage, server)


def test_settings_pass_through_to_the_server(server: LoopbackServer) -> None:
    params = SamplingParams(
        temperature=0.7,
        top_p=0.9,
        max_tokens=3,
        stop=("\n",),
        extra_body={"min_p": 0.05, "top_k": 20},
    )
    batch = draw(make_sampler(server, params=params), "q", 1)
    (body,) = generation_bodies(server)
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["max_tokens"] == 3
    assert body["stop"] == ["\n"] and body["min_p"] == 0.05 and body["top_k"] == 20
    assert batch.candidates[0].finish_reason == "length"
    assert batch.candidates[0].completion_tokens == 3


# -- faults: nothing lost, nothing counted twice ------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault("rate_limit", on_requests=frozenset({0, 2}), retry_after=0.05),
        Fault("server_error", on_requests=frozenset({1})),
        Fault("reset", on_requests=frozenset({0, 3})),
        Fault("slow", on_requests=frozenset({2}), delay=3.0),
        Fault("malformed_json", on_requests=frozenset({1})),
    ],
    ids=lambda fault: fault.kind,
)
def test_each_fault_loses_no_sample_and_counts_none_twice(fault: Fault) -> None:
    with LoopbackServer(answers=numbered, faults=(fault,)) as server:
        sampler = make_sampler(server, max_n=4, timeout=1.0)
        batch = draw(sampler, "q", 16)
        assert [c.index for c in batch.candidates] == list(range(16))
        assert len({c.text for c in batch.candidates}) == 16
        assert_matches_server(batch.usage, server)
        if fault.kind == "malformed_json":
            assert batch.usage.failed_requests == 1


def test_a_failed_draw_carries_the_samples_it_paid_for() -> None:
    fault = Fault("server_error", on_requests=frozenset({1}))
    with LoopbackServer(answers=numbered, faults=(fault,)) as server:
        sampler = make_sampler(server, max_n=1, max_retries=0, concurrency=1)
        with pytest.raises(UpstreamError) as caught:
            draw(sampler, "q", 4)
        assert caught.value.status_code == 500
        partial = caught.value.partial
        assert partial is not None
        assert [c.index for c in partial.candidates] == [0, 2, 3]
        assert_matches_server(partial.usage, server)
        assert partial.usage.failed_requests == 1


# Six single-sample requests at once: the first two to arrive are answered at once, the other four
# held for ten minutes, so a cancellation always comes with two answers in and four in flight.
HELD = (Fault("slow", on_requests=frozenset({2, 3, 4, 5}), delay=600.0),)


async def two_answers_in(server: LoopbackServer) -> None:
    def wait() -> None:
        deadline = time.monotonic() + 30
        while server.delivered_usage()["samples"] < 2:
            assert time.monotonic() < deadline, "the first answers did not arrive"
            time.sleep(0.01)
        time.sleep(0.3)  # sent is not yet read: give the client time to take them in

    await asyncio.to_thread(wait)


def test_a_cancelled_draw_carries_the_samples_that_arrived() -> None:
    caught: list[BaseException] = []

    async def main(sampler: OpenAISampler, server: LoopbackServer) -> None:
        async def sample() -> SampleBatch:
            try:
                return await sampler.sample("q", 6)
            except asyncio.CancelledError as exc:
                caught.append(exc)
                raise

        async with sampler:
            task = asyncio.create_task(sample())
            await two_answers_in(server)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    with LoopbackServer(answers=numbered, faults=HELD) as server:
        sampler = make_sampler(server, n_mode="never", concurrency=6)
        asyncio.run(main(sampler, server))
        partial = getattr(caught[0], "partial", None)
        assert isinstance(partial, SampleBatch)
        assert len(partial.candidates) == 2
        assert_matches_server(partial.usage, server)


def test_a_budget_counts_a_draw_the_stopping_loop_cancels_part_way() -> None:
    # The caller gives up first (the budget lets the draw run on, as its requests are out), then
    # the loop stops and cancels the draw itself, as asyncio.run does with the tasks left.
    async def main(sampler: OpenAISampler, server: LoopbackServer) -> BudgetedSampler:
        budget = BudgetedSampler(sampler)
        async with sampler:
            caller = asyncio.create_task(budget.sample("q", 6))
            await two_answers_in(server)
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert left  # the draw, still running
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        return budget

    with LoopbackServer(answers=numbered, faults=HELD) as server:
        sampler = make_sampler(server, n_mode="never", concurrency=6)
        budget = asyncio.run(main(sampler, server))
        spent = budget.spent
        assert spent.samples == 2 and spent.pending_samples == 0
        assert_matches_server(spent.usage, server)


def test_bad_options_are_refused_as_every_component_refuses_them() -> None:
    config = OpenAISamplerConfig(model="m", base_url="http://127.0.0.1:9/v1")
    assert OpenAISampler(config).config is config  # control: a config alone is taken as it is
    with pytest.raises(UnknownOptionError, match=r"OpenAISampler: unknown option.*max_m"):
        OpenAISampler(model="m", max_m=4)
    with pytest.raises(ConfigError, match="not both"):
        OpenAISampler(config, max_n=4)
    with pytest.raises(ConfigError, match="OpenAISampler takes a OpenAISamplerConfig"):
        OpenAISampler({"model": "m"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="concurrency must be >= 1"):
        OpenAISampler(model="m", concurrency=0)


def test_unreachable_server_is_an_upstream_error() -> None:
    with LoopbackServer() as server:
        base_url = server.base_url
    sampler = OpenAISampler(model="m", base_url=base_url, api_key="x", max_retries=0)
    with pytest.raises(SamplerError, match="could not reach"):
        draw(sampler, "q", 1)


# -- the sync facade --------------------------------------------------------------------------


def test_sync_facade_reuses_one_portal_across_calls(server: LoopbackServer) -> None:
    inner = make_sampler(server, concurrency=4)
    seen: list[tuple[asyncio.AbstractEventLoop, threading.Thread]] = []

    class Watched:
        """Delegates to the real sampler, noting the loop and thread each call runs on."""

        async def sample(self, *args: Any, **kwargs: Any) -> SampleBatch:
            seen.append((asyncio.get_running_loop(), threading.current_thread()))
            return await inner.sample(*args, **kwargs)

        async def aclose(self) -> None:
            await inner.aclose()

    with SyncSampler(Watched()) as sampler:
        first = sampler.sample("a", 3)
        second = sampler.sample("b", 3, start_index=3)
    assert len(first.candidates) == 3 and len(second.candidates) == 3
    assert_matches_server(first.usage + second.usage, server)
    # Both calls ran on the process's one portal loop, on its thread, not the caller's.
    portal = default_portal()
    assert seen == [(portal.loop, seen[0][1])] * 2
    assert seen[0][1] is not threading.current_thread()
    # The connection pool outlived the first call: the second request came on the same
    # keep-alive connection (asyncio.run per call would have had to open a new one).
    connections = [r.connection for r in server.records if r.path.endswith("completions")]
    assert len(connections) == 2 and connections[0] == connections[1]


def test_sync_facade_works_inside_a_running_event_loop(server: LoopbackServer) -> None:
    async def notebook_cell() -> int:
        # As in Jupyter: a loop is running in this thread and the user calls the sync API.
        facade = SyncSampler(make_sampler(server))
        batch = facade.sample("q", 5)
        facade.close()
        return len(batch.candidates)

    assert asyncio.run(notebook_cell()) == 5
