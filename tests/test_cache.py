"""SampleCache and CachedSampler: keys, storage, and what a cached run asks a real server for."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ttscale.cache import (
    CachedSampler,
    SampleCache,
    candidate_from_dict,
    draw_description,
    draw_key,
    usage_shares,
)
from ttscale.errors import ConfigError, SamplerError, UpstreamError
from ttscale.samplers.openai_sampler import OpenAISampler
from ttscale.samplers.pool import PoolSampler
from ttscale.seeds import derive_seed
from ttscale.sync import SyncSampler
from ttscale.testing import ScriptedSampler
from ttscale.testing.server import Fault, LoopbackServer, ScriptRequest
from ttscale.types import Candidate, SampleBatch, SamplingParams, TokenLogprob, Usage

SEED = 77


def numbered(request: ScriptRequest) -> str:
    """A different answer per sample the server writes, so a re-drawn sample shows."""
    return f"answer {request.index} (seed {request.seed}, choice {request.choice})"


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=numbered) as running:
        yield running


def make_sampler(server: LoopbackServer, **params: Any) -> OpenAISampler:
    params.setdefault("seed", SEED)
    return OpenAISampler(
        model="loopback",
        base_url=server.base_url,
        api_key="test",
        max_retries=0,
        params=SamplingParams(**params),
    )


def draw(cached: CachedSampler, prompt: str, n: int, **kwargs: Any) -> SampleBatch:
    """One call on the one long-lived portal loop, where the sampler's HTTP clients live."""
    return SyncSampler(cached).sample(prompt, n, **kwargs)


def delivered(server: LoopbackServer) -> Usage:
    usage = server.delivered_usage()
    return Usage(
        requests=usage["requests"],
        samples=usage["samples"],
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
    )


def tokens(usage: Usage) -> tuple[int, int, int, int]:
    return (usage.requests, usage.samples, usage.prompt_tokens, usage.completion_tokens)


# -- keys and stored values ------------------------------------------------------------------------


def key_of(prompt: Any = "q", **changes: Any) -> str:
    settings: dict[str, Any] = {"model": "m", "base_seed": 1, "api": "chat"}
    params = SamplingParams(temperature=0.7, max_tokens=64)
    for name in ("model", "base_seed", "api"):
        if name in changes:
            settings[name] = changes.pop(name)
    return draw_key(prompt, params=params.replace(**changes), **settings)


def test_the_key_changes_with_every_setting_that_changes_the_output() -> None:
    base = key_of()
    variants = [
        key_of("other prompt"),
        key_of([{"role": "user", "content": "q"}]),
        key_of(model="m2"),
        key_of(base_seed=2),
        key_of(api="completions"),
        key_of(temperature=0.8),
        key_of(top_p=0.9),
        key_of(max_tokens=65),
        key_of(stop=("\n",)),
        key_of(logprobs=0),
        key_of(extra_body={"top_k": 20}),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_the_key_spells_equal_settings_one_way() -> None:
    messages = [{"role": "user", "content": "q", "name": "x"}]
    reordered = [{"name": "x", "content": "q", "role": "user"}]
    assert key_of(messages) == key_of(reordered) == key_of(tuple(messages))
    assert key_of(temperature=1) == key_of(temperature=1.0)
    assert key_of(stop=("a", "b")) == key_of(stop=("b", "a"))
    assert key_of(stop=()) == key_of(stop=None)
    assert key_of(extra_body={"a": 1, "b": 2}) == key_of(extra_body={"b": 2, "a": 1})
    with pytest.raises(ConfigError, match="not JSON"):
        key_of([{"role": "user", "content": object()}])


def test_candidates_round_trip_through_their_dict() -> None:
    candidate = Candidate(
        text="x",
        index=3,
        finish_reason="stop",
        completion_tokens=2,
        seed=9,
        model="m",
        latency_s=0.5,
        temperature=0.7,
        logprobs=(TokenLogprob("a", -0.1, (("a", -0.1), ("b", -2.0))), TokenLogprob("b", -0.2)),
        request_id="r1",
    )
    assert candidate_from_dict(json.loads(json.dumps(candidate.to_dict()))) == candidate
    assert candidate_from_dict({"text": "y", "index": 0, "unknown": 1}) == Candidate("y", 0)


def test_usage_shares_add_up_to_the_batch() -> None:
    candidates = tuple(Candidate("t", i, completion_tokens=i + 1) for i in range(3))
    usage = Usage(
        requests=2, samples=3, prompt_tokens=10, completion_tokens=6, cost=0.9, failed_requests=1
    )
    shares = usage_shares(SampleBatch(candidates, usage))
    total = Usage.total(shares)
    assert tokens(total) == tokens(usage) and total.failed_requests == 1
    assert total.cost == pytest.approx(0.9)
    assert [s.completion_tokens for s in shares] == [1, 2, 3]
    assert [s.prompt_tokens for s in shares] == [4, 3, 3]
    # Counts that do not add up to the total are replaced by an even split of it.
    odd = usage_shares(SampleBatch(candidates, usage.replace(completion_tokens=7)))
    assert [s.completion_tokens for s in odd] == [3, 2, 2]
    assert usage_shares(SampleBatch((), usage)) == []


def test_the_cache_is_sqlite_in_wal_mode_and_keeps_the_first_sample(tmp_path: Path) -> None:
    with SampleCache(tmp_path / "cache") as cache:
        assert cache.journal_mode == "wal"
        first = SampleBatch((Candidate("first", 0),), Usage(requests=1, samples=1))
        second = SampleBatch((Candidate("second", 0), Candidate("b", 1)), Usage(requests=1))
        assert cache.put("k", first, description={"what": "test"}) == 1
        assert cache.put("k", second) == 1  # index 0 was there already
        got = cache.get("k", [0, 1, 2])
        assert sorted(got) == [0, 1] and got[0].candidate.text == "first"
        assert cache.get("other", [0]) == {} and len(cache) == 2
        assert cache.describe("k") == {"what": "test"}
    assert (tmp_path / "cache" / "samples.sqlite3").exists()


def test_a_killed_process_keeps_every_committed_batch(tmp_path: Path) -> None:
    code = (
        "import os, signal, sys\n"
        "from ttscale.cache import SampleCache\n"
        "from ttscale.types import Candidate, SampleBatch, Usage\n"
        "cache = SampleCache(sys.argv[1])\n"
        "batch = SampleBatch((Candidate('a', 0), Candidate('b', 1)), Usage(1, 2, 7, 0))\n"
        "cache.put('k', batch)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    finished = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
    assert finished.returncode == -signal.SIGKILL
    cache = SampleCache(tmp_path)
    got = cache.get("k", range(2))
    assert [got[i].candidate.text for i in range(2)] == ["a", "b"]
    assert [got[i].usage.prompt_tokens for i in range(2)] == [4, 3]
    cache.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    SampleCache(tmp_path).close()
    with sqlite3.connect(tmp_path / "samples.sqlite3") as db:
        db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(Exception, match="newer ttscale"):
        SampleCache(tmp_path)


# -- a cached sampler in front of a real server --------------------------------------------------


def test_a_second_identical_run_sends_no_request(server: LoopbackServer, tmp_path: Path) -> None:
    cached = CachedSampler(make_sampler(server, temperature=0.7), tmp_path)
    first = draw(cached, "q", 6)
    assert tokens(first.usage) == tokens(delivered(server))
    requests = server.request_count
    second = draw(cached, "q", 6)
    assert server.request_count == requests
    assert second.candidates == first.candidates
    assert second.usage == Usage()  # what came from the cache cost nothing now
    assert (cached.hits, cached.misses) == (6, 6)
    assert tokens(cached.saved) == tokens(first.usage)
    assert tokens(cached.drawn) == tokens(first.usage)


def test_more_samples_draw_only_the_new_indices(server: LoopbackServer, tmp_path: Path) -> None:
    cached = CachedSampler(make_sampler(server), tmp_path)
    first = draw(cached, "q", 4)
    before = delivered(server)
    more = draw(cached, "q", 10)
    assert [c.index for c in more.candidates] == list(range(10))
    assert more.candidates[:4] == first.candidates
    (body,) = [r.body for r in server.records[1:] if r.body]
    assert body["n"] == 6 and body["seed"] == derive_seed(SEED, 4)  # asked from index 4 on
    assert all(c.seed == derive_seed(SEED, 4) for c in more.candidates[4:])
    after = delivered(server)
    assert tokens(more.usage) == tuple(
        x - y for x, y in zip(tokens(after), tokens(before), strict=True)
    )
    # A call starting part way: only what lies past the cached indices is drawn.
    shifted = draw(cached, "q", 10, start_index=2)
    assert [c.index for c in shifted.candidates] == list(range(2, 12))
    assert shifted.usage.samples == 2 and server.request_count == 3
    assert shifted.candidates[:8] == more.candidates[2:]


def test_gaps_are_drawn_as_runs_with_their_own_start_index(tmp_path: Path) -> None:
    inner = ScriptedSampler(lambda text, index: f"{text}{index}")
    cached = CachedSampler(inner, tmp_path, model="scripted")
    draw(cached, "q", 2, start_index=2)
    draw(cached, "q", 2, start_index=6)
    batch = draw(cached, "q", 10)
    assert [c.text for c in batch.candidates] == [f"q{i}" for i in range(10)]
    assert inner.calls[2:] == [("q", 2, 0), ("q", 2, 4), ("q", 2, 8)]
    assert batch.usage.samples == 6


def test_a_different_temperature_or_seed_misses(server: LoopbackServer, tmp_path: Path) -> None:
    cached = CachedSampler(make_sampler(server, temperature=0.7), tmp_path)
    draw(cached, "q", 3)
    count = server.request_count
    draw(cached, "q", 3, params=SamplingParams(seed=SEED, temperature=0.7))  # the defaults: a hit
    assert server.request_count == count
    hotter = draw(cached, "q", 3, params=SamplingParams(seed=SEED, temperature=1.0))
    assert server.request_count == count + 1 and hotter.usage.samples == 3
    reseeded = draw(cached, "q", 3, params=SamplingParams(seed=SEED + 1, temperature=0.7))
    assert server.request_count == count + 2 and reseeded.usage.samples == 3
    assert {c.seed for c in reseeded.candidates} == {derive_seed(SEED + 1, 0)}
    # A sampler with another base seed misses too.
    other = CachedSampler(make_sampler(server, temperature=0.7, seed=SEED + 2), tmp_path)
    draw(other, "q", 3)
    assert server.request_count == count + 3
    assert cached.misses == 9 and cached.hits == 3


def test_the_cache_persists_across_instances_and_event_loops(
    server: LoopbackServer, tmp_path: Path
) -> None:
    async def fresh_run() -> tuple[SampleBatch, CachedSampler]:
        # A new sampler, cache and event loop each time, as in a new process.
        async with make_sampler(server) as sampler:
            cached = CachedSampler(sampler, tmp_path)
            async with cached:
                return await cached.sample("q", 5), cached

    first, _ = asyncio.run(fresh_run())
    count = server.request_count
    batch, again = asyncio.run(fresh_run())
    assert server.request_count == count
    assert batch.candidates == first.candidates and again.hits == 5


def test_concurrent_calls_draw_a_sample_once(tmp_path: Path) -> None:
    with LoopbackServer(answers=numbered, latency=0.1) as slow:
        cached = CachedSampler(make_sampler(slow), tmp_path)

        async def run() -> list[SampleBatch]:
            return list(
                await asyncio.gather(
                    cached.sample("q", 8),
                    cached.sample("q", 8),
                    cached.sample("q", 8, start_index=4),
                )
            )

        one, two, three = asyncio.run(run())
        assert one.candidates == two.candidates
        assert three.candidates[:4] == one.candidates[4:]
        assert [c.index for c in three.candidates] == list(range(4, 12))
        assert slow.delivered_usage()["samples"] == 12
        total = one.usage + two.usage + three.usage
        assert tokens(total) == tokens(delivered(slow))


def test_a_failed_draw_keeps_what_it_paid_for(tmp_path: Path) -> None:
    fault = Fault("server_error", on_requests=frozenset({1}))
    with LoopbackServer(answers=numbered, faults=(fault,)) as failing:
        sampler = OpenAISampler(
            model="loopback",
            base_url=failing.base_url,
            api_key="test",
            max_retries=0,
            max_n=1,
            concurrency=1,
            params=SamplingParams(seed=SEED),
        )
        cached = CachedSampler(sampler, tmp_path)
        with pytest.raises(UpstreamError) as caught:
            draw(cached, "q", 4)
        partial = caught.value.partial
        assert [c.index for c in partial.candidates] == [0, 2, 3]
        assert partial.usage.failed_requests == 1
        count = failing.request_count
        batch = draw(cached, "q", 4)
        assert [c.index for c in batch.candidates] == list(range(4))
        assert failing.request_count == count + 1 and batch.usage.samples == 1
        assert batch.candidates[0] == partial.candidates[0]


def test_a_sampler_returning_too_few_samples_is_an_error(tmp_path: Path) -> None:
    class Short:
        async def sample(
            self, prompt: Any, n: int, params: Any = None, *, start_index: int = 0
        ) -> SampleBatch:
            return SampleBatch((Candidate("x", start_index),), Usage(requests=1, samples=1))

    cached = CachedSampler(Short(), tmp_path, model="m")
    with pytest.raises(SamplerError, match="no sample for 2") as caught:
        draw(cached, "q", 3)
    assert [c.index for c in caught.value.partial.candidates] == [0]


def test_the_model_name_is_needed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model"):
        CachedSampler(ScriptedSampler({"q": ["a"]}), tmp_path)


def test_a_cached_pool_of_endpoints(tmp_path: Path) -> None:
    with LoopbackServer(answers=numbered) as a, LoopbackServer(answers=numbered) as b:
        pool = PoolSampler(
            endpoints=[a.base_url, b.base_url],
            model="loopback",
            api_key="test",
            max_n=2,
            params=SamplingParams(seed=SEED),
        )
        cached = CachedSampler(pool, tmp_path)
        assert cached.describe("q")["seed"] == SEED and cached.api == "chat"
        first = draw(cached, "q", 8)
        count = a.request_count + b.request_count
        assert count == 4
        second = draw(cached, "q", 8)
        assert a.request_count + b.request_count == count
        assert second.candidates == first.candidates


def test_describe_matches_the_module_function(server: LoopbackServer, tmp_path: Path) -> None:
    sampler = make_sampler(server, temperature=0.5)
    cached = CachedSampler(sampler, tmp_path)
    assert cached.describe("q") == draw_description(
        "q", model="loopback", params=sampler.config.params, base_seed=SEED, api="chat"
    )


def test_a_partial_override_is_keyed_with_the_samplers_own_settings(
    server: LoopbackServer, tmp_path: Path
) -> None:
    # Strategies pass overrides that set only what they change; the sampler keeps the rest, and
    # so must the key: two samplers that differ in max_tokens never share a sample.
    override = SamplingParams(temperature=0.5)
    short = CachedSampler(make_sampler(server, max_tokens=2), tmp_path)
    long = CachedSampler(make_sampler(server, max_tokens=50), tmp_path)
    cut = draw(short, "q", 1, params=override)
    whole = draw(long, "q", 1, params=override)
    assert server.request_count == 2  # the second was not answered with the first's sample
    bodies = [r.body for r in server.records if r.body]
    assert [(b["max_tokens"], b["temperature"]) for b in bodies] == [(2, 0.5), (50, 0.5)]
    assert cut.candidates[0].completion_tokens == 2 < whole.candidates[0].completion_tokens
    # The override and its merged settings are one key: spelling it out is a hit.
    draw(short, "q", 1, params=SamplingParams(seed=SEED, temperature=0.5, max_tokens=2))
    assert server.request_count == 2 and short.hits == 1
    assert short.key("q", override) == short.key("q", SamplingParams(temperature=0.5, max_tokens=2))


def test_a_sample_cut_short_is_not_cached_and_an_old_cached_one_is_replaced(
    tmp_path: Path,
) -> None:
    import sqlite3

    cut = Candidate("half an ans", 0, finish_reason="error", completion_tokens=3)
    whole = Candidate("half an answer", 0, finish_reason="stop", completion_tokens=5)
    with SampleCache(tmp_path / "cache") as cache:
        assert cache.put("k", SampleBatch((cut,), Usage(requests=1, samples=1))) == 0
        assert cache.get("k", [0]) == {}
    # What an earlier version kept: the cut sample, written straight into the table.
    database = sqlite3.connect(tmp_path / "cache" / "samples.sqlite3")
    database.execute(
        "INSERT INTO samples (draw, idx, candidate, usage, created) VALUES (?, ?, ?, ?, 0)",
        ("k", 0, json.dumps(cut.to_dict()), json.dumps({"samples": 1})),
    )
    database.commit()
    database.close()
    with SampleCache(tmp_path / "cache") as cache:
        assert cache.get("k", [0])[0].candidate.cut_short
        assert cache.put("k", SampleBatch((whole,), Usage(requests=1, samples=1))) == 1
        assert cache.get("k", [0])[0].candidate.text == "half an answer"
        # ...and a whole sample, once stored, still never changes.
        other = Candidate("another answer", 0, finish_reason="stop")
        assert cache.put("k", SampleBatch((other,), Usage(requests=1, samples=1))) == 0
        assert cache.get("k", [0])[0].candidate.text == "half an answer"


def test_a_cached_sampler_draws_again_a_stream_a_failure_cut(tmp_path: Path) -> None:
    asked = asyncio.run(cached_cut_stream(tmp_path))
    assert asked == [3, 1, 0]  # the cut sample, not cached, is drawn again once


async def cached_cut_stream(tmp_path: Path) -> list[int]:
    from ttscale.errors import SamplerError
    from ttscale.samplers.openai_sampler import OpenAISampler
    from ttscale.testing.server import Fault
    from ttscale.types import SamplingParams

    params = SamplingParams(logprobs=0, seed=1)
    asked = []
    for faults in ((Fault("cut_stream", on_requests=frozenset({1})),), (), ()):
        async with LoopbackServer(default_answer="a b c d e f", faults=faults) as server:
            inner = OpenAISampler(model="m", base_url=server.base_url, concurrency=1)
            sampler = CachedSampler(inner, tmp_path / "cache")
            try:
                batch = await sampler.sample_watched("q", 3, params, watcher=lambda i: _Never())
                assert [c.text for c in batch.candidates] == ["a b c d e f"] * 3
            except SamplerError:
                assert faults  # only the server that cuts a stream fails the draw
            finally:
                await sampler.aclose()
            asked.append(server.request_count)
    return asked


class _Never:
    def feed(self, token: object) -> bool:
        return False
