"""Every strategy through the real OpenAISampler against the loopback HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence

import pytest

from ttscale import OpenAISampler, Problem, SamplingParams, as_verifier
from ttscale.seeds import derive_seed
from ttscale.strategies import (
    Adaptive,
    AheadByK,
    BestOfMajority,
    BestOfN,
    HedgedSampling,
    Majority,
)
from ttscale.testing.server import LoopbackServer
from ttscale.types import Candidate, Result, Score
from ttscale.verifiers.math_answers import ExactMatchVerifier, MathVerifier, math_verify_available

BASE_SEED = 7
HALF = "What is one half?"

SCRIPT = {
    "What is 6 * 7?": [
        "6 * 7 = 42, so the answer is \\boxed{42}.",
        "I get \\boxed{42}",
        "Maybe \\boxed{41}",
        "Final: \\boxed{42.0}",
        "Hmm, \\boxed{13}",
    ],
    "Pick one": ["The answer is (B)."],
    # Six ways of writing one half against four sevens. The extractor alone makes "0.5" of the
    # first three (so 7 leads 4 to 3); only math-verify sees that the other three are 0.5 too.
    HALF: [
        "\\boxed{7}",
        "\\boxed{0.5}",
        "\\boxed{7}",
        "\\boxed{1/2}",
        "\\boxed{\\frac{1}{2}}",
        "\\boxed{7}",
        "\\boxed{\\sqrt{0.25}}",
        "\\boxed{\\frac{\\sqrt{4}}{4}}",
        "\\boxed{7}",
        "\\boxed{\\dfrac12}",
    ],
}


class TableVerifier:
    """Scores a candidate by the first table key its text contains (else 0)."""

    def __init__(self, table: Mapping[str, float]) -> None:
        self.table = table

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        return [
            Score(next((v for key, v in self.table.items() if key in c.text), 0.0))
            for c in candidates
        ]


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=SCRIPT) as running:
        yield running


def run(
    server: LoopbackServer,
    strategy: object,
    prompt: str,
    verifier: object = None,
    params: SamplingParams | None = None,
    answer: str | None = None,
) -> Result:
    async def go() -> Result:
        sampler = OpenAISampler(
            model="loopback",
            base_url=server.base_url,
            api_key="test",
            params=params or SamplingParams(seed=BASE_SEED, temperature=0.8),
        )
        async with sampler:
            problem = Problem(id="p", prompt=prompt, answer=answer)
            return await strategy.run(problem, sampler, verifier)  # type: ignore[attr-defined]

    return asyncio.run(go())


def generation_bodies(server: LoopbackServer) -> list[dict[str, object]]:
    return [r.body for r in server.records if r.path.endswith("completions") and r.body]


def assert_paid_what_the_server_delivered(result: Result, server: LoopbackServer) -> None:
    delivered = server.delivered_usage()
    assert result.usage.samples == delivered["samples"] == len(result.candidates)
    assert result.usage.completion_tokens == delivered["completion_tokens"]
    assert result.usage.prompt_tokens == delivered["prompt_tokens"]
    assert [c.index for c in result.candidates] == list(range(len(result.candidates)))
    assert_seeds_distinct_per_request(result, server)


def assert_seeds_distinct_per_request(result: Result, server: LoopbackServer) -> None:
    """Every request has its own seed, derived from the base seed and its first sample's index.

    Seeds are per request, not per sample: the choices of one ``n`` request share its seed, and
    the server makes them differ. So samples share a seed exactly when they share a request.
    """
    request_seeds = [body["seed"] for body in generation_bodies(server)]
    assert len(request_seeds) == len(set(request_seeds))
    by_request: dict[str | None, list[Candidate]] = {}
    for candidate in result.candidates:
        by_request.setdefault(candidate.request_id, []).append(candidate)
    assert None not in by_request
    for members in by_request.values():
        first = min(c.index for c in members)
        assert {c.seed for c in members} == {derive_seed(BASE_SEED, first)}
    assert len({c.seed for c in result.candidates}) == len(by_request)
    assert {c.seed for c in result.candidates} <= set(request_seeds)


def test_majority(server: LoopbackServer) -> None:
    result = run(server, Majority(samples=10, extractor="boxed"), "What is 6 * 7?")
    assert result.answers == ("42",)
    votes = next(e.data["votes"] for e in result.trace if e.step == "vote")
    assert votes == {"42": 6, "41": 2, "13": 2}
    assert_paid_what_the_server_delivered(result, server)


def test_best_of_n(server: LoopbackServer) -> None:
    verifier = TableVerifier({"41": 0.9, "42": 0.5})
    result = run(server, BestOfN(samples=5, extractor="boxed"), "What is 6 * 7?", verifier)
    assert result.answers == ("41",) and len(result.scores) == 5
    assert_paid_what_the_server_delivered(result, server)


def test_best_of_majority(server: LoopbackServer) -> None:
    verifier = TableVerifier({"41": 0.9, "13": 0.8, "42": 0.5})
    strategy = BestOfMajority(samples=10, alpha=0.3, extractor="boxed")
    result = run(server, strategy, "What is 6 * 7?", verifier)
    assert result.answers == ("42",)  # 41 and 13 score higher but are too rare
    assert_paid_what_the_server_delivered(result, server)


def test_adaptive_stops_paying_when_it_stops(server: LoopbackServer) -> None:
    result = run(server, Adaptive(samples=40, batch_size=2, extractor="choice"), "Pick one")
    assert result.answers == ("B",)
    assert result.usage.samples == 4
    assert_paid_what_the_server_delivered(result, server)


def test_ahead_by_k(server: LoopbackServer) -> None:
    result = run(server, AheadByK(samples=30, margin=2, extractor="boxed"), "What is 6 * 7?")
    assert result.answers == ("42",)
    stop = next(e.data for e in result.trace if e.step == "stop")
    assert stop["reason"] == "ahead_by_k" and stop["lead"] >= 2
    assert_paid_what_the_server_delivered(result, server)


SAMPLER_PARAMS = SamplingParams(
    seed=BASE_SEED, temperature=0.6, max_tokens=256, stop=("###",), extra_body={"top_k": 20}
)


def test_a_strategy_without_params_draws_with_the_samplers_settings(
    server: LoopbackServer,
) -> None:
    run(server, Majority(samples=6), "Pick one", params=SAMPLER_PARAMS)
    bodies = generation_bodies(server)
    assert bodies
    for body in bodies:
        assert body["temperature"] == 0.6 and body["max_tokens"] == 256
        assert body["stop"] == ["###"] and body["top_k"] == 20


def test_hedged_sampling_overrides_only_the_temperature(server: LoopbackServer) -> None:
    strategy = Majority(samples=6, params=HedgedSampling(temperature=0.9, greedy=2))
    result = run(server, strategy, "Pick one", params=SAMPLER_PARAMS)
    bodies = generation_bodies(server)
    assert sorted((b["temperature"], b.get("n", 1)) for b in bodies) == [(0.0, 2), (0.9, 4)]
    for body in bodies:
        assert body["max_tokens"] == 256 and body["stop"] == ["###"] and body["top_k"] == 20
    assert [c.temperature for c in result.candidates] == [0.0] * 2 + [0.9] * 4


def test_strategy_params_override_the_samplers_field_by_field(server: LoopbackServer) -> None:
    own = SamplingParams(max_tokens=5, extra_body={"min_p": 0.1})
    run(server, Majority(samples=3, params=own), "Pick one", params=SAMPLER_PARAMS)
    for body in generation_bodies(server):
        assert body["max_tokens"] == 5 and body["temperature"] == 0.6
        assert body["top_k"] == 20 and body["min_p"] == 0.1


@pytest.fixture(scope="module")
def math_verifier() -> Iterator[MathVerifier]:
    if not math_verify_available():
        pytest.skip("math-verify is not installed (pip install ttscale[math])")
    with MathVerifier(backend="math_verify") as verifier:
        yield verifier


def votes(result: Result) -> object:
    return next(e.data["votes"] for e in result.trace if e.step == "vote")


def test_majority_merges_the_answers_the_verifier_finds_equal(
    server: LoopbackServer, math_verifier: MathVerifier
) -> None:
    strategy = Majority(samples=10, extractor="boxed")
    merged = run(server, strategy, HALF, math_verifier)
    assert merged.answers == ("0.5",) and votes(merged) == {"0.5": 6, "7": 4}
    assert_paid_what_the_server_delivered(merged, server)
    # The same samples without a verifier to compare them: the plain strings split the half.
    server.reset_log()
    plain = run(server, strategy, HALF)
    assert plain.answers == ("7",) and votes(plain)["7"] == 4 and votes(plain)["0.5"] == 3
    # An equivalence configured on the strategy wins over the verifier's.
    server.reset_log()
    exact = Majority(samples=10, extractor="boxed", equivalence=ExactMatchVerifier())
    assert run(server, exact, HALF, math_verifier).answers == ("7",)


def test_best_of_majority_counts_merged_groups_against_alpha(
    server: LoopbackServer, math_verifier: MathVerifier
) -> None:
    strategy = BestOfMajority(samples=10, alpha=0.5, extractor="boxed")

    async def scores_only(problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        return list(await math_verifier.score(problem, candidates))

    # Scored the same, but with a verifier that cannot compare answers no group reaches half of
    # the votes, and best-of-majority falls back to the mode.
    unmerged = run(server, strategy, HALF, as_verifier(scores_only), answer="1/2")
    assert unmerged.answers == ("7",)
    assert next(e.data for e in unmerged.trace if e.step == "vote")["fallback_to_mode"] is True
    server.reset_log()
    merged = run(server, strategy, HALF, math_verifier, answer="1/2")
    assert merged.answers == ("0.5",) and merged.scores[merged.selected[0].index].value == 1.0
    vote = next(e.data for e in merged.trace if e.step == "vote")
    assert vote["fallback_to_mode"] is False and vote["votes"] == {"0.5": 6, "7": 4}


def test_hedged_sampling_sends_one_greedy_request(server: LoopbackServer) -> None:
    strategy = Majority(samples=6, params=HedgedSampling(temperature=0.7, greedy=1))
    result = run(server, strategy, "Pick one")
    bodies = generation_bodies(server)
    temperatures = sorted((b.get("temperature"), b.get("n", 1)) for b in bodies)
    assert temperatures == [(0.0, 1), (0.7, 5)]
    assert [c.temperature for c in result.candidates] == [0.0] + [0.7] * 5
    assert_paid_what_the_server_delivered(result, server)
