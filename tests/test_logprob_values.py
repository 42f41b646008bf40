"""Logprobs as servers really send them: -inf, null, NaN and missing usage, read one way.

Every number a server sends as a log probability goes through ``ttscale.types.logprob_value``:
-inf (and null alternatives, how JSON encoders without -inf write it) becomes the floor, so a
confidence stays finite; a value that is no log probability leaves the candidate without logprobs
(kept, with a warning), or stops a stream with an error naming the value, never a silent number.
"""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from ttscale import OpenAISampler, Problem
from ttscale.budget import BudgetedSampler
from ttscale.confidence import (
    MissingLogprobs,
    group_confidences,
    lowest_group_confidence,
    percentile,
    self_certainty,
    stop_position,
)
from ttscale.errors import ConfigError, DataError, UpstreamError
from ttscale.strategies.deepconf import (
    DeepConf,
    DeepConfConfig,
    keep_most_confident,
    vote_share,
)
from ttscale.testing.server import LoopbackServer, ScriptedAnswer, ScriptRequest, TokenProfile
from ttscale.types import LOGPROB_FLOOR, Result, SampleBatch, SamplingParams, TokenLogprob
from ttscale.types import logprob_value as read

PROMPT = "What is 3 + 4?"


# -- the one reading ---------------------------------------------------------------------------


def test_a_logprob_is_read_into_floor_to_zero_or_refused() -> None:
    assert read(-0.25) == -0.25 and read(0) == 0.0 and read(-3) == -3.0
    assert read(-math.inf) == read(-9999.0) == read(-1e308) == LOGPROB_FLOOR
    assert read(1e-6) == 0.0  # float32 rounding of a sure token
    for bad in (math.nan, math.inf, 0.5, "-0.5", None, True, [-1.0]):
        with pytest.raises(DataError, match="logprob must be a number"):
            read(bad)


def test_the_pure_rules_refuse_non_finite_numbers_rather_than_order_them() -> None:
    # A running window sum never recovers from inf - inf: every later mean would be NaN.
    with pytest.raises(ConfigError, match="token confidences must be finite numbers, got inf"):
        group_confidences([1.0, 1.0, math.inf, 1.0, 1.0], 2)
    with pytest.raises(ConfigError, match="got nan"):
        stop_position([1.0, math.nan, 1.0], 2, 0.5)
    with pytest.raises(ConfigError, match="threshold"):
        stop_position([1.0, 1.0], 2, math.nan)
    with pytest.raises(ConfigError, match="percentile values"):
        percentile([math.nan, 1.0, 2.0], 50)
    with pytest.raises(ConfigError, match="vote weights"):
        vote_share(["a", "b"], [math.inf, 1.0])
    # Controls: the same calls on finite numbers.
    assert group_confidences([1.0, 1.0, 9.0, 1.0, 1.0], 2) == [1.0, 5.0, 5.0, 1.0]
    assert stop_position([1.0, 0.0, 1.0], 2, 0.6) == 2
    assert stop_position([1.0, 1.0], 2, -math.inf) is None  # -inf: a threshold that stops nothing


def test_a_nan_score_ranks_last_wherever_it_is_listed() -> None:
    assert keep_most_confident([math.nan, 3.0, 2.0, 2.5], 0.75) == [1, 3, 2]
    assert keep_most_confident([3.0, 2.0, 2.5, math.nan], 0.75) == [0, 2, 1]
    assert keep_most_confident([math.nan, math.nan], 0.5, indices=[7, 3]) == [1]


def test_measures_read_hand_built_tokens_the_same_way() -> None:
    impossible = TokenLogprob("x", -0.01, (("x", -0.01), ("y", -math.inf)))
    unsure = TokenLogprob("z", -0.5, (("z", -0.5), ("w", -0.5)))
    trace = [impossible] + [unsure] * 3
    # The impossible alternative counts at the floor: one high group, then the unsure tail.
    assert lowest_group_confidence(trace) == pytest.approx((50.005 + 3 * 0.5) / 4)
    assert math.isfinite(self_certainty([TokenLogprob("a", -100.0, (("a", -100.0),) * 3)]))
    with pytest.raises(DataError, match="got nan"):
        lowest_group_confidence([TokenLogprob("x", -0.1, (("x", math.nan),))])


# -- over the wire -----------------------------------------------------------------------------

SURE = TokenProfile(logprob=-0.01, gap=5.98)  # confidence 3.0 with the top 2
UNSURE = TokenProfile(logprob=-0.5, gap=0.0)  # confidence 0.5
NINE_TEXT = "Adding them gives \\boxed{9}"


def nine(impossible: TokenProfile, tail: TokenProfile = UNSURE) -> ScriptedAnswer:
    """Two sure tokens, one whose alternative the server writes as ``impossible``, then ``tail``."""
    return ScriptedAnswer(NINE_TEXT, (SURE, SURE, impossible, tail))


def seven(gap: float) -> ScriptedAnswer:
    return ScriptedAnswer("Adding them gives \\boxed{7}", (TokenProfile(-0.01, gap),))


def run_offline(first: ScriptedAnswer) -> Result:
    # Sample 0 answers 9; samples 1 and 2 answer 7 at confidence 2.0 and 1.9; sample 3 answers 8
    # at 1.0. Keeping the top half by lowest group (window 2) keeps the two 7s, unless the 9's
    # lowest group is misread as high.
    eight = ScriptedAnswer("So \\boxed{8}", (TokenProfile(-0.01, 1.98),))
    answers = [first, seven(3.98), seven(3.78), eight]

    def respond(request: ScriptRequest) -> ScriptedAnswer:
        return answers[request.index]

    config = DeepConfConfig(
        samples=4, mode="offline", eta=0.5, window=2, score="lowest_group", top_logprobs=2
    )

    async def go(server: LoopbackServer) -> Result:
        async with OpenAISampler(model="m", base_url=server.base_url, api_key="x") as sampler:
            return await DeepConf(config).run(Problem(id="p", prompt=PROMPT), sampler)

    with LoopbackServer(answers=respond) as server:
        return asyncio.run(go(server))


@pytest.mark.parametrize(
    "impossible",
    [
        TokenProfile(logprob=-0.01, gap=math.inf, broken=True),  # written -Infinity
        TokenProfile(logprob=-0.01, gap=0.0, null_alternatives=True),  # written null
        TokenProfile(logprob=-0.01, gap=9998.99),  # vLLM's -9999
    ],
    ids=["minus-infinity", "null", "vllm-sentinel"],
)
def test_an_impossible_alternative_does_not_hide_the_unsure_tail(impossible: TokenProfile) -> None:
    result = run_offline(nine(impossible))
    assert result.answers == ("7",)
    assert all(
        LOGPROB_FLOOR <= value <= 0
        for candidate in result.candidates
        for token in candidate.logprobs or ()
        for _, value in token.top
    )
    # Control: the same 9 with a sure tail keeps its place and wins the weighted vote.
    assert run_offline(nine(impossible, tail=SURE)).answers == ("9",)


def test_a_nan_logprob_leaves_the_candidate_without_logprobs_and_says_where(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = ScriptedAnswer(NINE_TEXT, (SURE, TokenProfile(math.nan, 1.0, broken=True), SURE))

    async def go(server: LoopbackServer) -> SampleBatch:
        async with OpenAISampler(model="m", base_url=server.base_url, api_key="x") as sampler:
            return await sampler.sample(PROMPT, 2, SamplingParams(logprobs=2))

    answers = [broken, seven(3.98)]
    with (
        caplog.at_level(logging.WARNING),
        LoopbackServer(answers=lambda request: answers[request.index]) as server,
    ):
        batch = asyncio.run(go(server))
        generated = sum(r.completion_tokens for r in server.records if r.generated)
    first, second = batch.candidates
    assert first.text == NINE_TEXT and first.logprobs is None
    assert second.logprobs is not None  # its neighbour in the same response is read as usual
    assert batch.usage.completion_tokens == generated  # paid for, and counted
    assert "logprobs.content[1].logprob: a logprob must be a number <= 0, got nan" in caplog.text
    with pytest.raises(MissingLogprobs, match="unusable"):
        lowest_group_confidence(first)


def test_a_nan_in_a_stream_stops_it_with_an_error_naming_the_value() -> None:
    # The warm-up's two traces are drawn whole and read well; the next two stream, and break.
    broken = ScriptedAnswer(NINE_TEXT, (SURE, SURE, TokenProfile(math.nan, 1.0, broken=True)))
    answers = [seven(3.98), ScriptedAnswer(NINE_TEXT, (SURE,)), broken, broken]
    config = DeepConfConfig(samples=4, warmup=2, batch_size=2, window=2, top_logprobs=2)

    async def go(server: LoopbackServer) -> BudgetedSampler:
        async with OpenAISampler(model="m", base_url=server.base_url, api_key="x") as sampler:
            budget = BudgetedSampler(sampler)
            with pytest.raises(UpstreamError) as caught:
                await DeepConf(config).run(Problem(id="p", prompt=PROMPT), budget.for_problem("p"))
            message = str(caught.value)
            assert "logprobs.content[0].logprob" in message and "got nan" in message
            assert "broke off" not in message
            return budget

    with LoopbackServer(answers=lambda request: answers[request.index]) as server:
        budget = asyncio.run(go(server))
        streamed = [r for r in server.records if r.generated and r.body and r.body.get("stream")]
    assert len(streamed) == 2
    # What arrived is paid for and counted: the warm-up whole, each stream up to its bad token.
    assert budget.spent.samples == 4


class Never:
    def feed(self, token: TokenLogprob) -> bool:
        return False


@pytest.mark.parametrize("stream_usage", [False, True])
def test_a_stream_without_usage_or_logprobs_is_counted_by_its_chunks(
    stream_usage: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def go(server: LoopbackServer) -> SampleBatch:
        async with OpenAISampler(model="m", base_url=server.base_url, api_key="x") as sampler:
            return await sampler.sample_watched(PROMPT, 2, None, watcher=lambda index: Never())

    with (
        caplog.at_level(logging.WARNING),
        LoopbackServer(
            answers={PROMPT: NINE_TEXT}, logprobs=False, stream_usage=stream_usage
        ) as server,
    ):
        batch = asyncio.run(go(server))
        generated = sum(r.completion_tokens for r in server.records if r.generated)
    assert generated > 2 and batch.usage.completion_tokens == generated
    assert [c.tokens_exact for c in batch.candidates] == [stream_usage] * 2
    assert ("neither usage nor logprobs" in caplog.text) is not stream_usage


def test_logprobs_without_alternatives_are_read(caplog: pytest.LogCaptureFixture) -> None:
    async def go(server: LoopbackServer) -> SampleBatch:
        async with OpenAISampler(model="m", base_url=server.base_url, api_key="x") as sampler:
            return await sampler.sample(PROMPT, 2, SamplingParams(logprobs=0))

    with caplog.at_level(logging.WARNING), LoopbackServer(answers={PROMPT: NINE_TEXT}) as server:
        batch = asyncio.run(go(server))
    for candidate in batch.candidates:
        assert candidate.logprobs and all(token.top == () for token in candidate.logprobs)
    assert "unusable" not in caplog.text


@pytest.mark.parametrize(
    ("prompt", "completion", "counted"),
    [(-1000, 5, (0, 5)), (7, 1e30, (7, 0)), (7, "5", (7, 0)), (7, True, (7, 0)), (7, 5, (7, 5))],
    ids=["negative", "absurd", "text", "bool", "control"],
)
def test_usage_that_is_no_count_is_read_as_none(
    prompt: object, completion: object, counted: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    def reply(body: dict[str, object]) -> dict[str, object]:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "7"},
            "finish_reason": "stop",
        }
        usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        return {
            "id": "x",
            "object": "chat.completion",
            "model": "m",
            "choices": [choice],
            "usage": usage,
        }

    async def go(base_url: str) -> SampleBatch:
        async with OpenAISampler(model="m", base_url=base_url, api_key="x") as sampler:
            return await sampler.sample(PROMPT, 1)

    # A server whose answers are scripted whole: its chat path is a route of the loopback server.
    with (
        caplog.at_level(logging.WARNING),
        LoopbackServer(routes={"/v1/odd/chat/completions": reply}) as server,
    ):
        batch = asyncio.run(go(server.base_url + "/odd"))
    assert (batch.usage.prompt_tokens, batch.usage.completion_tokens) == counted
    assert ("not a count" in caplog.text) is (counted != (7, 5))
