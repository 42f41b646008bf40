"""The sampler a request's verifier asks: a pass-through to the request's budget while it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ttscale.errors import ConfigError
from ttscale.protocols import Sampler, Verifier, can_watch
from ttscale.samplers.openai_sampler import OpenAISampler
from ttscale.scaling import (
    RequestBudgetSampler,
    ScaledAnswer,
    parse_request,
    plan_scaled,
    run_scaled,
)
from ttscale.testing import ScriptedSampler
from ttscale.testing.server import LoopbackServer
from ttscale.types import Candidate, Problem, SamplingParams, Score, TokenLogprob


class Never:
    """A token watcher that never stops a stream."""

    def feed(self, token: TokenLogprob) -> bool:
        return False


class Asking:
    """A verifier that asks a model three ways: a plain draw, another model's, a watched one."""

    def __init__(self, sampler: Sampler, through: bool) -> None:
        self.sampler = sampler
        self.through = through  # False: the control asks the plain sampler, around the budget
        self.watches: bool | None = None

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        asks: Any = self.sampler
        self.watches = can_watch(asks)
        await asks.sample("plain", 1)
        await asks.with_model("other").sample("other model", 1)
        await asks.sample_watched("watched", 1, watcher=lambda index: Never())
        return [Score(1.0) for _ in candidates]


def scaled(server: LoopbackServer, *, through: bool) -> tuple[ScaledAnswer, Asking]:
    body = {
        "model": "loopback",
        "messages": [{"role": "user", "content": "What is 6 * 7?"}],
        "ttscale": {"strategy": "best_of_n", "samples": 2, "verifier": "judge"},
    }
    made: list[Asking] = []

    def factory(name: str, options: Mapping[str, Any], asks: Sampler) -> Verifier:
        made.append(Asking(asks if through else sampler, through))
        return made[-1]

    sampler = OpenAISampler(
        model="loopback",
        base_url=server.base_url,
        api_key="test",
        max_retries=0,
        params=SamplingParams(seed=0),
    )

    async def main() -> ScaledAnswer:
        async with sampler:
            request = parse_request(body, chat=True)
            plan = plan_scaled(request, request.settings, sampler, verifier_factory=factory)
            return await run_scaled(plan, sampler)

    return asyncio.run(main()), made[0]


def test_a_verifiers_draws_of_every_kind_count_in_the_requests_budget() -> None:
    with LoopbackServer(answers=lambda request: "\\boxed{42}") as server:
        answer, verifier = scaled(server, through=True)
        models = [r.body["model"] for r in server.records if r.body is not None]
    # The samples, then the verifier's plain, other-model and streamed draws, in one budget.
    assert models == ["loopback", "loopback", "other", "loopback"]
    assert verifier.watches is True
    assert answer.budget["run"]["requests"] == 4


def test_control_a_verifier_around_the_budget_is_not_counted() -> None:
    with LoopbackServer(answers=lambda request: "\\boxed{42}") as server:
        answer, _ = scaled(server, through=False)
        assert server.request_count == 4
    assert answer.budget["run"]["requests"] == 1


def test_outside_a_run_it_asks_the_sampler_and_refuses_a_model_it_cannot_switch_to() -> None:
    scripted = ScriptedSampler(lambda text, index: f"{text}#{index}")
    asks = RequestBudgetSampler(scripted)
    batch = asyncio.run(asks.sample("q", 2, start_index=3))
    assert [c.text for c in batch.candidates] == ["q#3", "q#4"]
    assert scripted.calls == [("q", 2, 3)]
    assert not can_watch(asks)  # the scripted sampler cannot stream
    with pytest.raises(ConfigError, match="cannot switch models"):
        asks.with_model("other")
