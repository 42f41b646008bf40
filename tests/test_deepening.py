"""Iterative deepening through the real OpenAISampler against the loopback server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from ttscale import ConfigError, OpenAISampler, Problem, SamplingParams
from ttscale.strategies.deepening import (
    DeepeningSampler,
    IterativeDeepening,
    chatml,
    trigger_schedule,
)
from ttscale.strategies.majority import Majority
from ttscale.testing.server import LoopbackServer, ScriptRequest, count_tokens

QUESTION = "What is 6 * 7?"
FIRST = "Six sevens: 6 * 7 = 41, so \\boxed{41}."
SECOND = " Actually 6 * 7 = 42, so \\boxed{42}."
THIRD = " Yes, \\boxed{42}."
TRIGGER = " Wait, let me check."


def continuing(request: ScriptRequest) -> str:
    body = request.body
    if "messages" in body:
        last = body["messages"][-1]
        partial = last["content"] if last["role"] == "assistant" else ""
    else:
        partial = body["prompt"].split("<|im_start|>assistant\n", 1)[1]
    reflections = partial.count(TRIGGER.strip())
    return (FIRST, SECOND, THIRD)[min(reflections, 2)]


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=continuing) as running:
        yield running


def sampler(server: LoopbackServer, endpoint: str = "chat") -> OpenAISampler:
    return OpenAISampler(
        model="loopback",
        base_url=server.base_url,
        api_key="k",
        endpoint=endpoint,  # type: ignore[arg-type]
        params=SamplingParams(seed=3),
    )


def test_trigger_schedule_is_geometric_and_capped() -> None:
    assert trigger_schedule(256, 2.0, 2048) == [256, 512, 1024, 2048]
    assert trigger_schedule(100, 3.0, 1000) == [100, 300, 900, 1000]
    assert trigger_schedule(5, 1.1, 7) == [5, 6, 7]  # always grows by at least one token
    assert trigger_schedule(64, 2.0, 64) == [64]
    with pytest.raises(ConfigError):
        DeepeningSampler(sampler=None, gamma=1.0)  # type: ignore[arg-type]


def test_segments_budgets_triggers_and_exact_tokens(server: LoopbackServer) -> None:
    async def go() -> Any:
        async with sampler(server) as inner:
            deep = DeepeningSampler(inner, b0=8, gamma=2.0, b_max=64, triggers=(TRIGGER,))
            return await deep.sample(QUESTION, 1, SamplingParams(temperature=0.5))

    batch = asyncio.run(go())
    (candidate,) = batch.candidates
    # Budgets 8, 16, 32, 64: three triggers; each segment gets what its budget leaves.
    requests = [r for r in server.records if r.body]
    assert len(requests) == 4
    # Segment s continued the answer as it stood after the s-th trigger.
    ends, position = [], 0
    for _ in range(3):
        position = candidate.text.index(TRIGGER, position) + len(TRIGGER)
        ends.append(position)
    generated = 0
    for segment, (record, budget) in enumerate(zip(requests, [8, 16, 32, 64], strict=True)):
        assert record.body is not None
        assert record.body["max_tokens"] == budget - generated
        messages = record.body["messages"]
        if segment == 0:
            assert messages == [{"role": "user", "content": QUESTION}]
        else:
            prefix = candidate.text[: ends[segment - 1]]
            assert messages[-1] == {"role": "assistant", "content": prefix}
        generated += record.completion_tokens
    # 8 tokens of the first reply, 8 more of the second, then the third twice, whole.
    assert candidate.text == (
        "Six sevens: 6 * 7 = 41" + TRIGGER + " Actually 6 * 7 = 42, so" + TRIGGER + THIRD
        + TRIGGER + THIRD
    )  # fmt: skip
    assert candidate.completion_tokens == generated
    served = server.delivered_usage()
    assert batch.usage.prompt_tokens == served["prompt_tokens"]  # every re-sent prompt counted
    assert batch.usage.completion_tokens == served["completion_tokens"]
    assert batch.usage.requests == 4 and batch.usage.samples == 1
    # Each re-sent prompt is the question and the answer so far, as the server counted it.
    for record in requests:
        assert record.body is not None
        sent = sum(count_tokens(m["content"]) + 4 for m in record.body["messages"])
        assert record.prompt_tokens == sent
    seeds = [r.body["seed"] for r in requests if r.body]
    assert len(set(seeds)) == 4


def test_no_trigger_on_a_cut_segment_when_asked(server: LoopbackServer) -> None:
    async def go() -> Any:
        async with sampler(server) as inner:
            deep = DeepeningSampler(
                inner, b0=4, gamma=2.0, b_max=8, triggers=(TRIGGER,), trigger_on_length=False
            )
            return await deep.sample(QUESTION, 1)

    (candidate,) = asyncio.run(go()).candidates
    # The first segment was cut at 4 tokens: it continues without reflecting.
    assert TRIGGER not in candidate.text
    requests = [r for r in server.records if r.body]
    assert [r.body["max_tokens"] for r in requests if r.body] == [4, 4]


def test_deepening_fixes_what_plain_majority_gets_wrong(server: LoopbackServer) -> None:
    problem = Problem(id="p", prompt=QUESTION, answer="42")

    async def go() -> tuple[Any, Any]:
        async with sampler(server) as inner:
            plain = await Majority(samples=4).run(problem, inner)
            deep = await IterativeDeepening(
                samples=4, b0=64, gamma=2.0, b_max=128, triggers=(TRIGGER,)
            ).run(problem, inner)
            return plain, deep

    plain, deep = asyncio.run(go())
    assert plain.answers == ("41",)
    assert deep.answers == ("42",)
    assert len(deep.candidates) == 4 and deep.usage.samples == 4
    assert deep.usage.requests == 8  # two segments per deepened sample
    assert deep.trace[0].step == "deepening" and deep.trace[0].data["budgets"] == [64, 128]


def test_text_continuation_on_the_completions_endpoint(server: LoopbackServer) -> None:
    async def go() -> Any:
        async with sampler(server, "completions") as inner:
            deep = DeepeningSampler(
                inner, b0=64, gamma=2.0, b_max=128, triggers=(TRIGGER,), continuation="text",
                template=chatml,
            )  # fmt: skip
            return await deep.sample(QUESTION, 2)

    batch = asyncio.run(go())
    assert [c.text for c in batch.candidates] == [FIRST + TRIGGER + SECOND] * 2
    prompts = [r.body["prompt"] for r in server.records if r.body]
    head = "<|im_start|>user\nWhat is 6 * 7?<|im_end|>\n<|im_start|>assistant\n"
    assert sorted(prompts) == sorted([head, head, head + FIRST + TRIGGER, head + FIRST + TRIGGER])
    with pytest.raises(ConfigError, match="template"):
        DeepeningSampler(sampler(server, "completions"), continuation="text")


def test_vllm_continuation_flags(server: LoopbackServer) -> None:
    async def go() -> Any:
        async with sampler(server) as inner:
            deep = DeepeningSampler(inner, b0=64, b_max=128, continuation="vllm")
            return await deep.sample(QUESTION, 1, SamplingParams(extra_body={"top_k": 5}))

    asyncio.run(go())
    first, second = [r.body for r in server.records if r.body]
    assert "continue_final_message" not in first and first["top_k"] == 5
    assert second["continue_final_message"] is True
    assert second["add_generation_prompt"] is False and second["top_k"] == 5
