"""A server's caps hold on every draw, whatever the strategy asks for.

Caps (total samples, ``max_tokens`` of each sample) are enforced at the budget, the one choke
point every draw goes through. Each registered strategy (the registry is iterated, so a new one is
covered without a change here) is built asking for far more than the caps, run against the
loopback server, and the server's own request log shows what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import httpx2
import pytest

from ttscale import OpenAISampler, SamplingParams, registry
from ttscale.budget import BudgetedSampler, DrawCaps
from ttscale.proxy import BackgroundProxy, ProxyConfig
from ttscale.settings import RequestLimits
from ttscale.testing.server import LoopbackServer, ScriptRequest
from ttscale.types import Problem

pytestmark = pytest.mark.timeout(120)

CAPS = DrawCaps(samples=5, max_tokens=32)
ASKED_SAMPLES = 48  # a multiple of every beam width a search strategy defaults to
ASKED_TOKENS = 10**6

# What a strategy needs beyond samples, k and params, and the ways the issue found past the caps.
OPTIONS: Mapping[str, Mapping[str, Any]] = {
    "graph": {"spec": {"nodes": [{"id": "a", "samples": 1000, "max_tokens": 1_000_000}]}},
    "deepening": {"b_max": 1_000_000_000},
}


def steps(request: ScriptRequest) -> str:
    return "step one\n\nstep two\n\nso \\boxed{42}"


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=steps) as running:
        yield running


def sent(server: LoopbackServer) -> tuple[int, list[int | None]]:
    """Samples the server delivered, and the max_tokens of every generation request it got."""
    bodies = [r.body for r in server.records if r.body and r.ordinal >= 0]
    return server.delivered_usage()["samples"], [body.get("max_tokens") for body in bodies]


def run_strategy(
    server: LoopbackServer,
    name: str,
    caps: DrawCaps | None,
    options: Mapping[str, Any] | None = None,
    samples: int = ASKED_SAMPLES,
) -> None:
    """Run strategy ``name`` asking for far more than the caps; whatever it does with refusals
    (stop, raise), what it sent is in the server's log."""

    async def main() -> None:
        sampler = OpenAISampler(
            model="loopback", base_url=server.base_url, api_key="k", max_retries=0, max_n=4
        )
        async with sampler:
            strategy = registry.build_strategy(
                name,
                samples,
                1,
                SamplingParams(max_tokens=ASKED_TOKENS),
                options or OPTIONS.get(name, {}),
            )
            budget = BudgetedSampler(sampler, caps=caps)
            problem = Problem(id="p", prompt="What is 6 * 7?", answer="42")
            verifier = registry.create("verifier", "exact_match")
            # Any outcome will do: the caps are about what was sent, not how the run ended.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    strategy.run(problem, budget.for_problem("p"), verifier), timeout=60
                )

    asyncio.run(main())


@pytest.mark.parametrize("name", registry.available("strategy"))
def test_every_registered_strategy_meets_the_caps(server: LoopbackServer, name: str) -> None:
    run_strategy(server, name, CAPS)
    samples, max_tokens = sent(server)
    assert max_tokens, f"{name} sent nothing: the check would be empty"
    assert 1 <= samples <= 5
    assert all(tokens is not None and tokens <= 32 for tokens in max_tokens), max_tokens


def test_control_without_caps_the_same_runs_ask_for_more(server: LoopbackServer) -> None:
    # The checks above can fail: uncapped, the same requests go out over both caps.
    run_strategy(server, "majority", None)
    samples, _ = sent(server)
    assert samples == ASKED_SAMPLES
    server.reset_log()
    # (A smaller node than OPTIONS' 1,000 samples, which would take long to serve uncapped.)
    graph = {"spec": {"nodes": [{"id": "a", "samples": 40, "max_tokens": 1_000_000}]}}
    run_strategy(server, "graph", None, graph)
    samples, max_tokens = sent(server)
    assert samples == 40 and max(t or 0 for t in max_tokens) == 1_000_000
    server.reset_log()
    run_strategy(server, "deepening", None, samples=4)
    assert max(t or 0 for t in sent(server)[1]) > 32


def test_caps_trim_a_draw_and_bring_max_tokens_down() -> None:
    params = SamplingParams(max_tokens=10, temperature=0.5)
    assert CAPS.params(params) == params  # within the cap: unchanged
    assert CAPS.params(SamplingParams(max_tokens=33)) == SamplingParams(max_tokens=32)
    assert CAPS.params(None) == SamplingParams(max_tokens=32)  # unset: the cap, not the server's
    assert DrawCaps().params(None) is None


# -- through the proxy, as the issue tried it --------------------------------------------------


ISSUE_REQUESTS = [
    {"strategy": "graph", "spec": {"nodes": [{"id": "a", "samples": 1000}]}},
    {"strategy": "graph", "spec": {"nodes": [{"id": "a", "samples": 2, "max_tokens": 1_000_000}]}},
    {"strategy": "deepening", "b_max": 1_000_000_000},
]


@pytest.mark.parametrize("settings", ISSUE_REQUESTS)
def test_the_proxy_caps_what_a_request_sends_upstream(
    server: LoopbackServer, settings: dict[str, Any]
) -> None:
    limits = RequestLimits(max_samples=8, max_tokens=64)
    config = ProxyConfig(base_url=server.base_url, model="loopback", limits=limits)
    with BackgroundProxy(config) as proxy:
        reply = httpx2.post(
            proxy.base_url + "/chat/completions",
            json={
                "model": "loopback",
                "messages": [{"role": "user", "content": "What is 6 * 7?"}],
                "ttscale": settings,
            },
            timeout=60,
        )
    assert reply.status_code == 200, reply.text
    samples, max_tokens = sent(server)
    assert 1 <= samples <= 8
    assert max_tokens and all(t is not None and t <= 64 for t in max_tokens), max_tokens
    assert reply.json()["ttscale"]["samples_used"] <= 8
