"""The budget tracker and its limits, against the real loopback server over HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from ttscale import BudgetExhausted, OpenAISampler, Pricing, SamplingParams, UpstreamError, Usage
from ttscale.budget import (
    BudgetedSampler,
    BudgetLimitReached,
    BudgetTracker,
    FlopsModel,
    Spend,
    max_completion_tokens,
    max_cost,
    max_flops,
    max_requests,
    max_samples,
    max_time,
    max_tokens,
    stop_when,
)
from ttscale.protocols import Sampler
from ttscale.scaling import ScaledAnswer, parse_request, plan_scaled, run_scaled
from ttscale.testing.server import (
    Fault,
    LoopbackServer,
    RequestRecord,
    ScriptRequest,
    count_tokens,
)
from ttscale.types import Candidate, SampleBatch

T = TypeVar("T")

# A test that would hang (a limit that never stops a loop of draws) fails instead.
pytestmark = pytest.mark.timeout(60)


def numbered(request: ScriptRequest) -> str:
    # Answers of different lengths, so token counts differ from sample to sample.
    return "step " * (1 + request.index % 3) + f"answer {request.index}"


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=numbered) as running:
        yield running


def make_sampler(server: LoopbackServer, **options: object) -> OpenAISampler:
    options.setdefault("max_retries", 0)
    options.setdefault("max_n", 4)
    return OpenAISampler(
        model="loopback",
        base_url=server.base_url,
        api_key="test",
        params=SamplingParams(seed=0),
        **options,  # type: ignore[arg-type]
    )


def run(factory: Callable[[OpenAISampler], Awaitable[T]], sampler: OpenAISampler) -> T:
    async def main() -> T:
        async with sampler:
            return await factory(sampler)

    return asyncio.run(main())


def assert_matches_server(spent: Spend, server: LoopbackServer) -> None:
    delivered = server.delivered_usage()
    assert spent.requests == delivered["requests"]
    assert spent.samples == delivered["samples"]
    assert spent.prompt_tokens == delivered["prompt_tokens"]
    assert spent.completion_tokens == delivered["completion_tokens"]


async def draw_until_exhausted(
    sampler: Sampler, prompt: str, n: int, sizes: list[int]
) -> BudgetLimitReached:
    """Draw n at a time until the budget refuses; record each draw's size; return the refusal."""
    index = 0
    while True:
        try:
            batch = await sampler.sample(prompt, n, start_index=index)
        except BudgetLimitReached as exc:
            return exc
        sizes.append(len(batch.candidates))
        index += len(batch.candidates)


def crossing(amounts: list[float], limit: float) -> int:
    """How many draws a limit lets out: every draw while the total is below it (pure)."""
    total = 0.0
    for count, amount in enumerate(amounts, start=1):
        total += amount
        if total >= limit:
            return count
    raise AssertionError(f"{limit} is never reached by {amounts}")


def numbered_tokens(index: int) -> int:
    """Completion tokens of sample ``index`` of a prompt, from the script alone."""
    request = ScriptRequest(prompt="q", index=index, seed=None, choice=0, temperature=None, body={})
    return count_tokens(numbered(request))


def generation_records(server: LoopbackServer) -> list[RequestRecord]:
    """The server's generation requests in arrival order."""
    return sorted((r for r in server.records if r.ordinal >= 0), key=lambda r: r.ordinal)


def asked_n(server: LoopbackServer) -> list[int]:
    bodies = [r.body for r in server.records if r.path.endswith("completions") and r.body]
    return [int(body.get("n", 1)) for body in bodies]


# -- each kind of limit --------------------------------------------------------------------------


def test_sample_limit_trims_the_last_draw_and_then_refuses(server: LoopbackServer) -> None:
    sizes: list[int] = []

    async def work(sampler: OpenAISampler) -> tuple[BudgetLimitReached, BudgetedSampler]:
        budget = BudgetedSampler(sampler, limit=max_samples(10))
        refusal = await draw_until_exhausted(budget.for_problem("p1"), "2+2?", 4, sizes)
        return refusal, budget

    refusal, budget = run(work, make_sampler(server))
    assert sizes == [4, 4, 2]  # the third draw asked for 4 and was trimmed before it was sent
    assert asked_n(server) == [4, 4, 2]
    assert isinstance(refusal, BudgetExhausted)
    assert refusal.scope == "run"
    assert refusal.spent.samples == 10
    assert_matches_server(budget.tracker.run, server)
    assert_matches_server(budget.tracker.problem("p1"), server)


def test_token_limit_per_problem_stops_after_the_crossing_draw(server: LoopbackServer) -> None:
    limit = 120

    async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, list[int], list[int]]:
        budget = BudgetedSampler(sampler, per_problem=max_tokens(limit))
        view = budget.for_problem("p1")
        totals: list[int] = []
        sizes: list[int] = []
        while not view.exhausted:
            await view.sample("What is six times seven?", 1, start_index=len(sizes))
            sizes.append(1)
            totals.append(view.spent.total_tokens)
        with pytest.raises(BudgetLimitReached) as refused:
            await view.sample("What is six times seven?", 1)
        assert refused.value.scope == "problem"
        assert refused.value.problem_id == "p1"
        return budget, totals, sizes

    budget, totals, _ = run(work, make_sampler(server))
    # Every draw went out below the limit, and the last one crossed it.
    assert totals[-1] >= limit
    assert all(total < limit for total in totals[:-1])
    assert_matches_server(budget.tracker.problem("p1"), server)
    assert_matches_server(budget.tracker.run, server)
    # Another problem has its own allowance.
    assert not budget.exhausted("p2")


def test_completion_token_limit(server: LoopbackServer) -> None:
    limit = 30

    async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, BudgetLimitReached]:
        budget = BudgetedSampler(sampler, limit=max_completion_tokens(limit))
        refusal = await draw_until_exhausted(budget.for_problem("p"), "q", 2, [])
        return budget, refusal

    budget, refusal = run(work, make_sampler(server))
    # From the script alone: draws of two samples go out until their tokens reach the limit.
    per_draw = [numbered_tokens(2 * d) + numbered_tokens(2 * d + 1) for d in range(20)]
    draws = crossing([float(tokens) for tokens in per_draw], limit)
    spent = budget.tracker.run
    assert server.request_count == draws and asked_n(server) == [2] * draws
    assert spent.completion_tokens == sum(per_draw[:draws]) >= limit
    assert sum(per_draw[: draws - 1]) < limit
    assert refusal.spent.completion_tokens == spent.completion_tokens
    assert_matches_server(spent, server)


def test_cost_limit_prices_tokens_from_the_users_table(server: LoopbackServer) -> None:
    pricing = Pricing(input_per_million=1000.0, output_per_million=3000.0)

    async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, list[float]]:
        budget = BudgetedSampler(sampler, limit=max_cost(0.2), pricing={"loopback": pricing})
        costs_before_each_draw = []
        view = budget.for_problem("p")
        index = 0
        while True:
            before = budget.tracker.run.cost
            try:
                batch = await view.sample("Name three primes.", 3, start_index=index)
            except BudgetLimitReached:
                break
            costs_before_each_draw.append(before)
            index += len(batch.candidates)
            assert batch.usage.cost == pytest.approx(
                pricing.cost(batch.usage.prompt_tokens, batch.usage.completion_tokens)
            )
        return budget, costs_before_each_draw

    budget, before = run(work, make_sampler(server))
    delivered = server.delivered_usage()
    spent = budget.tracker.run
    assert spent.cost == pytest.approx(
        pricing.cost(delivered["prompt_tokens"], delivered["completion_tokens"]), rel=1e-12
    )
    # Each request's price from the server's log: the draws stop at the first that crosses $0.2.
    costs = [pricing.cost(r.prompt_tokens, r.completion_tokens) for r in generation_records(server)]
    assert len(costs) == len(before) == crossing(costs, 0.2) >= 2
    assert before == pytest.approx([sum(costs[:k]) for k in range(len(costs))], rel=1e-12)
    assert_matches_server(spent, server)


def test_time_limit_lets_in_flight_draws_finish_and_counts_them() -> None:
    limit = 0.3
    with LoopbackServer(answers=numbered, latency=0.05) as server:
        # When each draw was asked for (read before the call, so no later than the tracker's
        # check), and when each refusal was seen (read after it, so no earlier).
        sent: list[float] = []
        refused: list[float] = []

        async def problem(budget: BudgetedSampler, problem_id: str) -> int:
            view, drawn = budget.for_problem(problem_id), 0
            while True:
                asked = time.monotonic()  # the tracker's clock
                try:
                    batch = await view.sample(problem_id, 2, start_index=drawn)
                except BudgetLimitReached:
                    refused.append(time.monotonic())
                    return drawn
                sent.append(asked)
                drawn += len(batch.candidates)

        async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, list[int]]:
            budget = BudgetedSampler(sampler, limit=max_time(limit))
            drawn = await asyncio.gather(*(problem(budget, f"p{i}") for i in range(6)))
            return budget, list(drawn)

        budget, drawn = run(work, make_sampler(server))
        spent = budget.tracker.run
        assert spent.wall_time_s >= limit
        assert spent.pending_samples == 0
        assert sum(drawn) == spent.samples  # every sample handed out was counted, none more
        assert_matches_server(spent, server)
        per_problem = budget.tracker.problems
        assert sum(p.samples for p in per_problem.values()) == spent.samples
        # Draws went out only before the limit, and refusals came only after it, timed from the
        # run's first draw; every draw that went out is a request the server answered.
        started = budget.tracker.started_at()
        assert started is not None
        assert all(asked - started < limit for asked in sent)
        assert all(seen - started >= limit for seen in refused)
        assert len(sent) == server.request_count == spent.requests
        assert len(refused) == 6  # each problem refused once, then done


def test_request_limit_stops_after_exactly_that_many_requests(server: LoopbackServer) -> None:
    async def work(sampler: OpenAISampler) -> BudgetLimitReached:
        budget = BudgetedSampler(sampler, limit=max_requests(3))
        return await draw_until_exhausted(budget.for_problem("p"), "q", 1, [])

    refusal = run(work, make_sampler(server))
    assert server.request_count == 3 and refusal.spent.requests == 3
    assert_matches_server(refusal.spent, server)

    # A draw of four samples is two requests of two: the second draw goes out with 2 of 3
    # spent, and the limit, known only once requests return, ends up overshot by its second.
    server.reset_log()

    async def fours(sampler: OpenAISampler) -> BudgetLimitReached:
        budget = BudgetedSampler(sampler, limit=max_requests(3))
        return await draw_until_exhausted(budget.for_problem("p"), "q", 4, [])

    refusal = run(fours, make_sampler(server, max_n=2))
    assert server.request_count == 4 and asked_n(server) == [2, 2, 2, 2]
    assert refusal.spent.requests == 4 and refusal.spent.samples == 8
    assert_matches_server(refusal.spent, server)


def test_failed_requests_count_toward_a_request_limit() -> None:
    failing = Fault("server_error", on_requests=frozenset({1}))
    with LoopbackServer(answers=numbered, faults=(failing,)) as srv:

        async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, int]:
            budget = BudgetedSampler(sampler, limit=max_requests(3))
            view, failures = budget.for_problem("p"), 0
            while not view.exhausted:
                try:
                    await view.sample("q", 1)
                except UpstreamError:
                    failures += 1
            return budget, failures

        budget, failures = run(work, make_sampler(srv))
        assert srv.request_count == 3 and failures == 1
        spent = budget.tracker.run
        assert (spent.requests, spent.failed_requests) == (2, 1)
        assert_matches_server(spent, srv)


def test_flops_limit_stops_at_the_draw_that_crosses_it(server: LoopbackServer) -> None:
    model = FlopsModel(parameters=1e9, n_layers=4, d_model=64)
    limit = 1e11

    async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, BudgetLimitReached]:
        budget = BudgetedSampler(sampler, limit=max_flops(limit), flops=model)
        refusal = await draw_until_exhausted(budget.for_problem("p"), "q", 1, [])
        return budget, refusal

    budget, refusal = run(work, make_sampler(server))
    # Each request's FLOPs from the server's token counts: one prefill, one decode.
    per_request = [
        model.prefill(r.prompt_tokens) + model.decode(r.prompt_tokens, r.completion_tokens)
        for r in generation_records(server)
    ]
    assert server.request_count == crossing(per_request, limit) >= 3
    assert budget.tracker.run.flops == pytest.approx(sum(per_request), rel=1e-12)
    assert refusal.spent.flops == budget.tracker.run.flops
    assert_matches_server(budget.tracker.run, server)


# -- concurrency, failures, composition ----------------------------------------------------------


def test_concurrent_problems_never_overshoot_sample_limits() -> None:
    with LoopbackServer(answers=numbered, latency=0.01) as server:

        async def problem(budget: BudgetedSampler, problem_id: str) -> int:
            sizes: list[int] = []
            await draw_until_exhausted(budget.for_problem(problem_id), problem_id, 3, sizes)
            return sum(sizes)

        async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, list[int]]:
            budget = BudgetedSampler(sampler, limit=max_samples(50), per_problem=max_samples(8))
            drawn = await asyncio.gather(*(problem(budget, f"p{i}") for i in range(10)))
            return budget, list(drawn)

        budget, drawn = run(work, make_sampler(server))
        assert sum(drawn) == 50
        assert all(count <= 8 for count in drawn)
        assert_matches_server(budget.tracker.run, server)
        assert {key: spend.samples for key, spend in budget.tracker.problems.items()} == {
            f"p{i}": drawn[i] for i in range(10)
        }


def test_samples_of_a_failed_draw_are_counted_before_the_error() -> None:
    with LoopbackServer(
        answers=numbered, faults=(Fault("server_error", on_requests=frozenset({1})),)
    ) as srv:

        async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, UpstreamError]:
            budget = BudgetedSampler(sampler, limit=max_samples(100))
            with pytest.raises(UpstreamError) as failed:
                await budget.for_problem("p").sample("q", 12)
            return budget, failed.value

        budget, error = run(work, make_sampler(srv, max_n=4))
        spent = budget.tracker.run
        assert isinstance(error.partial, SampleBatch)
        assert spent.samples == len(error.partial.candidates) == 8
        assert spent.failed_requests == 1
        assert spent.pending_samples == 0
        assert_matches_server(spent, srv)


def test_a_cancelled_draw_is_counted_in_full_once_its_requests_end() -> None:
    """Cancel a draw with two of its four requests answered and two still out.

    The caller is released at once; the requests run on, and once they end the tracker holds
    exactly what the server generated and delivered: nothing billed goes uncounted.
    """
    slow = Fault("slow", on_requests=frozenset({2, 3}), delay=1.0)
    with LoopbackServer(answers=numbered, latency=0.05, faults=(slow,)) as srv:

        async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, Spend, float]:
            budget = BudgetedSampler(sampler, limit=max_samples(100))
            draw = asyncio.create_task(budget.for_problem("p").sample("q", 8))
            for _ in range(1000):  # until the two fast requests have been answered
                if len(srv.records) >= 2:
                    break
                await asyncio.sleep(0.01)
            assert srv.request_count == 4
            draw.cancel()
            cancelled_at = time.perf_counter()
            with pytest.raises(asyncio.CancelledError):
                await draw
            released_after = time.perf_counter() - cancelled_at
            at_cancel = budget.tracker.run
            await budget.drain()
            return budget, at_cancel, released_after

        budget, at_cancel, released_after = run(work, make_sampler(srv, max_n=2))
        assert released_after < 0.5  # the slow requests take a second more
        # While the requests were out, their samples stayed reserved.
        assert at_cancel.pending_samples == 8 and at_cancel.samples == 0
        spent = budget.tracker.run
        assert spent.pending_samples == 0 and spent.samples == 8 and spent.requests == 4
        assert_matches_server(spent, srv)
        assert srv.generated_usage() == srv.delivered_usage()
        assert_matches_server(budget.tracker.problem("p"), srv)


def test_conditions_compose_and_accept_functions() -> None:
    either = max_samples(64) | max_cost(1.0)
    both = max_samples(64) & max_cost(1.0)
    custom = max_samples(64) | (lambda spent: spent.requests >= 3)
    assert not either(Spend(samples=10, cost=0.5))
    assert either(Spend(samples=64, cost=0.5))
    assert either(Spend(samples=10, cost=1.0))
    assert not both(Spend(samples=64, cost=0.5))
    assert both(Spend(samples=64, cost=1.0))
    assert custom(Spend(requests=3))
    # Samples in flight count against a sample limit, and what remains is what may be drawn.
    assert either.remaining_samples(Spend(samples=50, pending_samples=10)) == 4
    assert both.remaining_samples(Spend(samples=50)) is None  # cost may still allow more
    assert (max_samples(5) & max_samples(9)).remaining_samples(Spend(samples=6)) == 3
    assert repr(max_samples(64) | (max_cost(1) & max_time(30))) == (
        "max_samples(64) | (max_cost(1) & max_time(30))"
    )
    assert stop_when(lambda spent: spent.flops > 1)(Spend(flops=2))


def test_a_plain_function_limit_on_a_real_run(server: LoopbackServer) -> None:
    def three_requests(spent: Spend) -> bool:
        return spent.requests >= 3

    async def work(sampler: OpenAISampler) -> BudgetedSampler:
        budget = BudgetedSampler(sampler, per_problem=three_requests)
        await draw_until_exhausted(budget.for_problem("p"), "q", 1, [])
        return budget

    budget = run(work, make_sampler(server))
    assert budget.tracker.run.requests == 3
    assert_matches_server(budget.tracker.run, server)


def test_the_run_view_is_a_sampler_and_the_report_is_json(server: LoopbackServer) -> None:
    async def work(sampler: OpenAISampler) -> BudgetedSampler:
        budget = BudgetedSampler(
            sampler,
            limit=max_samples(5),
            per_problem=max_tokens(10_000),
            flops=FlopsModel(parameters=8e9, n_layers=32, d_model=4096),
        )
        assert isinstance(budget, Sampler)
        assert isinstance(budget.for_problem("p"), Sampler)
        await budget.for_problem("p").sample("q", 3)
        await budget.sample("q", 3, start_index=3)  # trimmed to 2
        return budget

    budget = run(work, make_sampler(server))
    data = json.loads(json.dumps(budget.to_dict()))
    assert data["run"]["samples"] == 5
    assert data["problems"]["p"]["samples"] == 3
    assert data["limits"] == {"run": "max_samples(5)", "per_problem": "max_tokens(10000)"}
    assert data["run"]["flops"] > 0
    assert_matches_server(budget.tracker.run, server)


# -- pure accounting ------------------------------------------------------------------------------


def brute_force_flops(
    model: FlopsModel, prompt: int, completions: list[int], requests: int
) -> float:
    """Sum 2 (N + 2 L d t) over every token position t, one prompt pass per request."""

    def token(position: int) -> float:
        return 2 * (model.parameters + 2 * model.n_layers * model.d_model * position)

    prefill = sum(token(t) for t in range(prompt)) * requests
    decode = sum(token(prompt + t) for d in completions for t in range(d))
    return prefill + decode


def test_flops_follow_the_per_token_formula() -> None:
    model = FlopsModel(parameters=1e9, n_layers=16, d_model=2048)
    completions = [5, 17, 0, 40]
    candidates = tuple(
        Candidate(text="x", index=i, completion_tokens=d, model="m")
        for i, d in enumerate(completions)
    )
    batch = SampleBatch(candidates, Usage(requests=2, samples=4, prompt_tokens=2 * 30))
    assert model.batch_flops(batch) == pytest.approx(brute_force_flops(model, 30, completions, 2))
    without_attention = FlopsModel(parameters=1e9)
    assert without_attention.batch_flops(batch) == pytest.approx(2e9 * (60 + sum(completions)))


def test_tracker_prices_by_model_prefix_and_default() -> None:
    tracker = BudgetTracker(
        pricing={
            "gpt-4o": Pricing(2.5, 10.0),
            "gpt-4o-mini": Pricing(0.15, 0.6),
            "*": Pricing(1, 1),
        }
    )

    def batch(model: str) -> SampleBatch:
        candidate = Candidate(text="x", index=0, completion_tokens=1_000_000, model=model)
        return SampleBatch(
            (candidate,), Usage(requests=1, samples=1, prompt_tokens=10**6, completion_tokens=10**6)
        )

    assert tracker.record(batch("gpt-4o-mini-2024-07-18"), "a").usage.cost == pytest.approx(0.75)
    assert tracker.record(batch("gpt-4o-2024-08-06"), "a").usage.cost == pytest.approx(12.5)
    assert tracker.record(batch("llama"), "b").usage.cost == pytest.approx(2.0)
    assert tracker.run.cost == pytest.approx(15.25)
    assert tracker.problem("a").cost == pytest.approx(13.25)
    assert tracker.run.samples == 3
    assert math.isclose(sum(p.cost for p in tracker.problems.values()), tracker.run.cost)


# -- the request path (proxy and wrapped client): a judge draws under the request's budget --------

QUESTION = "What is 6 * 7?"
VOTES = ["\\boxed{42}", "\\boxed{41}", "so \\boxed{42}", "\\boxed{13}"]


def judged_world(request: ScriptRequest) -> str:
    if request.prompt.startswith("Rate how good"):
        return (
            "Looks right. Score: 9" if "42" in request.prompt.split("Response:")[1] else "Score: 2"
        )
    return VOTES[request.index % len(VOTES)]


def scaled(server: LoopbackServer, budget: dict[str, float]) -> ScaledAnswer:
    body = {
        "model": "loopback",
        "messages": [{"role": "user", "content": QUESTION}],
        "ttscale": {
            "strategy": "best_of_n",
            "samples": 4,
            # One judge call at a time, so that a token limit crossed by one refuses the next.
            "verifier": {"name": "judge", "concurrency": 1},
            "budget": budget,
        },
    }

    async def work(sampler: OpenAISampler) -> ScaledAnswer:
        request = parse_request(body, chat=True)
        return await run_scaled(plan_scaled(request, request.settings, sampler), sampler)

    return run(work, make_sampler(server))


def test_a_token_budget_stops_the_judges_calls_and_counts_them_exactly() -> None:
    with LoopbackServer(answers=judged_world) as server:
        unlimited = scaled(server, {})
        assert server.request_count == 5  # the samples, then one judge call per candidate
        draw = server.records[0]
        assert draw.choices == 4
        sampling_tokens = draw.prompt_tokens + draw.completion_tokens
        assert unlimited.budget["run"]["total_tokens"] == sum(
            server.delivered_usage()[key] for key in ("prompt_tokens", "completion_tokens")
        )
        server.reset_log()

        # Room for the samples and one judge call, which crosses the limit: the next is refused.
        answer = scaled(server, {"tokens": sampling_tokens + 1})
        records = server.records
        assert server.request_count == 2
        judge_call = records[1]
        assert judge_call.body is not None and "Rate how good" in json.dumps(judge_call.body)
        delivered = server.delivered_usage()
        usage = answer.usage
        assert (usage.requests, usage.samples) == (delivered["requests"], delivered["samples"])
        assert usage.prompt_tokens == delivered["prompt_tokens"]
        assert usage.completion_tokens == delivered["completion_tokens"]
        assert answer.verifier_usage.requests == 1
        assert answer.verifier_usage.prompt_tokens == judge_call.prompt_tokens
        assert answer.verifier_usage.completion_tokens == judge_call.completion_tokens
        spent = answer.budget["run"]
        assert spent["requests"] == 2 and spent["total_tokens"] == usage.total_tokens
        # The one judged candidate and three the budget left unjudged, none of them lost.
        scores = answer.result.scores
        assert len(answer.result.candidates) == 4
        assert [s.value for s in scores] == [0.9, None, None, None]
        assert [bool(s.details.get("unjudged")) for s in scores] == [False, True, True, True]
        assert all("budget refused" in s.reason for s in scores[1:])
