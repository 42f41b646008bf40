"""DeepConf: its pure rules, streamed early stopping against the loopback server, and replay."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx2
import openai
import pytest

import ttscale
from ttscale import OpenAISampler, Problem
from ttscale.budget import BudgetedSampler, max_samples
from ttscale.confidence import GroupConfidenceWatch, MissingLogprobs, stop_position
from ttscale.errors import ConfigError
from ttscale.protocols import EARLY_STOP, as_sampler, can_watch
from ttscale.proxy import BackgroundProxy, ProxyConfig
from ttscale.registry import create
from ttscale.strategies.deepconf import (
    DeepConf,
    DeepConfConfig,
    StoredTrace,
    evaluate_deepconf,
    evaluate_majority,
    keep_most_confident,
    online_threshold,
    simulate_offline,
    simulate_online,
    vote_share,
)
from ttscale.strategies.extract import get_extractor
from ttscale.testing.server import (
    CONFIDENT,
    UNCONFIDENT,
    LoopbackServer,
    RequestRecord,
    ScriptedAnswer,
    ScriptRequest,
    TokenProfile,
)
from ttscale.types import Prompt, Result, SampleBatch, SamplingParams

TOP = 20  # the strategy's default top_logprobs, which the loopback server honours
# Seconds between streamed tokens where a test compares the server's count with the client's: a
# client that closes within this time of reading the stopping token is sent nothing more.
PACE = 0.2


def logged(server: LoopbackServer, timeout: float = 10.0) -> list[RequestRecord]:
    """The server's records once every generation request is in the log.

    A stream the client closed is logged when the server sees the close, a moment after the
    client has moved on.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in server.records if r.ordinal >= 0]
        if len(records) >= server.request_count or time.monotonic() > deadline:
            return records
        time.sleep(0.01)


def usage_of(records: Sequence[RequestRecord]) -> int:
    return sum(r.completion_tokens for r in records if r.generated)


def confidence_of(level: TokenProfile, k: int = TOP) -> float:
    """DeepConf's token confidence of a scripted token (see TokenProfile)."""
    return -level.logprob + level.gap * (k - 1) / 2


# -- pure rules ------------------------------------------------------------------------------


def test_keep_most_confident_keeps_the_top_share_with_ties_to_the_lower_index() -> None:
    scores = [1.0, 5.0, 3.0, 5.0, 2.0]
    assert keep_most_confident(scores, 0.4) == [1, 3]
    assert keep_most_confident(scores, 0.4, indices=[0, 9, 2, 3, 4]) == [3, 1]
    # At least one trace survives; eta 1 keeps them all.
    assert keep_most_confident(scores, 0.01) == [1]
    assert sorted(keep_most_confident(scores, 1.0)) == [0, 1, 2, 3, 4]
    # DeepConf-low over 16 traces keeps ceil(1.6) = 2.
    assert len(keep_most_confident([float(i) for i in range(16)], 0.1)) == 2


def test_online_threshold_is_the_100_minus_eta_percentile() -> None:
    lowest = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert online_threshold(lowest, 0.9) == pytest.approx(1.4)  # 10th percentile
    assert online_threshold(lowest, 0.1) == pytest.approx(4.6)  # 90th percentile


def test_vote_share_weighs_only_voters() -> None:
    assert vote_share(["a", "b", None, "a"], [1.0, 2.0, 9.0, 1.0]) == (pytest.approx(0.5), 3)
    assert vote_share([None, None], [1.0, 1.0]) == (0.0, 0)


def trace(answer: str | None, confidences: Sequence[float]) -> StoredTrace:
    return StoredTrace(answer, tuple(confidences), len(confidences))


HIGH = [9.0] * 6
LOW_TAIL = [9.0, 9.0, 9.0, 1.0, 1.0, 1.0]  # window 2: (9 + 1) / 2 at token 4


def test_simulate_online_stops_at_consensus_after_the_warm_up() -> None:
    config = DeepConfConfig(samples=8, warmup=3, window=2, batch_size=2)
    traces = [trace("7", HIGH)] * 8
    outcome = simulate_online(traces, config)
    assert (outcome.answer, outcome.samples, outcome.tokens, outcome.reason) == (
        "7",
        3,
        18,
        "consensus",
    )


def test_simulate_online_cuts_low_confidence_traces_where_a_stream_would_stop() -> None:
    config = DeepConfConfig(samples=6, warmup=2, window=2, batch_size=2, eta=0.9)
    traces = [trace("7", HIGH), trace("9", HIGH)] + [trace("9", LOW_TAIL)] * 4
    outcome = simulate_online(traces, config)
    cut = stop_position(LOW_TAIL, 2, outcome.threshold or 0.0)
    assert outcome.threshold == pytest.approx(9.0) and cut == 4
    # Warm-up whole (12 tokens), then four traces cut at token 4: none of them votes.
    assert (outcome.samples, outcome.stopped, outcome.tokens) == (6, 4, 12 + 4 * 4)
    assert outcome.voters == 2 and outcome.reason == "max_samples"
    # Control: without the cut the 9s would have won the vote.
    steady = [trace("7", HIGH), trace("9", HIGH)] + [trace("9", HIGH)] * 4
    assert simulate_online(steady, config).answer == "9"


def test_simulate_offline_filters_then_weighs() -> None:
    traces = [trace("1", [1.0] * 4)] * 3 + [trace("2", [9.0] * 4)]
    majority = DeepConfConfig(samples=4, mode="offline", eta=1.0, window=2)
    filtered = DeepConfConfig(samples=4, mode="offline", eta=0.25, window=2)
    # Weighted by confidence, one sure "2" (9) outweighs three unsure "1"s (3).
    assert simulate_offline(traces, majority).answer == "2"
    assert simulate_offline(traces, filtered).answer == "2"
    assert simulate_offline(traces, filtered).voters == 1
    assert simulate_offline(traces, filtered).tokens == 16


def test_evaluate_deepconf_averages_replays_over_draw_orders() -> None:
    # Two of three traces: any pair holding the sure A (4 of 6 orders) elects A, the pair of
    # unsure Bs elects B; so the expected accuracy is 2/3.
    traces = [trace("A", [9.0] * 3), trace("B", [1.0] * 3), trace("B", [1.0] * 3)]
    config = DeepConfConfig(samples=2, warmup=1, mode="offline", eta=1.0, window=2)
    result = evaluate_deepconf([traces], [lambda a: a == "A"], config, orders=3000)
    assert result.per_problem_accuracy[0] == pytest.approx(2 / 3, abs=0.03)
    assert result.tokens == (6.0, 0.0) and result.samples == (2.0, 0.0)
    # Online: unanimous problems stop after the warm-up, by samples and by tokens.
    online = DeepConfConfig(samples=3, warmup=2, window=2, batch_size=1)
    same = [trace("7", [9.0] * 4)] * 3
    both = evaluate_deepconf([same, same], [lambda a: a == "7"] * 2, online, orders=5)
    assert both.accuracy == (1.0, 0.0) and both.samples == (2.0, 0.0) and both.tokens[0] == 8.0
    with pytest.raises(ConfigError, match="fewer than"):
        evaluate_deepconf([same[:1]], [lambda a: True], online)


def test_evaluate_majority_counts_heads_over_the_same_orders() -> None:
    # Three unsure "1"s and one sure "2": confidence-weighted DeepConf elects "2", a head count "1".
    traces = [trace("1", [1.0] * 4)] * 3 + [trace("2", [9.0] * 4)]
    right = [lambda a: a == "1"]
    majority = evaluate_majority([traces], right, 4, orders=7)
    assert majority.accuracy == (1.0, 0.0) and majority.tokens == (16.0, 0.0)
    weighted = DeepConfConfig(samples=4, mode="offline", eta=1.0, window=2)
    assert evaluate_deepconf([traces], right, weighted, orders=7).accuracy == (0.0, 0.0)
    # Any 3 of the 4 hold at least two "1"s, so every order's head count elects "1".
    some = evaluate_majority([traces], right, 3, orders=50, seed=3)
    assert some.per_problem_accuracy == (1.0,) and some.samples == (3.0, 0.0)


def test_config_checks_its_options() -> None:
    with pytest.raises(ConfigError, match="mode"):
        DeepConfConfig(mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="eta"):
        DeepConfConfig(eta=0.0)
    with pytest.raises(ConfigError, match="warmup"):
        DeepConfConfig(samples=2, warmup=4)
    with pytest.raises(ConfigError, match="score"):
        DeepConfConfig(score="mean_logprob")
    assert isinstance(create("strategy", "deepconf", samples=8), DeepConf)


# -- against the loopback server ---------------------------------------------------------------

PROMPT = "What is 3 + 4?"
SURE_7 = ScriptedAnswer("3 + 4 = 7, so \\boxed{7}", (CONFIDENT,))
SURE_9 = ScriptedAnswer("I think \\boxed{9}", (CONFIDENT,))
# Confident for three tokens, then not: with a window of 2 the group mean falls at token 5.
FADING = ScriptedAnswer("Well 3 and 4 make maybe \\boxed{9}", (CONFIDENT,) * 3 + (UNCONFIDENT,))
FADING_CONFS = [confidence_of(CONFIDENT)] * 3 + [confidence_of(UNCONFIDENT)] * 20


def script(
    warm: Sequence[ScriptedAnswer], rest: ScriptedAnswer
) -> Callable[[ScriptRequest], object]:
    def respond(request: ScriptRequest) -> ScriptedAnswer:
        return warm[request.index] if request.index < len(warm) else rest

    return respond


def run(
    server: LoopbackServer,
    config: DeepConfConfig,
    wrap: Callable[[BudgetedSampler], object] | None = None,
) -> tuple[Result, BudgetedSampler]:
    async def go() -> tuple[Result, BudgetedSampler]:
        async with OpenAISampler(model="m", base_url=server.base_url, api_key="x") as sampler:
            budget = BudgetedSampler(sampler)
            drawer = wrap(budget) if wrap is not None else budget.for_problem("p")
            result = await DeepConf(config).run(Problem(id="p", prompt=PROMPT), drawer)  # type: ignore[arg-type]
            return result, budget

    return asyncio.run(go())


ONLINE = DeepConfConfig(samples=8, warmup=4, batch_size=4, window=2, eta=0.9)
WARM = [SURE_7, SURE_7, SURE_9, SURE_7]  # 7 leads 3 to 1: short of a 0.95 consensus


def test_online_streams_stop_exactly_where_the_group_confidence_crosses() -> None:
    server = LoopbackServer(answers=script(WARM, FADING), token_interval=PACE)
    with server:
        result, budget = run(server, ONLINE)
        records = logged(server)
    threshold = confidence_of(CONFIDENT)  # every warm-up token alike: every percentile is it
    expected_cut = stop_position(FADING_CONFS, 2, threshold)
    assert expected_cut == 4  # (47.51 + 3.875) / 2 < 47.51 at the fourth token
    streamed = [r for r in records if r.streamed_tokens is not None]
    assert len(streamed) == 4
    assert all(r.client_closed for r in streamed)
    assert [r.streamed_tokens for r in streamed] == [expected_cut] * 4
    late = [c for c in result.candidates if c.index >= 4]
    assert all(c.finish_reason == EARLY_STOP for c in late)
    assert all(len(c.logprobs or ()) == expected_cut for c in late)
    # What the budget counted is what the server generated, stopped streams included.
    assert budget.spent.completion_tokens == usage_of(records)
    assert budget.spent.samples == 8
    # The stopped traces (all 9s) do not vote; the warm-up's 7 wins.
    assert result.answers == ("7",)
    stop = [e for e in result.trace if e.step == "stop"][-1]
    assert stop.data["early_stopped"] == 4 and stop.data["reason"] == "max_samples"


def test_online_stops_drawing_at_consensus_after_the_warm_up() -> None:
    with LoopbackServer(answers=script([SURE_7] * 4, FADING), token_interval=0.05) as server:
        result, _ = run(server, ONLINE)
        records = logged(server)
    assert len(result.candidates) == 4 and result.answers == ("7",)
    assert all(r.streamed_tokens is None for r in records)  # nothing was streamed
    assert [e for e in result.trace if e.step == "stop"][-1].data["reason"] == "consensus"


def test_without_streaming_the_rule_applies_after_the_fact_with_the_same_vote() -> None:
    def plain(budget: BudgetedSampler) -> object:
        view = budget.for_problem("p")

        async def sample(
            prompt: Prompt, n: int, params: SamplingParams | None, *, start_index: int
        ) -> SampleBatch:
            return await view.sample(prompt, n, params, start_index=start_index)

        return as_sampler(sample)

    with LoopbackServer(answers=script(WARM, FADING)) as server:
        result, budget = run(server, ONLINE, plain)
        generated = usage_of(logged(server))
    assert not can_watch(plain(budget)) and can_watch(budget)
    assert result.answers == ("7",)
    assert next(e for e in result.trace if e.step == "threshold").data["streamed"] is False
    assert [e for e in result.trace if e.step == "stop"][-1].data["early_stopped"] == 4
    # Drawn whole: every token is paid for, and the replay of the same traces agrees.
    assert budget.spent.completion_tokens == generated
    traces = [
        StoredTrace.of(c, a) for c, a in zip(result.candidates, _answers(result), strict=True)
    ]
    replay = simulate_online(traces, ONLINE)
    assert replay.answer == "7" and replay.stopped == 4 and replay.samples == 8
    assert replay.tokens == sum(len(c.logprobs or ()) for c in result.candidates[:4]) + 4 * 4


def _answers(result: Result) -> list[str | None]:
    extract = get_extractor("auto")
    return [extract(c.text) for c in result.candidates]


def test_replay_matches_the_live_streamed_run_token_for_token() -> None:
    with LoopbackServer(answers=script(WARM, FADING), token_interval=0.05) as server:
        live, budget = run(server, ONLINE)
    with LoopbackServer(answers=script(WARM, FADING)) as server:
        whole = asyncio.run(_draw_whole(server, 8))
    traces = [StoredTrace.of(c, a) for c, a in whole]
    replay = simulate_online(traces, ONLINE)
    assert replay.answer == live.answers[0]
    assert replay.samples == len(live.candidates)
    assert replay.tokens == budget.spent.completion_tokens


async def _draw_whole(server: LoopbackServer, n: int) -> list[tuple[object, str | None]]:
    extract = get_extractor("auto")
    async with OpenAISampler(model="m", base_url=server.base_url, api_key="x") as sampler:
        batch = await sampler.sample(PROMPT, n, SamplingParams(logprobs=TOP))
    return [(c, extract(c.text)) for c in batch.candidates]


def test_offline_mode_filters_to_the_most_confident_share() -> None:
    # Three unsure 9s outweigh one fairly sure 7 in a confidence-weighted vote of everyone;
    # keeping only the most confident quarter leaves the 7.
    unsure_9 = ScriptedAnswer("\\boxed{9}", (UNCONFIDENT,))
    fair = TokenProfile(logprob=-0.5, gap=0.5)
    fair_7 = ScriptedAnswer("\\boxed{7}", (fair,))
    assert 3 * confidence_of(UNCONFIDENT) > confidence_of(fair) > confidence_of(UNCONFIDENT)
    answers = script([unsure_9, fair_7, unsure_9, unsure_9], unsure_9)
    with LoopbackServer(answers=answers) as server:
        result, _ = run(server, DeepConfConfig(samples=4, mode="offline", eta=0.25, window=2))
        body = server.records[0].body
    assert result.answers == ("7",)
    assert body is not None and body["top_logprobs"] == TOP and body["logprobs"] is True
    # Control: keeping everyone, the weighted vote goes to the 9s.
    with LoopbackServer(answers=answers) as server:
        everyone, _ = run(server, DeepConfConfig(samples=4, mode="offline", eta=1.0, window=2))
    assert everyone.answers == ("9",)


def test_a_server_without_logprobs_gets_a_clear_error() -> None:
    with (
        LoopbackServer(answers={PROMPT: SURE_7}, logprobs=False) as server,
        pytest.raises(MissingLogprobs, match="logprobs"),
    ):
        run(server, ONLINE)
    # Control: the same run with logprobs served works.
    with LoopbackServer(answers={PROMPT: SURE_7}) as server:
        result, _ = run(server, ONLINE)
    assert result.answers == ("7",)


def test_sample_watched_counts_what_arrived_before_the_close() -> None:
    async def go(server: LoopbackServer) -> SampleBatch:
        async with OpenAISampler(model="m", base_url=server.base_url, api_key="x") as sampler:
            return await sampler.sample_watched(
                PROMPT,
                2,
                SamplingParams(logprobs=TOP),
                watcher=lambda index: GroupConfidenceWatch(2, confidence_of(CONFIDENT)),
            )

    with LoopbackServer(answers={PROMPT: FADING}, token_interval=PACE) as server:
        batch = asyncio.run(go(server))
        records = logged(server)
    assert [c.finish_reason for c in batch.candidates] == [EARLY_STOP, EARLY_STOP]
    assert [c.completion_tokens for c in batch.candidates] == [4, 4]
    assert batch.usage.completion_tokens == sum(r.completion_tokens for r in records) == 8
    # No usage came back on a closed stream, and this sampler had not seen the prompt: 0.
    assert batch.usage.requests == 2 and batch.usage.samples == 2
    assert batch.usage.prompt_tokens == 0
    assert math.isfinite(batch.candidates[0].latency_s)


def test_a_closed_stream_borrows_the_prompt_tokens_reported_for_its_prompt() -> None:
    async def go(server: LoopbackServer) -> tuple[SampleBatch, SampleBatch]:
        async with OpenAISampler(model="m", base_url=server.base_url, api_key="x") as sampler:
            whole = await sampler.sample(PROMPT, 1, SamplingParams(logprobs=TOP))
            watched = await sampler.sample_watched(
                PROMPT,
                1,
                SamplingParams(logprobs=TOP),
                start_index=1,
                watcher=lambda index: GroupConfidenceWatch(2, confidence_of(CONFIDENT)),
            )
            return whole, watched

    with LoopbackServer(answers={PROMPT: FADING}, token_interval=0.02) as server:
        whole, watched = asyncio.run(go(server))
        served = logged(server)
    assert whole.usage.prompt_tokens > 0
    assert watched.usage.prompt_tokens == whole.usage.prompt_tokens
    assert sum(r.prompt_tokens for r in served) == 2 * whole.usage.prompt_tokens


# -- through the proxy and a wrapped client ----------------------------------------------------

DEEPCONF_REQUEST = {"strategy": "deepconf", "samples": 8, "window": 2, "batch_size": 4}


def test_the_proxy_streams_keep_alives_while_deepconf_draws_and_stops_streams_early() -> None:
    with LoopbackServer(answers=script(WARM, FADING), token_interval=PACE) as upstream:
        proxy = BackgroundProxy(
            ProxyConfig(base_url=upstream.base_url, model="loopback", keep_alive_s=0.05)
        ).start()
        try:
            with httpx2.stream(
                "POST",
                proxy.base_url + "/chat/completions",
                json={
                    "model": "loopback",
                    "messages": [{"role": "user", "content": PROMPT}],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "ttscale": DEEPCONF_REQUEST,
                },
                timeout=60,
            ) as response:
                assert response.status_code == 200
                lines = [line for line in response.iter_lines() if line]
        finally:
            proxy.stop()
        records = logged(upstream)
        generated = usage_of(records)
    assert any(line == ": keep-alive" for line in lines)
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    text = "".join(c["delta"].get("content") or "" for k in chunks for c in k["choices"])
    assert "\\boxed{7}" in text
    assert chunks[-1]["ttscale"]["samples_used"] == 8
    # Four streams closed early, and the usage the client got is what the upstream generated.
    assert sum(r.client_closed for r in records) == 4
    assert chunks[-1]["usage"]["completion_tokens"] == generated


def test_a_wrapped_client_takes_strategy_deepconf_by_name() -> None:
    with LoopbackServer(answers=script(WARM, FADING), token_interval=0.02) as upstream:
        client = ttscale.wrap(openai.OpenAI(base_url=upstream.base_url, api_key="k"))
        try:
            answer = client.chat.completions.create(
                model="loopback",
                messages=[{"role": "user", "content": PROMPT}],
                extra_body={"ttscale": DEEPCONF_REQUEST},
            )
        finally:
            client.close()
        records = logged(upstream)
    assert "\\boxed{7}" in (answer.choices[0].message.content or "")
    assert answer.model_extra is not None and answer.model_extra["ttscale"]["samples_used"] == 8
    assert sum(r.client_closed for r in records) == 4


def test_the_confidence_verifier_through_the_proxy_draws_the_logprobs_it_reads() -> None:
    unsure_9 = ScriptedAnswer("\\boxed{9}", (UNCONFIDENT,))
    answers = script([unsure_9, SURE_7, unsure_9, unsure_9], unsure_9)
    request = {
        "model": "loopback",
        "messages": [{"role": "user", "content": PROMPT}],
        "ttscale": {"strategy": "best_of_n", "samples": 4, "verifier": "confidence"},
    }
    with LoopbackServer(answers=answers) as upstream:
        proxy = BackgroundProxy(ProxyConfig(base_url=upstream.base_url, model="loopback")).start()
        try:
            unasked = httpx2.post(proxy.base_url + "/chat/completions", json=request, timeout=30)
            upstream.reset_log()  # the script's sample indices start again
            asked = {**request, "logprobs": True, "top_logprobs": 5}
            served = httpx2.post(proxy.base_url + "/chat/completions", json=asked, timeout=30)
        finally:
            proxy.stop()
    # Not asked by the client, the logprobs are drawn for the verifier and not sent back.
    assert unasked.status_code == 200, unasked.text
    assert unasked.json()["choices"][0]["message"]["content"] == SURE_7.text
    assert unasked.json()["choices"][0]["logprobs"] is None
    assert served.status_code == 200
    assert served.json()["choices"][0]["message"]["content"] == SURE_7.text
    assert served.json()["choices"][0]["logprobs"] is not None


def test_streamed_draws_meet_the_budget_like_any_other() -> None:
    async def go(server: LoopbackServer) -> tuple[Result, BudgetedSampler]:
        async with OpenAISampler(model="m", base_url=server.base_url, api_key="x") as sampler:
            budget = BudgetedSampler(sampler, per_problem=max_samples(6))
            view = budget.for_problem("p")
            result = await DeepConf(ONLINE).run(Problem(id="p", prompt=PROMPT), view)
            return result, budget

    with LoopbackServer(answers=script(WARM, FADING), token_interval=PACE) as server:
        result, budget = asyncio.run(go(server))
        records = logged(server)
    # The second batch of four is trimmed to the two samples the budget leaves, streamed.
    assert len(result.candidates) == 6 and budget.spent.samples == 6
    assert sum(r.streamed_tokens is not None for r in records) == 2
    assert budget.spent.completion_tokens == usage_of(records)
    # A sampler that cannot stream is refused a watched draw before anything is reserved.
    plain = BudgetedSampler(as_sampler(lambda prompt, n, params, start_index=0: None))
    with pytest.raises(ConfigError, match="cannot stream"):
        asyncio.run(plain.sample_watched(PROMPT, 1, watcher=lambda i: GroupConfidenceWatch(2, 1.0)))
    assert plain.spent.draws == 0 and plain.spent.pending_samples == 0


def test_an_empty_completion_neither_votes_nor_breaks_the_run() -> None:
    empty = trace(None, [])
    online = DeepConfConfig(samples=4, warmup=2, window=2, batch_size=2)
    outcome = simulate_online([empty, trace("7", HIGH), empty, trace("7", HIGH)], online)
    assert outcome.answer == "7" and outcome.voters == 2
    offline = DeepConfConfig(samples=3, mode="offline", eta=1.0, window=2)
    assert simulate_offline([empty, trace("7", HIGH), empty], offline).answer == "7"
    # All empty: no threshold to stop anything, and nobody votes.
    assert online_threshold([None, None], 0.9) == -math.inf
    with LoopbackServer(answers=script([ScriptedAnswer(""), SURE_7, SURE_7, SURE_7], SURE_7)) as s:
        result, _ = run(s, ONLINE)
    assert result.answers == ("7",)


def _solve_deepconf(server: LoopbackServer, folder: Path, *options: str) -> None:
    dataset = folder / "data.jsonl"
    dataset.write_text(json.dumps({"id": "p", "prompt": PROMPT, "answer": "7"}) + "\n")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "ttscale.cli", "solve", str(dataset)),
            *("--out", str(folder / "run.jsonl"), "--base-url", server.base_url, "--model", "m"),
            *("-n", "8", "--no-plot", "--strategy", "deepconf", "--logprobs", "5"),
            *("-o", "warmup=4", "-o", "batch_size=4", "-o", "window=2", "-o", "eta=0.9"),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_ttscale_solve_streams_deepconf_through_the_journal_and_resumes_free(
    tmp_path: Path,
) -> None:
    with LoopbackServer(answers=script(WARM, FADING), token_interval=PACE) as server:
        _solve_deepconf(server, tmp_path)
        records = logged(server)
    # The run's wrappers pass watched draws through: the four late streams were closed early.
    assert sorted(r.streamed_tokens or 0 for r in records if r.client_closed) == [4] * 4
    journal = (tmp_path / "run.jsonl.samples.jsonl").read_text().splitlines()
    assert len(journal) == 8  # four whole warm-up samples and four stopped streams, each kept
    (tmp_path / "run.jsonl").unlink()
    with LoopbackServer(answers=script(WARM, FADING), token_interval=PACE) as server:
        _solve_deepconf(server, tmp_path)
        assert not server.records  # the rerun replays every sample, stopped ones included
    # Control: offline mode draws every trace whole, so nothing is closed early.
    (tmp_path / "offline").mkdir()
    with LoopbackServer(answers=script(WARM, FADING), token_interval=PACE) as server:
        _solve_deepconf(server, tmp_path / "offline", "-o", "mode=offline")
        assert not any(r.client_closed for r in logged(server))
