"""Prefix reuse measured: the prompt tokens a server says it reused from its prefix cache are read
from its answers (``usage.prompt_tokens_details.cached_tokens``, llama.cpp's ``timings.cache_n``),
summed at the budget and reported by step-level search, against the loopback server with a prefix
cache (whose report is recomputed here by brute force)."""

from __future__ import annotations

import asyncio
from typing import Any

from ttscale.budget import BudgetedSampler
from ttscale.samplers.openai_sampler import OpenAISampler
from ttscale.strategies.beam_search import BeamSearch
from ttscale.strategies.particle_filtering import ParticleFiltering
from ttscale.testing.server import LoopbackServer, PrefixCache, prompt_token_sequence
from ttscale.testing.step_env import StepEnvironment
from ttscale.types import Result, SamplingParams, Usage
from ttscale.wire import cached_tokens

ENV = StepEnvironment.uniform(4, depth=3, p_step=0.8, false_positive=0.1, false_negative=0.1)


def test_cached_tokens_are_read_from_openai_and_llama_cpp_answers() -> None:
    openai_shape = {"usage": {"prompt_tokens": 43, "prompt_tokens_details": {"cached_tokens": 42}}}
    llama_timings = {"usage": {"prompt_tokens": 43}, "timings": {"cache_n": 40, "prompt_n": 3}}
    assert cached_tokens(openai_shape) == 42
    assert cached_tokens(llama_timings) == 40
    # A stream's usage comes from its last chunk, given apart.
    assert cached_tokens(None, openai_shape["usage"]) == 42
    for unsaid in ({}, {"usage": {"prompt_tokens": 9}}, None, {"usage": None}, "text"):
        assert cached_tokens(unsaid) == 0
    for odd in (-1, True, "42", 4.5):
        assert cached_tokens({"usage": {"prompt_tokens_details": {"cached_tokens": odd}}}) == 0
    # Control: the usage field wins over timings when both are there.
    both = {**openai_shape, "timings": {"cache_n": 7}}
    assert cached_tokens(both) == 42


def test_the_prefix_cache_reports_the_longest_shared_prefix() -> None:
    cache = PrefixCache()
    assert cache.reuse(("a", "b", "c")) == 0
    assert cache.reuse(("a", "b", "c", "d")) == 3
    assert cache.reuse(("a", "x")) == 1
    assert cache.reuse(("a", "b", "c", "d")) == 4
    small = PrefixCache(max_nodes=4)
    assert small.reuse(("a", "b", "c")) == 0
    assert small.reuse(("a", "b", "c", "d", "e")) == 0  # over its size: it started empty again
    chat = {"messages": [{"role": "user", "content": "Hi, you."}]}
    expected = ("<|im_start|>", "user", "\n", "Hi", ",", "you", ".", "<|im_end|>")
    assert prompt_token_sequence(chat, True) == expected


def _longest_shared(previous: list[tuple[str, ...]], tokens: tuple[str, ...]) -> int:
    best = 0
    for earlier in previous:
        shared = 0
        for a, b in zip(earlier, tokens, strict=False):
            if a != b:
                break
            shared += 1
        best = max(best, shared)
    return best


async def _search(strategy: Any, base_url: str) -> tuple[Result, BudgetedSampler]:
    async with OpenAISampler(
        base_url=base_url, model="loopback", api_key="x", params=SamplingParams(seed=3)
    ) as sampler:
        budget = BudgetedSampler(sampler)
        problem = ENV.problems()[0]
        result = await strategy.run(problem, budget.for_problem(problem.id))
    return result, budget


def _prefix(result: Result) -> dict[str, Any]:
    (event,) = [e.data for e in result.trace if e.step == "prefix"]
    return dict(event)


def test_a_search_counts_and_reports_the_prompt_tokens_the_server_reused() -> None:
    strategy = BeamSearch(samples=4, beam_width=2, reward=ENV.prm, max_steps=5)
    with ENV.server(prefix_cache=True) as server:
        result, budget = asyncio.run(_search(strategy, server.base_url))
        records = [r for r in server.records if r.generated]
    # What the server reported, recomputed by brute force over the bodies in arrival order.
    seen: list[tuple[str, ...]] = []
    expected = []
    for record in sorted(records, key=lambda r: r.ordinal):
        assert record.body is not None
        tokens = prompt_token_sequence(record.body, chat=True)
        expected.append(_longest_shared(seen, tokens))
        seen.append(tokens)
    assert [r.cached_tokens for r in sorted(records, key=lambda r: r.ordinal)] == expected
    reused = sum(expected)
    assert reused > 0  # every continuation re-sends the prompt and the steps before
    assert result.usage.cached_tokens == reused
    assert budget.spent.cached_tokens == reused
    assert budget.spent.to_dict()["cached_tokens"] == reused
    report = _prefix(result)
    assert report["cached_tokens"] == reused
    # What was reused is at most what was sent, and covers more than the re-sent partials (the
    # problem's prompt is cached too).
    assert report["resent"] < reused <= report["prompt_tokens"]


def test_without_a_prefix_cache_nothing_is_reported_reused() -> None:
    strategy = ParticleFiltering(samples=4, reward=ENV.prm, max_steps=5)
    with ENV.server() as server:
        result, budget = asyncio.run(_search(strategy, server.base_url))
        assert all(r.cached_tokens is None for r in server.records if r.generated)
    assert result.usage.cached_tokens == 0
    assert budget.spent.cached_tokens == 0
    assert _prefix(result)["cached_tokens"] == 0
    with ENV.server(prefix_cache=True) as server:  # control: the same search, cached
        cached, _ = asyncio.run(_search(strategy, server.base_url))
        again, _ = asyncio.run(_search(strategy, server.base_url))
        server.clear_prefix_cache()
        cold, _ = asyncio.run(_search(strategy, server.base_url))
    assert cached.usage.cached_tokens > 0
    assert cached.answers == result.answers
    # Run again, every prompt was served before: all of it is cached; cleared, as the first time.
    assert again.usage.cached_tokens == again.usage.prompt_tokens
    assert cold.usage.cached_tokens == cached.usage.cached_tokens


def test_usage_sums_cached_tokens() -> None:
    total = Usage(prompt_tokens=10, cached_tokens=4) + Usage(prompt_tokens=5, cached_tokens=5)
    assert total.cached_tokens == 9
    assert Usage.from_dict(total.to_dict()) == total


def test_a_streamed_answer_reports_cached_tokens_too() -> None:
    async def draw(base_url: str) -> list[int]:
        async with OpenAISampler(base_url=base_url, model="loopback", api_key="x") as sampler:
            out = []
            for _ in range(2):
                batch = await sampler.sample_watched(
                    "Count the apples in the basket.", 1, watcher=lambda index: _Never()
                )
                out.append(batch.usage.cached_tokens)
            return out

    with LoopbackServer(prefix_cache=True) as server:
        first, second = asyncio.run(draw(server.base_url))
    assert first == 0
    assert second == len(prompt_token_sequence({"messages": [_USER]}, chat=True))


_USER = {"role": "user", "content": "Count the apples in the basket."}


class _Never:
    def feed(self, token: Any) -> bool:
        return False
