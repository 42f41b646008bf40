"""PoolSampler: routing as plain functions, then failover and load spreading on real servers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ttscale.errors import ConfigError, SamplerError, UpstreamError
from ttscale.protocols import Sampler
from ttscale.samplers.openai_sampler import OpenAISampler
from ttscale.samplers.pool import EndpointsDown, PoolConfig, PoolEndpoint, PoolSampler
from ttscale.samplers.routing import (
    SLOWER,
    EndpointState,
    all_down,
    chunk_dispatched,
    chunk_finished,
    pick_endpoint,
    probe_due,
    probe_finished,
    probe_started,
    reopen,
    split_runs,
)
from ttscale.seeds import derive_seed
from ttscale.testing import ScriptedSampler
from ttscale.testing.server import Fault, LoopbackServer, ScriptRequest
from ttscale.types import Candidate, Problem, Prompt, SampleBatch, SamplingParams, Usage

SEED = 1234


def by_seed(request: ScriptRequest) -> str:
    """An answer that names the seed and choice it was written for, whichever server wrote it."""
    return f"{request.prompt} seed {request.seed} choice {request.choice}"


@contextlib.contextmanager
def servers(*configs: dict[str, Any]) -> Iterator[list[LoopbackServer]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(LoopbackServer(answers=by_seed, **config)) for config in configs]


def make_pool(endpoints: Sequence[str | PoolEndpoint | Sampler], **options: Any) -> PoolSampler:
    options.setdefault("max_retries", 0)
    options.setdefault("params", SamplingParams(seed=SEED))
    return PoolSampler(endpoints=endpoints, model="loopback", api_key="test", **options)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def assert_each_sample_once(batch: SampleBatch, prompt: str, n: int, max_n: int) -> None:
    """Indices 0..n-1, once each, each written for its chunk's seed and its place in the chunk."""
    assert [c.index for c in batch.candidates] == list(range(n))
    for candidate in batch.candidates:
        chunk_start = candidate.index - candidate.index % max_n
        seed = derive_seed(SEED, chunk_start)
        assert candidate.seed == seed
        assert candidate.text == f"{prompt} seed {seed} choice {candidate.index - chunk_start}"


def assert_usage_matches(usage: Usage, pool_servers: Sequence[LoopbackServer]) -> None:
    delivered = [server.delivered_usage() for server in pool_servers]
    for name in ("prompt_tokens", "completion_tokens", "requests", "samples"):
        assert getattr(usage, name) == sum(d[name] for d in delivered), name


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never came true")
        await asyncio.sleep(0.01)


def failed_generations(server: LoopbackServer) -> list[Any]:
    return [r for r in server.records if r.ordinal >= 0 and r.status != 200]


# -- routing without an event loop ---------------------------------------------------------------


def test_split_runs_cuts_consecutive_indices_into_chunks() -> None:
    assert split_runs(range(10), 4) == [(0, 4), (4, 4), (8, 2)]
    assert split_runs([7, 0, 1, 5, 6], 2) == [(0, 2), (5, 2), (7, 1)]
    assert split_runs(range(3, 23), 8) == [(3, 8), (11, 8), (19, 4)]
    assert split_runs([], 4) == []
    with pytest.raises(ConfigError):
        split_runs([1], 0)


def state(name: str, concurrency: int = 4, **fields: Any) -> EndpointState:
    return EndpointState(name=name, concurrency=concurrency, **fields)


def test_pick_endpoint_takes_the_fewest_outstanding_healthy_endpoint_with_room() -> None:
    states = [state("a", outstanding=2), state("b", outstanding=1), state("c", outstanding=3)]
    assert pick_endpoint(states) == 1
    # Full or down endpoints are skipped, however idle.
    states = [state("a", 1, outstanding=1), state("b", healthy=False), state("c", outstanding=3)]
    assert pick_endpoint(states) == 2
    # Ties: more room first, then fewer requests sent, then the first.
    assert pick_endpoint([state("a", 2, outstanding=1), state("b", 8, outstanding=1)]) == 1
    assert pick_endpoint([state("a", requests=5), state("b", requests=2)]) == 1
    assert pick_endpoint([state("a"), state("b")]) == 0
    assert pick_endpoint([state("a", 1, outstanding=1), state("b", healthy=False)]) is None


def test_a_markedly_slower_endpoint_loses_ties_but_not_on_fewer_outstanding() -> None:
    fast, slow = state("fast", requests=9, latency=0.1), state("slow", requests=1, latency=0.5)
    assert pick_endpoint([fast, slow]) == 0  # idle: the fast one, though it has more requests
    assert pick_endpoint([dataclasses.replace(fast, outstanding=1), slow]) == 1  # fewer in flight
    # Within SLOWER times the fastest, latency does not count: fewer requests wins.
    close = state("close", requests=1, latency=0.1 * SLOWER)
    assert pick_endpoint([fast, close]) == 1
    # Unknown latency is not held against an endpoint, and a down one sets no pace.
    assert pick_endpoint([fast, state("new", requests=1)]) == 1
    down = state("down", healthy=False, latency=0.01)
    assert pick_endpoint([down, fast, slow]) == 1


def test_chunk_times_move_a_smoothed_latency() -> None:
    finished = chunk_finished(
        chunk_dispatched(state("a")), samples=1, failed=False, now=0, threshold=1, cooldown=1,
        seconds=2.0,
    )  # fmt: skip
    assert finished.latency == 2.0
    again = chunk_finished(
        chunk_dispatched(finished), samples=1, failed=False, now=0, threshold=1, cooldown=1,
        seconds=1.0,
    )  # fmt: skip
    assert again.latency == pytest.approx(0.7 * 2.0 + 0.3 * 1.0)
    failed = chunk_finished(
        chunk_dispatched(again), samples=0, failed=True, now=0, threshold=1, cooldown=1,
        seconds=9.0,
    )  # fmt: skip
    assert failed.latency == again.latency  # a failure says nothing of the endpoint's pace


def test_dispatching_fills_endpoints_evenly_and_a_small_one_least() -> None:
    states = [state("a", 4), state("b", 4), state("c", 1)]
    chosen = []
    for _ in range(9):
        position = pick_endpoint(states)
        assert position is not None
        chosen.append(position)
        states[position] = chunk_dispatched(states[position])
    assert chosen.count(2) == 1 and chosen.count(0) == chosen.count(1) == 4
    assert pick_endpoint(states) is None
    assert [s.outstanding for s in states] == [4, 4, 1]


def test_failures_take_an_endpoint_down_at_the_threshold_for_the_cooldown() -> None:
    up = chunk_dispatched(chunk_dispatched(state("a")))
    once = chunk_finished(up, samples=0, failed=True, now=100.0, threshold=2, cooldown=30.0)
    assert once.healthy and once.failures == 1 and once.outstanding == 1
    twice = chunk_finished(once, samples=0, failed=True, now=101.0, threshold=2, cooldown=30.0)
    assert not twice.healthy and twice.down_until == 131.0 and twice.outstanding == 0
    # A success in between resets the run of failures.
    reset = chunk_finished(once, samples=4, failed=False, now=101.0, threshold=2, cooldown=30.0)
    assert reset.healthy and reset.consecutive_failures == 0 and reset.samples == 4


def test_probes_bring_a_down_endpoint_back_only_after_its_cooldown() -> None:
    down = state("a", healthy=False, down_until=50.0, consecutive_failures=1)
    assert not probe_due(down, 49.0)
    assert probe_due(down, 50.0)
    probing = probe_started(down)
    assert not probe_due(probing, 60.0) and probing.probes == 1
    back = probe_finished(probing, ok=True, now=60.0, threshold=1, cooldown=10.0)
    assert back.healthy and not back.probing and back.consecutive_failures == 0
    still = probe_finished(probing, ok=False, now=60.0, threshold=1, cooldown=10.0)
    assert not still.healthy and still.down_until == 70.0 and not still.probing
    # An endpoint that cannot be probed comes back on trial: one more failure takes it out.
    trial = reopen(down, threshold=3)
    assert trial.healthy and trial.consecutive_failures == 2
    out = chunk_finished(
        chunk_dispatched(trial), samples=0, failed=True, now=0.0, threshold=3, cooldown=1.0
    )
    assert not out.healthy


def test_all_down_means_none_healthy_probing_or_due() -> None:
    down = state("a", healthy=False, down_until=10.0)
    assert all_down([down, down], now=5.0)
    assert not all_down([down, down], now=10.0)  # due for a probe
    assert not all_down([down, probe_started(down)], now=5.0)
    assert not all_down([down, state("b")], now=5.0)


def test_config_checks_and_accepts_a_comma_separated_list() -> None:
    config = PoolConfig(endpoints="http://a/v1, http://b/v1", model="m")  # type: ignore[arg-type]
    assert config.endpoints == ("http://a/v1", "http://b/v1")
    with pytest.raises(ConfigError, match="model"):
        PoolConfig(endpoints=("http://a/v1",))
    with pytest.raises(ConfigError, match="at least one"):
        PoolConfig(endpoints=(), model="m")
    with pytest.raises(ConfigError, match="unknown option"):
        PoolSampler(endpoints=["http://a/v1"], model="m", replicas=3)
    with pytest.raises(ConfigError):
        PoolEndpoint("http://a/v1", concurrency=0)


# -- against loopback servers --------------------------------------------------------------------


def test_load_spreads_across_endpoints_and_a_smaller_bound_gets_less() -> None:
    # Equal latencies: this checks the concurrency bounds; routing by latency is checked next.
    with servers({"latency": 0.05}, {"latency": 0.05}, {"latency": 0.05}) as pool_servers:
        a, b, c = pool_servers
        pool = make_pool(
            [
                PoolEndpoint(a.base_url, concurrency=4),
                PoolEndpoint(b.base_url, concurrency=4),
                PoolEndpoint(c.base_url, concurrency=1),
            ],
            max_n=2,
        )

        async def draw() -> list[SampleBatch]:
            async with pool:
                return list(await asyncio.gather(*(pool.sample(f"p{i}", 12) for i in range(4))))

        batches = run(draw())
        for i, batch in enumerate(batches):
            assert_each_sample_once(batch, f"p{i}", 12, 2)
        counts = [server.request_count for server in pool_servers]
        assert sum(counts) == 24 and all(count > 0 for count in counts)
        assert c.request_count < a.request_count and c.request_count < b.request_count
        assert a.peak_concurrency <= 4 and b.peak_concurrency <= 4 and c.peak_concurrency == 1
        assert a.peak_concurrency >= 2  # the chunks did run side by side
        assert [s.requests for s in pool.stats] == counts
        assert all(s.outstanding == 0 and s.healthy and s.failures == 0 for s in pool.stats)
        assert_usage_matches(Usage.total([batch.usage for batch in batches]), pool_servers)


def test_a_slow_endpoint_gets_few_requests_and_the_fast_ones_the_rest() -> None:
    # Eight clients, each drawing one sample at a time; bounds far above what is in flight, so
    # only the routing decides. Round-robin would send a third of the requests to the slow
    # server; least-outstanding sends one there only while it has fewer in flight than the
    # others (and, once it is known to be slow, not when all are idle).
    clients, rounds = 8, 10
    with servers({"latency": 0.01}, {"latency": 0.01}, {"latency": 1.0}) as pool_servers:
        a, b, slow = pool_servers
        pool = make_pool([s.base_url for s in pool_servers], max_n=1, concurrency=64)

        async def client(number: int) -> list[SampleBatch]:
            return [await pool.sample(f"c{number}", 1, start_index=i) for i in range(rounds)]

        async def draw() -> list[list[SampleBatch]]:
            async with pool:
                return list(await asyncio.gather(*(client(number) for number in range(clients))))

        batches = run(draw())
        total = clients * rounds
        counts = [server.request_count for server in pool_servers]
        assert sum(counts) == total
        assert slow.request_count <= 0.15 * total, counts  # round-robin: a third
        assert a.request_count >= 0.4 * total and b.request_count >= 0.4 * total, counts
        assert [s.requests for s in pool.stats] == counts
        fast, slowest = pool.stats[0].latency, pool.stats[2].latency
        assert fast is not None and slowest is not None and slowest > 0.9 > 10 * fast
        flat = [batch for per_client in batches for batch in per_client]
        assert_usage_matches(Usage.total([batch.usage for batch in flat]), pool_servers)


def test_an_endpoint_failing_mid_run_loses_no_sample_and_counts_none_twice() -> None:
    failing = Fault("server_error", on_requests=frozenset(range(2, 10_000)))
    with servers(
        {"latency": 0.02}, {"latency": 0.02, "faults": (failing,)}, {"latency": 0.02}
    ) as pool_servers:
        a, b, c = pool_servers
        pool = make_pool([a.base_url, b.base_url, c.base_url], max_n=4, concurrency=3)

        async def draw() -> list[SampleBatch]:
            async with pool:
                return list(await asyncio.gather(pool.sample("x", 40), pool.sample("y", 40)))

        batches = run(draw())
        assert_each_sample_once(batches[0], "x", 40, 4)
        assert_each_sample_once(batches[1], "y", 40, 4)
        usage = Usage.total([batch.usage for batch in batches])
        assert_usage_matches(usage, pool_servers)
        failed = failed_generations(b)
        assert failed and all(r.status == 500 for r in failed)
        assert usage.failed_requests == len(failed)
        assert usage.samples == 80
        # Every failed request was sent again elsewhere with the same seed and size.
        resent = {
            (r.body["messages"][-1]["content"], r.body["seed"], r.body.get("n", 1))
            for server in (a, c)
            for r in server.records
            if r.delivered and r.body
        }
        for record in failed:
            body = record.body
            assert (body["messages"][-1]["content"], body["seed"], body.get("n", 1)) in resent
        down = pool.stats[1]
        assert not down.healthy and down.failures == len(failed) and down.samples == 8
        assert pool.stats[0].healthy and pool.stats[2].healthy


def test_a_server_stopped_mid_run_is_failed_over() -> None:
    with servers({"latency": 0.1}, {"latency": 0.1}, {"latency": 0.1}) as pool_servers:
        a, b, c = pool_servers
        pool = make_pool([a.base_url, b.base_url, c.base_url], max_n=2, concurrency=2)

        async def draw() -> SampleBatch:
            async with pool:
                task = asyncio.create_task(pool.sample("q", 40))
                # c has answered once and has a request in flight.
                await eventually(lambda: c.request_count >= 3)
                await asyncio.to_thread(c.stop)
                return await task

        batch = run(draw())
        assert_each_sample_once(batch, "q", 40, 2)
        assert_usage_matches(batch.usage, pool_servers)
        assert batch.usage.failed_requests >= 1
        assert not pool.stats[2].healthy
        assert pool.stats[0].healthy and pool.stats[1].healthy


def test_all_endpoints_down_raises_with_every_sample_that_arrived() -> None:
    failing = Fault("server_error", on_requests=frozenset(range(1, 10_000)))
    with servers({"faults": (failing,)}, {"faults": (failing,)}) as pool_servers:
        pool = make_pool([s.base_url for s in pool_servers], max_n=2, concurrency=1)
        with pytest.raises(EndpointsDown) as caught:
            run(pool.sample("q", 12))
        partial = caught.value.partial
        assert isinstance(partial, SampleBatch)
        assert [c.index for c in partial.candidates] == [0, 1, 2, 3]
        assert_usage_matches(partial.usage, pool_servers)
        assert partial.usage.failed_requests == 2
        assert not any(s.healthy for s in pool.stats)


def test_a_down_endpoint_is_probed_after_its_cooldown_and_used_again() -> None:
    failing = Fault("server_error", on_requests=frozenset({0}))
    with servers({"faults": (failing,)}) as (server,):
        pool = make_pool([server.base_url], max_n=4, cooldown=0.3)

        async def draw() -> SampleBatch:
            async with pool:
                with pytest.raises(EndpointsDown):
                    await pool.sample("q", 4)
                assert not pool.stats[0].healthy
                with pytest.raises(EndpointsDown):  # still cooling down: not even probed
                    await pool.sample("q", 4)
                await asyncio.sleep(0.35)
                return await pool.sample("q", 4)

        batch = run(draw())
        assert_each_sample_once(batch, "q", 4, 4)
        probes = [r for r in server.records if r.path == "/v1/models"]
        assert len(probes) == 1 and probes[0].method == "GET" and probes[0].status == 200
        assert pool.stats[0].healthy and pool.stats[0].probes == 1
        assert server.request_count == 2  # the failed request and the one after the probe


def test_failure_threshold_tolerates_isolated_failures() -> None:
    flaky = Fault("server_error", every=3)
    with servers({"faults": (flaky,)}) as (server,):
        pool = make_pool([server.base_url], max_n=1, concurrency=1, failure_threshold=2)
        batch = run(pool.sample("q", 9))
        assert [c.index for c in batch.candidates] == list(range(9))
        assert batch.usage.failed_requests == len(failed_generations(server)) >= 3
        assert_usage_matches(batch.usage, [server])
        assert pool.stats[0].healthy


def test_background_health_checks_find_a_dead_endpoint_without_a_request() -> None:
    with servers({}, {}) as (alive, dead):
        dead.stop()
        pool = make_pool([alive.base_url, dead.base_url], health_check_interval=0.05)

        async def watch() -> tuple[EndpointState, ...]:
            async with pool:
                await pool.sample("q", 2)
                await eventually(lambda: not pool.stats[1].healthy)
                return pool.stats

        stats = run(watch())
        assert stats[0].healthy and not stats[1].healthy
        assert stats[1].requests == 0  # found by the probe, not by a failed request
        assert any(r.path == "/v1/models" for r in alive.records)


def test_a_bad_request_is_not_failed_over_and_marks_nothing_down() -> None:
    with servers({}, {}) as pool_servers:
        pool = make_pool([s.base_url for s in pool_servers], max_n=4)
        params = SamplingParams(seed=SEED, extra_body={"temperature": "hot"})
        with pytest.raises(UpstreamError) as caught:
            run(pool.sample("q", 4, params))
        assert caught.value.status_code == 400
        assert sum(s.request_count for s in pool_servers) == 1
        assert all(s.healthy for s in pool.stats)
        assert isinstance(caught.value.partial, SampleBatch)
        assert caught.value.partial.usage.failed_requests == 1


def test_the_pool_draws_the_same_seeds_as_one_sampler() -> None:
    with servers({}, {}) as pool_servers:
        pool = make_pool([s.base_url for s in pool_servers], max_n=3)
        batch = run(pool.sample("q", 10, start_index=5))
        seeds = [c.seed for c in batch.candidates]
        # OpenAISampler cuts 5..14 into 5-7, 8-10, 11-13, 14 and seeds each by its first index.
        starts = [5, 5, 5, 8, 8, 8, 11, 11, 11, 14]
        assert seeds == [derive_seed(SEED, start) for start in starts]
        assert pool.base_seed == SEED


# -- ready-made samplers -------------------------------------------------------------------------


class BrokenSampler:
    """A sampler that fails with a plain exception after delivering its first ``good`` calls."""

    def __init__(self, inner: Sampler, good: int = 0) -> None:
        self.inner = inner
        self.good = good
        self.calls = 0
        self.base_seed = getattr(inner, "base_seed", None)

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        self.calls += 1
        if self.calls > self.good:
            raise RuntimeError("connection refused")
        return await self.inner.sample(prompt, n, params, start_index=start_index)


def test_ready_made_samplers_fail_over_and_come_back_on_trial() -> None:
    scripted = ScriptedSampler(lambda text, index: f"{text}#{index}")
    broken = BrokenSampler(ScriptedSampler(lambda text, index: f"{text}#{index}"), good=1)
    pool = PoolSampler(endpoints=[broken, scripted], max_n=2, cooldown=0.05, concurrency=1)
    assert pool.base_seed == 0  # the seed both ready-made samplers share

    async def draw() -> tuple[SampleBatch, SampleBatch]:
        first = await pool.sample("q", 8)
        assert pool.stats[0].failures == 1 and not pool.stats[0].healthy
        await asyncio.sleep(0.06)
        return first, await pool.sample("r", 8)

    first, second = run(draw())
    assert [c.text for c in first.candidates] == [f"q#{i}" for i in range(8)]
    assert [c.text for c in second.candidates] == [f"r#{i}" for i in range(8)]
    # A plain exception says nothing of what it spent: it counts as one failed request.
    assert first.usage.failed_requests == 1 and first.usage.samples == 8
    assert first.usage.requests == 8  # the scripted samplers count one request per sample
    # With no URL to probe, a cooled-down sampler is tried again rather than written off.
    assert pool.stats[0].failures == 2 and pool.stats[0].requests == 3
    assert second.usage.failed_requests == 1


def test_a_candidate_outside_its_chunk_is_not_taken() -> None:
    class Sloppy:
        async def sample(
            self,
            prompt: Prompt,
            n: int,
            params: SamplingParams | None = None,
            *,
            start_index: int = 0,
        ) -> SampleBatch:
            extra = Candidate(text="stray", index=start_index + n)
            own = tuple(
                Candidate(text=str(i), index=i) for i in range(start_index, start_index + n)
            )
            return SampleBatch((*own, extra), Usage(requests=1, samples=n + 1))

    pool = PoolSampler(endpoints=[Sloppy()], max_n=4)
    batch = run(pool.sample("q", 8))
    assert [c.text for c in batch.candidates] == [str(i) for i in range(8)]
    assert batch.usage.requests == 2


class FirstOnly:
    """A sampler that delivers only the first sample of each draw, and says nothing is wrong."""

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        return SampleBatch((Candidate(text=str(start_index), index=start_index),), Usage(samples=1))


def test_failovers_stop_at_max_failovers_with_what_arrived() -> None:
    # Each draw of 0..3 delivers its first index: three failovers finish the call (control) ...
    batch = run(PoolSampler(endpoints=[FirstOnly()], max_n=4, max_failovers=3).sample("q", 4))
    assert [c.index for c in batch.candidates] == [0, 1, 2, 3]
    # ... and with two allowed, the call gives up after them, carrying what did arrive.
    with pytest.raises(SamplerError, match=r"gave up after 2 failover\(s\)") as raised:
        run(PoolSampler(endpoints=[FirstOnly()], max_n=4, max_failovers=2).sample("q", 4))
    assert isinstance(raised.value.partial, SampleBatch)
    assert [c.index for c in raised.value.partial.candidates] == [0, 1, 2]
    assert raised.value.__cause__ is None  # nothing failed: samples were missing
    # An endpoint's error is the cause of giving up.
    broken = BrokenSampler(ScriptedSampler(lambda text, index: text))
    pool = PoolSampler(endpoints=[broken], max_n=4, max_failovers=1, failure_threshold=5)
    with pytest.raises(SamplerError, match="connection refused") as raised:
        run(pool.sample("q", 4))
    assert isinstance(raised.value.__cause__, RuntimeError) and broken.calls == 2


def test_a_cancelled_call_frees_its_slots() -> None:
    with servers({"latency": 0.5}) as (server,):
        pool = make_pool([server.base_url], max_n=1, concurrency=4)

        async def cancel() -> tuple[EndpointState, ...]:
            async with pool:
                task = asyncio.create_task(pool.sample("q", 8))
                await asyncio.sleep(0.1)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                return pool.stats

        (stats,) = run(cancel())
        assert stats.outstanding == 0 and stats.healthy and stats.failures == 0


def test_sampler_error_is_the_base_of_endpoints_down() -> None:
    assert issubclass(EndpointsDown, SamplerError)


# -- other models on the same endpoints (with_model) ---------------------------------------------


def by_model(request: ScriptRequest) -> str:
    """Each model answers in its own way; a fuse says 42 when an answer it read did."""
    model = request.body["model"]
    if request.prompt.startswith("Several assistants"):
        return (
            f"{model} fused: \\boxed{{42}}" if "42" in request.prompt else f"{model}: \\boxed{{0}}"
        )
    return {"strong": "strong: \\boxed{42}", "weak": "weak: \\boxed{41}"}[model]


def test_with_model_shares_health_and_each_endpoints_bound() -> None:
    with servers({"latency": 0.05}, {"latency": 0.05}) as pool_servers:
        a, b = pool_servers
        pool = make_pool([a.base_url, b.base_url], max_n=1, concurrency=1)
        twin = pool.with_model("other")
        assert twin.config.model == "other" and pool.config.model == "loopback"

        async def draw() -> list[SampleBatch]:
            async with pool:
                async with twin:  # closing the twin closes nothing the pool still uses
                    pass
                return list(await asyncio.gather(pool.sample("p", 6), twin.sample("p", 6)))

        mine, theirs = run(draw())
        assert_each_sample_once(mine, "p", 6, 1)
        assert_each_sample_once(theirs, "p", 6, 1)  # the same seeds: they follow the index
        # One bound per endpoint whatever the model: never two requests at once on a server.
        assert a.peak_concurrency == 1 and b.peak_concurrency == 1
        models = [r.body["model"] for s in pool_servers for r in s.records if r.body]
        assert sorted(models) == ["loopback"] * 6 + ["other"] * 6
        # One state per endpoint: the twin's requests are in the pool's stats, and vice versa.
        assert pool.stats == twin.stats
        assert [s.requests for s in pool.stats] == [a.request_count, b.request_count]
        assert sum(s.requests for s in pool.stats) == 12
        assert_usage_matches(mine.usage + theirs.usage, pool_servers)


def test_a_server_down_for_one_model_is_down_for_the_other() -> None:
    failing = Fault("server_error", on_requests=frozenset(range(10_000)))
    with servers({}, {"faults": (failing,)}) as (good, bad):
        pool = make_pool([good.base_url, bad.base_url], max_n=1, concurrency=1, cooldown=60)
        twin = pool.with_model("other")

        async def draw() -> tuple[SampleBatch, SampleBatch]:
            async with pool:
                first = await pool.sample("p", 4)
                assert not twin.stats[1].healthy  # learnt by the pool, seen by the twin
                return first, await twin.sample("p", 4)

        first, second = run(draw())
        assert first.usage.failed_requests == 1  # the bad server was tried once, by the pool
        assert second.usage.failed_requests == 0  # and never by the twin
        assert [r.body["model"] for r in bad.records if r.body] == ["loopback"]
        assert_each_sample_once(second, "p", 4, 1)


def test_with_model_needs_endpoints_that_can_switch() -> None:
    pool = PoolSampler(endpoints=[ScriptedSampler(lambda text, index: text)], max_n=1)
    with pytest.raises(ConfigError, match=r"pool endpoint ScriptedSampler#0: .* cannot switch"):
        pool.with_model("other")


def test_a_two_model_graph_runs_on_a_pool_of_two_servers() -> None:
    from ttscale.strategies.graphs import GraphStrategy, mixture_of_agents

    spec = mixture_of_agents(["weak", "strong", "strong"], "strong")
    problem = Problem(id="q", prompt="What is 6 * 7?", answer="42")
    with contextlib.ExitStack() as stack:
        pool_servers = [
            stack.enter_context(LoopbackServer(answers=by_model, latency=0.05)) for _ in range(2)
        ]
        # The pool's own model is neither: every node asks its model through with_model.
        pool = make_pool([s.base_url for s in pool_servers], max_n=1, concurrency=4)

        async def solve() -> Any:
            async with pool:
                return await GraphStrategy(spec=spec).run(problem, pool)

        result = run(solve())
    assert result.text == "strong fused: \\boxed{42}" and result.answers == ("42",)
    bodies = [r.body for s in pool_servers for r in s.records if r.body]
    assert sorted(b["model"] for b in bodies) == ["strong"] * 3 + ["weak"]
    assert all(s.request_count > 0 for s in pool_servers)  # the proposers were spread
    assert [s.requests for s in pool.stats] == [s.request_count for s in pool_servers]
    assert_usage_matches(result.usage, pool_servers)
    fuse = [b for b in bodies if b["messages"][-1]["content"].startswith("Several")]
    assert len(fuse) == 1 and "[1] weak: \\boxed{41}" in fuse[0]["messages"][-1]["content"]


def test_solve_runs_a_two_model_graph_over_comma_separated_servers(tmp_path: Path) -> None:
    from ttscale.solve import SolveConfig, solve
    from ttscale.strategies.graphs import multi_model_vote

    spec_path = multi_model_vote(["weak", "strong", "strong"]).save(tmp_path / "vote.json")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "p1", "prompt": "What is 6 * 7?", "answer": "42"}) + "\n")
    with contextlib.ExitStack() as stack:
        pool_servers = [stack.enter_context(LoopbackServer(answers=by_model)) for _ in range(2)]
        summary = run(
            solve(
                SolveConfig(dataset=str(data), out=tmp_path / "out.jsonl", strategy=str(spec_path)),
                base_url=",".join(s.base_url for s in pool_servers),
                model="weak",
            )
        )
        served = [s.delivered_usage() for s in pool_servers]
    assert summary.accuracy == 1.0
    (record,) = summary.records
    assert record["n"] == 3 and record["usage"]["samples"] == 3
    assert record["usage"]["completion_tokens"] == sum(d["completion_tokens"] for d in served)
    assert sum(d["requests"] for d in served) == 3


def test_a_partial_override_is_completed_by_the_pools_settings_on_every_endpoint() -> None:
    with servers({}, {}) as (a, b):
        # A ready-made endpoint with settings of its own, and a URL the pool makes a sampler for.
        own = OpenAISampler(
            model="loopback",
            base_url=a.base_url,
            api_key="test",
            max_retries=0,
            params=SamplingParams(seed=SEED, max_tokens=50, temperature=1.0),
        )
        pool = make_pool([own, b.base_url], max_n=1, params=SamplingParams(seed=SEED, max_tokens=3))

        async def draw() -> SampleBatch:
            async with own, pool:
                return await pool.sample("q", 4, SamplingParams(temperature=0.5))

        batch = run(draw())
        bodies = [r.body for server in (a, b) for r in server.records if r.body]
        assert a.request_count > 0 and b.request_count > 0
        assert {(body["max_tokens"], body["temperature"]) for body in bodies} == {(3, 0.5)}
        assert [c.seed for c in batch.candidates] == [derive_seed(SEED, i) for i in range(4)]
        assert all(c.completion_tokens == 3 for c in batch.candidates)  # cut at the pool's 3
