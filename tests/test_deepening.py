"""Iterative deepening through the real OpenAISampler against the loopback server."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from ttscale import ConfigError, OpenAISampler, Problem, SampleBatch, SamplingParams
from ttscale.budget import BudgetedSampler, max_requests, max_samples
from ttscale.errors import UpstreamError
from ttscale.strategies.deepening import (
    DeepeningSampler,
    IterativeDeepening,
    chatml,
    trigger_schedule,
)
from ttscale.strategies.majority import Majority
from ttscale.testing.server import Fault, LoopbackServer, ScriptRequest, count_tokens

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


def test_a_budget_refusing_the_third_segment_keeps_the_first_two(server: LoopbackServer) -> None:
    async def go() -> tuple[Any, DeepeningSampler]:
        async with sampler(server) as inner:
            budget = BudgetedSampler(inner, limit=max_requests(2))
            deep = DeepeningSampler(budget, b0=8, gamma=2.0, b_max=64, triggers=(TRIGGER,))
            return await deep.sample(QUESTION, 1), deep

    batch, deep = asyncio.run(go())
    requests = [r for r in server.records if r.body]
    assert len(requests) == 2  # the third segment was never sent
    (candidate,) = batch.candidates
    # The answer as it stood after two segments: no dangling trigger for the refused third.
    assert candidate.text == "Six sevens: 6 * 7 = 41" + TRIGGER + " Actually 6 * 7 = 42, so"
    assert candidate.completion_tokens == sum(r.completion_tokens for r in requests) == 16
    served = server.delivered_usage()
    assert batch.usage.prompt_tokens == served["prompt_tokens"]
    assert batch.usage.completion_tokens == served["completion_tokens"]
    assert batch.usage.requests == served["requests"] == 2 and batch.usage.samples == 1
    record = deep.records[0]
    assert record["stopped"] == "budget" and record["triggers"] == [TRIGGER]
    first, second = record["segments"]
    assert (first["trigger"], first["start"]) == (None, 0)
    assert candidate.text[first["start"] : first["end"]] == "Six sevens: 6 * 7 = 41"
    assert candidate.text[first["end"] : second["start"]] == TRIGGER
    assert second["end"] == len(candidate.text)
    assert [s["usage"]["completion_tokens"] for s in record["segments"]] == [
        r.completion_tokens for r in requests
    ]


def test_a_failed_third_segment_raises_with_what_was_paid_for() -> None:
    # Generation request 2 (the third segment of the only sample) answers 500.
    fault = Fault("server_error", on_requests=frozenset({2}))
    with LoopbackServer(answers=continuing, faults=(fault,)) as server:

        async def go() -> tuple[Any, DeepeningSampler]:
            inner = OpenAISampler(
                model="loopback", base_url=server.base_url, api_key="k", max_retries=0
            )
            async with inner:
                deep = DeepeningSampler(inner, b0=8, gamma=2.0, b_max=64, triggers=(TRIGGER,))
                with pytest.raises(UpstreamError) as raised:
                    await deep.sample(QUESTION, 1)
                return raised.value, deep

        error, deep = asyncio.run(go())
        served = server.delivered_usage()
    assert error.status_code == 500
    partial = error.partial
    assert isinstance(partial, SampleBatch)
    (candidate,) = partial.candidates
    assert candidate.text == "Six sevens: 6 * 7 = 41" + TRIGGER + " Actually 6 * 7 = 42, so"
    assert partial.usage.prompt_tokens == served["prompt_tokens"]
    assert partial.usage.completion_tokens == served["completion_tokens"]
    assert partial.usage.requests == served["requests"] == 2
    assert partial.usage.failed_requests == 1 and partial.usage.samples == 1
    assert deep.records[0]["stopped"] == "error" and len(deep.records[0]["segments"]) == 2


def test_a_strategy_under_a_sample_limit_keeps_every_deepened_sample(
    server: LoopbackServer,
) -> None:
    problem = Problem(id="p", prompt=QUESTION, answer="42")

    async def go() -> Any:
        async with sampler(server) as inner:
            # Segments are the budget's samples: three for two deepened samples of two segments.
            budget = BudgetedSampler(inner, per_problem=max_samples(3)).for_problem("p")
            return await IterativeDeepening(
                samples=2, b0=64, gamma=2.0, b_max=128, triggers=(TRIGGER,)
            ).run(problem, budget)

    result = asyncio.run(go())
    assert len(result.candidates) == 2 and result.usage.samples == 2
    served = server.delivered_usage()
    assert served["requests"] == 3
    assert result.usage.prompt_tokens == served["prompt_tokens"]
    assert result.usage.completion_tokens == served["completion_tokens"]
    samples = result.trace[0].data["samples"]
    assert [s["index"] for s in samples] == [c.index for c in result.candidates]
    assert sorted(len(s["segments"]) for s in samples) == [1, 2]
    assert sorted(str(s["stopped"]) for s in samples) == ["None", "budget"]
    by_index = {c.index: c.text for c in result.candidates}
    for record in samples:
        expected = FIRST if len(record["segments"]) == 1 else FIRST + TRIGGER + SECOND
        assert by_index[record["index"]] == expected


class EstimatingSampler:
    """Draws from the real server but, like a generate function that returns only text, knows its
    token counts only as estimates: it marks every candidate ``tokens_exact=False`` from a chosen
    segment (draw call) on."""

    def __init__(self, inner: OpenAISampler, inexact_from: int) -> None:
        self.inner = inner
        self.inexact_from = inexact_from
        self.calls = 0

    async def sample(
        self, prompt: Any, n: int, params: Any = None, *, start_index: int = 0
    ) -> SampleBatch:
        batch = await self.inner.sample(prompt, n, params, start_index=start_index)
        self.calls += 1
        if self.calls <= self.inexact_from:
            return batch
        marked = tuple(dataclasses.replace(c, tokens_exact=False) for c in batch.candidates)
        return SampleBatch(marked, batch.usage)


@pytest.mark.parametrize(("inexact_from", "exact"), [(4, True), (1, False)])
def test_a_sample_is_exact_only_if_every_segment_was(
    server: LoopbackServer, inexact_from: int, exact: bool
) -> None:
    async def go() -> Any:
        async with sampler(server) as inner:
            estimating = EstimatingSampler(inner, inexact_from)
            deep = DeepeningSampler(estimating, b0=8, gamma=2.0, b_max=64, triggers=(TRIGGER,))
            batch = await deep.sample(QUESTION, 1)
            return batch, deep

    batch, deep = asyncio.run(go())
    (candidate,) = batch.candidates
    assert candidate.tokens_exact is exact
    flags = [s["tokens_exact"] for s in deep.records[0]["segments"]]
    assert flags == [True] * min(inexact_from, 4) + [False] * (4 - min(inexact_from, 4))


def _deepened(prompt: Any, echo: bool) -> tuple[str, list[list[dict[str, Any]]]]:
    """One deepened answer to ``prompt`` (``echo``: from a server that sends each prefill back,
    as llama.cpp's does): the answer and the messages of each request."""
    with LoopbackServer(answers=continuing, echo_prefill=echo) as running:

        async def go() -> Any:
            async with sampler(running) as inner:
                deep = DeepeningSampler(inner, b0=16, gamma=2.0, b_max=64, triggers=(TRIGGER,))
                return await deep.sample(prompt, 1, SamplingParams(temperature=0.5))

        (candidate,) = asyncio.run(go()).candidates
        sent = [r.body["messages"] for r in running.records if r.body]
    return candidate.text, sent


def _deepened_on_an_echoing_server() -> tuple[str, int]:
    """One deepened answer from a server that sends each prefill back; the prefills it got."""
    text, sent = _deepened(QUESTION, echo=True)
    return text, sum(messages[-1]["role"] == "assistant" for messages in sent)


def test_a_server_that_sends_the_prefill_back_is_continued_once() -> None:
    # llama.cpp's llama-server answers a prefilled assistant message with the prefill and its
    # continuation: the deepened answer holds each segment once all the same.
    text, prefills = _deepened_on_an_echoing_server()
    assert prefills == 2
    assert text == FIRST + TRIGGER + SECOND + TRIGGER + THIRD


def test_control_a_continuation_read_with_its_prefill_holds_the_answer_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ttscale.strategies.deepening as deepening

    monkeypatch.setattr(deepening, "added_text", lambda returned, partial, continuation: returned)
    text, _ = _deepened_on_an_echoing_server()
    assert text.count(FIRST) > 1


PREFILL = "Let me compute."


def _deepened_from_a_prefill(echo: bool) -> tuple[str, list[list[dict[str, Any]]]]:
    """A prompt that ends in the assistant's own start of the answer, deepened."""
    prompt = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": PREFILL},
    ]
    return _deepened(prompt, echo)


@pytest.mark.parametrize("echo", [False, True], ids=["plain", "echoing"])
def test_a_prompt_that_starts_the_answer_is_continued_from_it_once(echo: bool) -> None:
    text, sent = _deepened_from_a_prefill(echo)
    assert text == PREFILL + FIRST + TRIGGER + SECOND + TRIGGER + THIRD
    for messages in sent:  # one assistant message, the whole answer so far
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[-1]["content"].startswith(PREFILL)
        assert messages[-1]["content"].count(PREFILL) == 1


@pytest.mark.parametrize(
    "last",
    [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
    ],
    ids=["tool-calls", "image"],
)
def test_a_prompt_ending_in_an_assistant_message_without_text_is_refused_before_drawing(
    last: dict[str, Any],
) -> None:
    prompt = [{"role": "user", "content": QUESTION}, last]
    with pytest.raises(ConfigError, match=r"messages\[1\].*no text to continue"):
        _deepened(prompt, echo=False)
    # Control: the same conversation with a tool's answer after the call is continued.
    answered = [*prompt, {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    text, sent = _deepened(answered, echo=False)
    assert text and all(m[-1]["role"] in ("tool", "assistant") for m in sent)


def test_control_a_prompt_prefill_sent_beside_the_partial_makes_two_assistant_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ttscale.strategies.deepening as deepening

    monkeypatch.setattr(deepening, "prompt_prefill", lambda prompt: "")
    monkeypatch.setattr(
        deepening,
        "continuation_prompt",
        lambda prompt, partial, *rest: (
            [*prompt, {"role": "assistant", "content": partial}] if partial else list(prompt)
        ),
    )
    _, sent = _deepened_from_a_prefill(echo=False)
    assert any([m["role"] for m in messages].count("assistant") == 2 for messages in sent)
