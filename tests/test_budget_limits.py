"""Each of the budget's limits pinned alone, so that a change to any one of them fails a test.

Every test here binds one limit only (a per-problem limit with no run limit; a run limit with no
per-problem one; each stop condition at its boundary), and asserts the counters a draw moves (in
flight, pending samples, draws) and what the loopback server was asked for. Every test fails fast
(a timeout of its own) rather than hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from ttscale import OpenAISampler, SamplingParams
from ttscale.budget import (
    BudgetedSampler,
    BudgetLimitReached,
    BudgetTracker,
    DrawCaps,
    Spend,
    budget_condition,
    max_completion_tokens,
    max_cost,
    max_flops,
    max_requests,
    max_samples,
    max_time,
    max_tokens,
    parse_limits,
    stop_when,
)
from ttscale.errors import ConfigError
from ttscale.testing.server import LoopbackServer, ScriptRequest
from ttscale.types import Candidate, SampleBatch, TokenLogprob, Usage

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


def answer(request: ScriptRequest) -> str:
    return f"answer {request.index}"


@pytest.fixture(scope="module")
def shared() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=answer) as running:
        yield running


@pytest.fixture
def server(shared: LoopbackServer) -> LoopbackServer:
    shared.reset_log()
    return shared


def drive(server: LoopbackServer, work: Callable[[OpenAISampler], Awaitable[T]]) -> T:
    async def main() -> T:
        sampler = OpenAISampler(
            model="loopback",
            base_url=server.base_url,
            api_key="k",
            max_retries=0,
            max_n=4,
            params=SamplingParams(seed=0),
        )
        async with sampler:
            return await asyncio.wait_for(work(sampler), timeout=30)

    return asyncio.run(main())


async def sizes_until_refused(view: object, n: int) -> tuple[list[int], BudgetLimitReached]:
    sizes: list[int] = []
    while True:
        try:
            batch = await view.sample("q", n, start_index=sum(sizes))  # type: ignore[attr-defined]
        except BudgetLimitReached as refusal:
            return sizes, refusal
        sizes.append(len(batch.candidates))


def asked_n(server: LoopbackServer) -> list[int]:
    bodies = [r.body for r in server.records if r.body and r.ordinal >= 0]
    return [int(body.get("n", 1)) for body in bodies]


# -- per problem, per run, per draw --------------------------------------------------------------


def test_a_per_problem_limit_alone_trims_and_refuses_each_problem(server: LoopbackServer) -> None:
    # No run limit: only the problem's own limit can stop its draws.
    Outcome = tuple[list[int], BudgetLimitReached]

    async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, list[Outcome]]:
        budget = BudgetedSampler(sampler, per_problem=max_samples(8))
        first = await sizes_until_refused(budget.for_problem("a"), 3)
        second = await sizes_until_refused(budget.for_problem("b"), 3)
        return budget, [first, second]

    budget, outcomes = drive(server, work)
    for (sizes, refusal), problem_id in zip(outcomes, "ab", strict=True):
        assert sizes == [3, 3, 2]
        assert refusal.scope == "problem" and refusal.problem_id == problem_id
        assert refusal.spent.samples == 8
        assert budget.tracker.problem(problem_id).samples == 8
    assert asked_n(server) == [3, 3, 2, 3, 3, 2]
    assert budget.tracker.run.samples == 16 == server.delivered_usage()["samples"]
    assert budget.exhausted("a") and not budget.exhausted()  # the run has no limit


def test_the_tighter_of_run_and_problem_limits_sizes_each_draw(server: LoopbackServer) -> None:
    async def work(sampler: OpenAISampler) -> tuple[list[int], BudgetLimitReached]:
        budget = BudgetedSampler(sampler, limit=max_samples(7), per_problem=max_samples(5))
        return await sizes_until_refused(budget.for_problem("p"), 4)

    sizes, refusal = drive(server, work)
    assert sizes == [4, 1]  # the problem's 5 binds before the run's 7
    assert refusal.scope == "problem"
    assert asked_n(server) == [4, 1]


def test_a_run_limit_alone_spans_problems(server: LoopbackServer) -> None:
    async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, list[int], list[int]]:
        budget = BudgetedSampler(sampler, limit=max_samples(6))
        first, _ = await sizes_until_refused(budget.for_problem("a"), 4)
        second, refusal = await sizes_until_refused(budget.for_problem("b"), 4)
        assert refusal.scope == "run" and refusal.run_spent.samples == 6
        return budget, first, second

    budget, first, second = drive(server, work)
    assert first == [4, 2] and second == []
    assert budget.tracker.problem("b").samples == 0


def test_caps_bound_samples_and_max_tokens_of_every_draw(server: LoopbackServer) -> None:
    async def work(sampler: OpenAISampler) -> tuple[list[int], BudgetLimitReached]:
        budget = BudgetedSampler(sampler, caps=DrawCaps(samples=5, max_tokens=7))
        view = budget.for_problem("p")
        await view.sample("q", 2, SamplingParams(max_tokens=100))
        return await sizes_until_refused(view, 4)

    sizes, refusal = drive(server, work)
    assert sizes == [3] and refusal.spent.samples == 5
    bodies = [r.body for r in server.records if r.body and r.ordinal >= 0]
    assert [body.get("max_tokens") for body in bodies] == [7, 7]


def test_the_report_names_caps_only_when_there_are_some() -> None:
    async def nothing(prompt: object, n: int, params: object = None, **_: object) -> SampleBatch:
        raise AssertionError("nothing is drawn here")

    class Quiet:
        sample = staticmethod(nothing)

    capped = BudgetedSampler(Quiet(), caps=DrawCaps(samples=3))
    assert capped.to_dict()["caps"] == {"samples": 3, "max_tokens": None}
    assert "caps" not in BudgetedSampler(Quiet()).to_dict()


def test_a_with_model_twin_keeps_limits_caps_and_tracker(server: LoopbackServer) -> None:
    async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, BudgetedSampler]:
        budget = BudgetedSampler(
            sampler, limit=max_samples(5), per_problem=max_samples(4), caps=DrawCaps(max_tokens=9)
        )
        twin = budget.with_model("other")
        await twin.for_problem("p").sample("q", 3)
        return budget, twin

    budget, twin = drive(server, work)
    assert twin.tracker is budget.tracker and twin.caps == budget.caps
    assert twin.limit is budget.limit and twin.per_problem is budget.per_problem
    assert budget.tracker.run.samples == 3 and budget.tracker.problem("p").samples == 3
    assert [r.body["model"] for r in server.records if r.body] == ["other"]


# -- counters --------------------------------------------------------------------------------------


def test_a_draw_moves_every_counter_while_in_flight_and_after(server: LoopbackServer) -> None:
    seen: dict[str, Spend] = {}

    async def work(sampler: OpenAISampler) -> BudgetedSampler:
        budget = BudgetedSampler(sampler, limit=max_samples(100))
        view = budget.for_problem("p")
        draw = asyncio.create_task(view.sample("q", 6))
        await asyncio.sleep(0)  # the draw has started: reserved, not yet delivered
        seen["run"], seen["problem"] = budget.tracker.run, view.spent
        await draw
        await view.sample("q", 2, start_index=6)
        return budget

    budget = drive(server, work)
    for spent in seen.values():
        assert spent.pending_samples == 6 and spent.samples == 0 and spent.draws == 0
    for spent in (budget.tracker.run, budget.tracker.problem("p")):
        assert spent.draws == 2 and spent.pending_samples == 0 and spent.samples == 8
        assert spent.requests == server.delivered_usage()["requests"]
    assert budget.to_dict()["run"]["draws"] == 2


def test_the_clock_runs_only_while_draws_are_in_flight() -> None:
    now = [100.0]
    tracker = BudgetTracker(clock=lambda: now[0])
    assert tracker.run.wall_time_s == 0.0 and tracker.started_at() is None
    tracker.start_draw("p", 3)
    now[0] = 103.0
    assert tracker.run.wall_time_s == 3.0  # in flight: the clock runs
    assert tracker.run.pending_samples == 3 and tracker.problem("p").pending_samples == 3
    tracker.finish_draw("p", 3, None)
    now[0] = 110.0
    assert tracker.run.wall_time_s == 3.0  # stopped at the draw's end
    assert tracker.live().wall_time_s == 10.0  # what limits see runs to now
    assert tracker.started_at() == 100.0 == tracker.started_at("p")
    assert tracker.run.draws == 1 and tracker.run.pending_samples == 0


def test_record_counts_a_batch_drawn_outside_as_one_draw() -> None:
    tracker = BudgetTracker()
    candidate = Candidate(text="x", index=0, completion_tokens=4)
    batch = SampleBatch((candidate,), Usage(requests=1, samples=1, completion_tokens=4))
    tracker.record(batch, "p")
    for spent in (tracker.run, tracker.problem("p")):
        assert (spent.draws, spent.samples, spent.completion_tokens) == (1, 1, 4)
        assert spent.pending_samples == 0
    assert tracker.problem("other") == Spend()


# -- n = 0 and bad draws ---------------------------------------------------------------------------


def test_a_draw_of_nothing_sends_nothing_and_counts_nothing(server: LoopbackServer) -> None:
    async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, SampleBatch]:
        budget = BudgetedSampler(sampler, limit=max_samples(2))
        empty = await budget.for_problem("p").sample("q", 0)
        await budget.for_problem("p").sample("q", 2)
        with pytest.raises(BudgetLimitReached):  # exhausted: even nothing is refused
            await budget.for_problem("p").sample("q", 0)
        with pytest.raises(ConfigError):
            await budget.for_problem("p").sample("q", -1)
        return budget, empty

    budget, empty = drive(server, work)
    assert empty.candidates == () and empty.usage == Usage()
    assert budget.tracker.run.draws == 1 and asked_n(server) == [2]


def test_problem_ids_and_trackers_are_checked() -> None:
    budget = BudgetedSampler(lambda prompt, n: [])  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        budget.for_problem("")
    assert budget.for_problem("p") is budget.for_problem("p")
    with pytest.raises(ConfigError):
        BudgetedSampler(budget, tracker=BudgetTracker(), flops=None, pricing={})
    with pytest.raises(ConfigError):
        BudgetedSampler(budget, limit=42)  # type: ignore[arg-type]


# -- each condition at its boundary ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "below", "at"),
    [
        (max_samples(5), Spend(samples=4), Spend(samples=5)),
        (max_samples(5), Spend(samples=2, pending_samples=2), Spend(samples=2, pending_samples=3)),
        (max_requests(3), Spend(requests=2), Spend(requests=3)),
        (
            max_requests(3),
            Spend(requests=1, failed_requests=1),
            Spend(requests=2, failed_requests=1),
        ),
        (
            max_tokens(10),
            Spend(prompt_tokens=5, completion_tokens=4),
            Spend(prompt_tokens=6, completion_tokens=4),
        ),
        (
            max_completion_tokens(10),
            Spend(prompt_tokens=50, completion_tokens=9),
            Spend(completion_tokens=10),
        ),
        (max_cost(1.0), Spend(cost=0.999), Spend(cost=1.0)),
        (max_time(2.0), Spend(wall_time_s=1.99), Spend(wall_time_s=2.0)),
        (max_flops(1e9), Spend(flops=9.99e8), Spend(flops=1e9)),
    ],
    ids=lambda value: repr(value) if not isinstance(value, Spend) else "",
)
def test_each_condition_stops_exactly_at_its_limit(
    condition: object, below: Spend, at: Spend
) -> None:
    assert not condition(below)  # type: ignore[operator]
    assert condition(at)  # type: ignore[operator]


def test_only_sample_limits_say_what_remains() -> None:
    spent = Spend(samples=3, pending_samples=1)
    assert max_samples(10).remaining_samples(spent) == 6
    assert max_samples(3).remaining_samples(spent) == 0  # never negative
    for other in (max_requests(1), max_tokens(1), max_cost(1), max_time(1), max_flops(1)):
        assert other.remaining_samples(spent) is None
    assert stop_when(lambda s: False).remaining_samples(spent) is None


def test_limits_refuse_bad_values() -> None:
    with pytest.raises(ConfigError):
        max_samples(2.5)  # type: ignore[arg-type]
    for make in (max_samples, max_requests, max_tokens, max_cost, max_time, max_flops):
        with pytest.raises(ConfigError):
            make(-1)
        make(0)  # zero is a limit that stops at once
    assert max_samples(0)(Spend())


# -- composition, both operand orders ------------------------------------------------------------


def few_requests(spent: Spend) -> bool:
    return spent.requests >= 2


@pytest.mark.parametrize("order", ["condition first", "function first"])
def test_or_with_a_plain_function_in_either_order(order: str) -> None:
    either = (
        max_samples(5) | few_requests
        if order == "condition first"
        else few_requests | max_samples(5)
    )
    assert either is not None
    assert not either(Spend(samples=4, requests=1))
    assert either(Spend(samples=5, requests=1))
    assert either(Spend(samples=0, requests=2))
    assert either.remaining_samples(Spend(samples=1)) == 4
    parts = ["max_samples(5)", "stop_when(few_requests)"]
    expected = " | ".join(parts if order == "condition first" else reversed(parts))
    assert repr(either) == expected


@pytest.mark.parametrize("order", ["condition first", "function first"])
def test_and_with_a_plain_function_in_either_order(order: str) -> None:
    both = (
        max_samples(5) & few_requests
        if order == "condition first"
        else few_requests & max_samples(5)
    )
    assert both is not None
    assert not both(Spend(samples=5, requests=1))
    assert not both(Spend(samples=0, requests=2))
    assert both(Spend(samples=5, requests=2))
    # The function part cannot bound samples, so together they do not either.
    assert both.remaining_samples(Spend(samples=1)) is None
    parts = ["max_samples(5)", "stop_when(few_requests)"]
    expected = " & ".join(parts if order == "condition first" else reversed(parts))
    assert repr(both) == expected


def test_and_of_sample_limits_draws_until_the_larger_stops() -> None:
    both = max_samples(4) & max_samples(9)
    assert both.remaining_samples(Spend(samples=2)) == 7
    assert (max_samples(4) | max_samples(9)).remaining_samples(Spend(samples=2)) == 2


# -- budget mappings ---------------------------------------------------------------------------


def test_budget_mappings_are_read_in_one_place() -> None:
    limits = parse_limits({"samples": 4, "tokens": 100, "cost": 1, "seconds": 2.5}, "budget")
    assert limits == {"samples": 4, "tokens": 100, "cost": 1.0, "seconds": 2.5}
    condition = budget_condition(limits)
    assert condition is not None
    assert repr(condition) == "max_samples(4) | max_tokens(100) | max_cost(1) | max_time(2.5)"
    assert budget_condition({}) is None
    for bad, param in [
        ({"money": 1}, "b.money"),
        ({"samples": 2.5}, "b.samples"),
        ({"samples": True}, "b.samples"),
        ({"tokens": 0}, "b.tokens"),
        ({"cost": -1}, "b.cost"),
        ({"cost": float("inf")}, "b.cost"),
        ({"seconds": "1"}, "b.seconds"),
        ([1], "b"),
    ]:
        with pytest.raises(ConfigError) as refused:
            parse_limits(bad, "b")
        assert refused.value.param == param


class StopAfter:
    """A watcher that stops its sample after ``tokens`` tokens."""

    def __init__(self, tokens: int) -> None:
        self.left = tokens

    def feed(self, token: TokenLogprob) -> bool:
        self.left -= 1
        return self.left <= 0


def test_watched_draws_are_limited_and_counted_like_any_other(server: LoopbackServer) -> None:
    async def work(sampler: OpenAISampler) -> tuple[BudgetedSampler, SampleBatch]:
        budget = BudgetedSampler(sampler, limit=max_samples(3))
        assert budget.watches and budget.for_problem("p").watches
        batch = await budget.for_problem("p").sample_watched(
            "q", 5, SamplingParams(logprobs=0), watcher=lambda index: StopAfter(1)
        )
        with pytest.raises(BudgetLimitReached):
            await budget.for_problem("p").sample_watched("q", 1, watcher=lambda i: StopAfter(1))
        return budget, batch

    budget, batch = drive(server, work)
    assert [c.index for c in batch.candidates] == [0, 1, 2]  # trimmed to the limit
    assert budget.tracker.run.samples == 3 and budget.tracker.run.draws == 1


def test_a_sampler_that_cannot_stream_refuses_a_watched_draw() -> None:
    async def draw(prompt: object, n: int, params: object = None, **_: object) -> SampleBatch:
        raise AssertionError("nothing may be sent")

    class Plain:
        sample = staticmethod(draw)

    budget = BudgetedSampler(Plain())
    assert not budget.watches
    with pytest.raises(ConfigError, match="cannot stream"):
        asyncio.run(budget.sample_watched("q", 1, watcher=lambda index: StopAfter(1)))


def test_a_draw_numbers_its_samples_from_zero_unless_told(server: LoopbackServer) -> None:
    async def work(sampler: OpenAISampler) -> list[SampleBatch]:
        budget = BudgetedSampler(sampler)
        first = await budget.draw("p", "q", 2)
        return [first, await budget.draw("p", "q", 2, start_index=2), await budget.sample("r", 2)]

    first, second, run_level = drive(server, work)
    assert [c.index for c in first.candidates] == [0, 1]
    assert [c.index for c in second.candidates] == [2, 3]
    assert [c.index for c in run_level.candidates] == [0, 1]


def test_a_draw_failing_with_another_error_releases_its_reservation() -> None:
    async def broken(prompt: object, n: int, params: object = None, **_: object) -> SampleBatch:
        raise RuntimeError("the sampler broke")

    class Broken:
        sample = staticmethod(broken)

    budget = BudgetedSampler(Broken(), limit=max_samples(4))
    with pytest.raises(RuntimeError, match="broke"):
        asyncio.run(budget.for_problem("p").sample("q", 3))
    spent = budget.tracker.run
    assert (spent.pending_samples, spent.samples, spent.draws) == (0, 0, 1)
    assert budget.tracker.problem("p").pending_samples == 0


# -- a run budget dealt into shards' slices ------------------------------------------------------


def test_a_run_budget_splits_into_slices_that_never_exceed_it() -> None:
    from ttscale.budget import limits_left, most_parts, split_limits

    limits = {"samples": 10, "tokens": 7, "cost": 1.5, "seconds": 60.0}
    slices = split_limits(limits, 3)
    assert [s["samples"] for s in slices] == [4, 3, 3]  # the remainder to the first slices
    assert [s["tokens"] for s in slices] == [3, 2, 2]
    assert sum(s["cost"] for s in slices) == pytest.approx(1.5)
    assert all(s["seconds"] == 60.0 for s in slices)  # slices spend at once
    assert most_parts(limits) == 7  # no more slices than the smallest count
    with pytest.raises(ConfigError, match="non-empty"):
        split_limits(limits, 8)
    spent = Usage(samples=4, prompt_tokens=2, completion_tokens=3, cost=0.5)
    assert limits_left(limits, spent) == {"samples": 6, "tokens": 2, "cost": 1.0, "seconds": 60.0}
    assert most_parts(limits_left({"samples": 3}, Usage(samples=5))) == 0  # spent: none
