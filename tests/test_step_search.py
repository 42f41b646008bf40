"""Step-level search (beam search, DVTS, particle filtering) on the loopback step environment.

Pure selection and resampling functions are tested without an event loop; the strategies run
against the loopback server (real HTTP, the real OpenAI sampler, the budget choke point) for the
exact-behaviour tests, and against the same environment in process for the accuracy tests, whose
expectations the environment computes exactly.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest

from ttscale.budget import BudgetedSampler, max_samples, max_tokens
from ttscale.errors import ConfigError, VerifierError
from ttscale.registry import create
from ttscale.samplers.openai_sampler import OpenAISampler
from ttscale.strategies.beam_search import BeamSearch
from ttscale.strategies.extract import extract_answer_is, extract_gsm8k
from ttscale.strategies.particle_filtering import ParticleFiltering
from ttscale.strategies.step_search import (
    allocate,
    multinomial_resample,
    resampling_weights,
    select_leaves,
    systematic_resample,
    top_positions,
)
from ttscale.strategies.steps import (
    StepText,
    continuation_params,
    continuation_prompt,
    cut_step,
    has_marked_answer,
)
from ttscale.testing.step_env import StepEnvironment, StepTask, expected_accuracy
from ttscale.types import Problem, Result, SamplingParams, TokenLogprob
from ttscale.verifiers.process_reward import ProcessRewardVerifier
from ttscale.verifiers.process_reward_models import (
    ConfidenceStepScorer,
    JudgeStepScorer,
    ServedStepScorer,
    as_step_scorer,
    batch_step_rows,
    step_rows,
)

# -- pure functions -----------------------------------------------------------------------------


def test_allocate_shares_a_round_among_paths() -> None:
    assert allocate(16, 4) == [4, 4, 4, 4]
    assert allocate(16, 3) == [6, 5, 5]
    assert allocate(16, 1) == [16]
    with pytest.raises(ConfigError, match="among 0 paths"):
        allocate(16, 0)


def test_top_positions_orders_by_value_and_breaks_ties_with_the_seeded_generator() -> None:
    assert top_positions([0.1, 0.9, 0.5], 2, np.random.default_rng(0)) == [1, 2]
    tied = [0.5] * 6
    first = top_positions(tied, 3, np.random.default_rng(7))
    assert first == top_positions(tied, 3, np.random.default_rng(7))
    orders = {tuple(top_positions(tied, 3, np.random.default_rng(s))) for s in range(20)}
    assert len(orders) > 5  # control: ties really are broken at random, not by position
    assert top_positions([math.nan, 0.2], 1, np.random.default_rng(0)) == [1]


def test_resampling_weights_are_a_softmax_of_logits_with_a_temperature() -> None:
    weights = resampling_weights([0.9, 0.1])
    assert weights == pytest.approx([81 / 82, 1 / 82])  # logit odds 9 and 1/9
    flat = resampling_weights([0.9, 0.1], temperature=2.0)
    assert flat == pytest.approx([0.9, 0.1])  # sqrt of the odds
    assert resampling_weights([2.0, 0.0], probabilities=False) == pytest.approx(
        [math.e**2 / (1 + math.e**2), 1 / (1 + math.e**2)]
    )
    with pytest.raises(ConfigError, match="temperature"):
        resampling_weights([0.5], temperature=0)


def test_resampling_weights_stay_a_distribution_when_rewards_are_nan_or_infinite() -> None:
    nan, inf = math.nan, math.inf
    # An unscored path (NaN) weighs as the lowest reward, not NaN for every particle.
    assert resampling_weights([nan, 0.5]) == pytest.approx([1e-7 / (1 - 1e-7), 1], rel=1e-6)
    assert resampling_weights([nan, nan]) == [0.5, 0.5]
    assert resampling_weights([-inf, -inf], probabilities=False) == [0.5, 0.5]
    assert resampling_weights([inf, 0.0, inf], probabilities=False) == [0.5, 0.0, 0.5]
    assert resampling_weights([nan, 1.0], probabilities=False) == [0.0, 1.0]
    # Control: finite rewards keep their softmax (the special cases above are not the rule).
    assert resampling_weights([0.5, 0.5]) == [0.5, 0.5]
    assert resampling_weights([0.0, 1.0], probabilities=False)[0] == pytest.approx(1 / (1 + math.e))


def test_systematic_resampling_keeps_each_particle_floor_or_ceil_of_n_w_times() -> None:
    weights = [0.5, 0.3, 0.2]
    for seed in range(50):
        counts = Counter(systematic_resample(weights, 10, np.random.default_rng(seed)))
        assert counts[0] == 5
        assert counts[1] == 3
        assert counts[2] == 2
    uneven = [0.45, 0.35, 0.2]
    seen = {
        tuple(Counter(systematic_resample(uneven, 4, np.random.default_rng(s))).values())
        for s in range(50)
    }
    for counts in seen:  # 4 * w = 1.8, 1.4, 0.8: each count is 1 or 2, 1 or 2, 0 or 1
        assert sum(counts) == 4


def test_multinomial_resampling_is_seeded_and_unbiased() -> None:
    weights = [0.7, 0.2, 0.1]
    a = multinomial_resample(weights, 8, np.random.default_rng(3))
    assert a == multinomial_resample(weights, 8, np.random.default_rng(3))
    assert a != multinomial_resample(weights, 8, np.random.default_rng(4))
    counts = Counter(multinomial_resample(weights, 20_000, np.random.default_rng(5)))
    assert counts[0] / 20_000 == pytest.approx(0.7, abs=0.015)
    spread = [
        Counter(multinomial_resample(weights, 10, np.random.default_rng(s)))[0] for s in range(200)
    ]
    assert len(set(spread)) > 3  # control: unlike systematic, the counts vary


def test_select_leaves_by_score_weighted_vote_and_majority() -> None:
    rng = np.random.default_rng(0)
    values = [0.9, 0.2, 0.3, 0.35]
    answers = ["1", "2", "2", "2"]
    assert select_leaves(values, answers, 1, "score", rng) == [0]
    assert select_leaves(values, answers, 1, "majority", rng) == [3]
    assert select_leaves(values, answers, 1, "weighted_vote", rng) == [0]  # 0.9 > 0.85
    votes = [0.1, 0.3, 0.3, 0.3]
    assert select_leaves(values, answers, 1, "weighted_vote", rng, votes=votes) == [3]


# -- steps --------------------------------------------------------------------------------------


def test_cut_step_by_string_and_by_function() -> None:
    assert cut_step("a\n\nb", "\n\n") == ("a", True)
    assert cut_step("a", "\n\n") == ("a", False)
    assert cut_step("x = 1; y = 2", lambda text: text.find(";") + 1 or None) == ("x = 1;", True)
    with pytest.raises(ConfigError, match="returned -3"):
        cut_step("abc", lambda text: -3)


def test_continuation_prompt_and_params_per_server_kind() -> None:
    prompt = continuation_prompt("Q?", "Step 1.\n\n", "prefill")
    assert prompt == [
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "Step 1.\n\n"},
    ]
    assert continuation_prompt("Q?", "", "prefill") == [{"role": "user", "content": "Q?"}]
    text = continuation_prompt("Q?", "S1.\n\n", "text", lambda ms: f"<u>{ms[0]['content']}</u>")
    assert text == "<u>Q?</u>S1.\n\n"
    params = continuation_params(None, "S1.\n\n", "vllm", stop=("\n\n",), max_tokens=64)
    assert params.extra_body["continue_final_message"] is True
    assert params.extra_body["add_generation_prompt"] is False
    assert params.stop == ("\n\n",)
    assert params.max_tokens == 64
    assert (
        "continue_final_message"
        not in continuation_params(None, "", "vllm", stop=None, max_tokens=None).extra_body
    )
    assert has_marked_answer("so the answer is 42.")
    assert has_marked_answer("\\boxed{7}")
    assert not has_marked_answer("Step 1: 3 + 4 = 7.")


def test_search_options_are_checked_at_construction() -> None:
    with pytest.raises(ConfigError, match="multiple of beam_width"):
        BeamSearch(samples=6, beam_width=4)
    with pytest.raises(ConfigError, match="aggregation"):
        BeamSearch(aggregation="median")
    with pytest.raises(ConfigError, match="resampling"):
        ParticleFiltering(resampling="stratified")
    with pytest.raises(ConfigError, match="reward must be"):
        BeamSearch(reward="oracle")
    with pytest.raises(ConfigError, match="needs a template"):
        BeamSearch(continuation="text")


# -- exact behaviour over HTTP ------------------------------------------------------------------

ENV = StepEnvironment(
    (
        StepTask("Task A: find the value.", answer=7, depth=3, p_step=0.6),
        StepTask("Task B: find the value.", answer=9, depth=2, p_step=0.5),
    )
)


def _sampler(base_url: str, seed: int = 11) -> OpenAISampler:
    return OpenAISampler(
        base_url=base_url, model="loopback", api_key="x", params=SamplingParams(seed=seed)
    )


def _events(result: Result, step: str) -> list[dict[str, Any]]:
    return [dict(event.data) for event in result.trace if event.step == step]


async def _run(strategy: Any, problem: Problem, sampler: Any, verifier: Any = None) -> Result:
    result: Result = await strategy.run(problem, sampler, verifier)
    return result


def test_beam_search_keeps_the_best_paths_and_counts_what_the_server_served() -> None:
    problem = ENV.problems()[0]
    with ENV.server() as server:
        strategy = BeamSearch(samples=4, beam_width=2, reward=ENV.prm, max_steps=5)
        result = asyncio.run(_run(strategy, problem, _sampler(server.base_url)))
        served = server.delivered_usage()
        bodies = [record.body for record in server.records if record.body is not None]
    nodes = {node["id"]: node for node in _events(result, "tree")[0]["nodes"]}
    rounds = _events(result, "round")
    assert len(rounds) == 3  # depth 3: the answer step finishes every path
    assert len(rounds[0]["drawn"]) == 4
    assert all(nodes[i]["parent"] == 0 for i in rounds[0]["drawn"])
    for round_ in rounds[:-1]:
        assert len(round_["kept"]) == 2
        assert len(round_["pruned"]) == 2
        worst_kept = min(nodes[i]["value"] for i in round_["kept"])
        assert all(nodes[i]["value"] <= worst_kept for i in round_["pruned"])
    for later, earlier in zip(rounds[1:], rounds, strict=False):
        assert {nodes[i]["parent"] for i in later["drawn"]} == set(earlier["kept"])
        assert Counter(nodes[i]["parent"] for i in later["drawn"]) == Counter(
            dict.fromkeys(earlier["kept"], 2)
        )
    assert len(rounds[-1]["finished"]) == 4
    assert [c.index for c in result.candidates] == sorted(
        nodes[i]["index"] for i in rounds[-1]["finished"]
    )
    # One request per kept path per round (n = M), the first one n = N from the root.
    assert [body.get("n", 1) for body in bodies] == [4, 2, 2, 2, 2]
    assert all(body["stop"] == ["\n\n"] for body in bodies)
    assert bodies[1]["messages"][-1]["role"] == "assistant"
    assert bodies[1]["messages"][-1]["content"].endswith("\n\n")
    # Tokens counted == tokens served, requests too.
    assert result.usage.completion_tokens == served["completion_tokens"]
    assert result.usage.prompt_tokens == served["prompt_tokens"]
    assert result.usage.requests == served["requests"] == 5
    assert result.usage.samples == served["samples"] == 12
    best = max(result.scores, key=lambda s: s.value)
    assert result.selected[0].text.endswith(f"the answer is {result.answers[0]}.")
    assert (
        best.value
        == result.scores[[c.index for c in result.candidates].index(result.selected[0].index)].value
    )
    prefix = _events(result, "prefix")[0]
    assert prefix["requests"] == 5
    assert prefix["resent"] > 0


def test_the_in_process_environment_draws_what_the_server_draws() -> None:
    problem = ENV.problems()[0]
    strategy = ParticleFiltering(samples=4, reward=ENV.prm, max_steps=4, seed=3)
    with ENV.server() as server:
        over_http = asyncio.run(_run(strategy, problem, _sampler(server.base_url, seed=5)))
    in_process = asyncio.run(_run(strategy, problem, ENV.sampler(base_seed=5)))
    assert [c.text for c in over_http.candidates] == [c.text for c in in_process.candidates]
    assert _events(over_http, "resample") == _events(in_process, "resample")
    assert over_http.usage.completion_tokens == in_process.usage.completion_tokens
    other = asyncio.run(_run(strategy, problem, ENV.sampler(base_seed=6)))
    assert [c.text for c in other.candidates] != [c.text for c in in_process.candidates]


def test_particle_filtering_resamples_with_the_seeded_generator() -> None:
    problem = ENV.problems()[0]
    sampler = ENV.sampler(base_seed=1)

    def picks(seed: int, how: str) -> list[list[int]]:
        strategy = ParticleFiltering(
            samples=8, reward=ENV.prm, max_steps=4, seed=seed, resampling=how
        )
        result = asyncio.run(_run(strategy, problem, sampler))
        events = _events(result, "resample")
        for event in events:
            assert sum(event["weights"]) == pytest.approx(1.0)
            assert event["method"] == how
        return [event["picks"] for event in events]

    assert picks(1, "multinomial") == picks(1, "multinomial")
    assert picks(1, "multinomial") != picks(2, "multinomial")
    for round_picks in picks(1, "systematic"):
        assert len(round_picks) == 8


def test_particles_on_one_path_share_one_request() -> None:
    problem = ENV.problems()[0]
    with ENV.server() as server:
        strategy = ParticleFiltering(samples=8, reward=ENV.prm, max_steps=4, seed=0)
        result = asyncio.run(_run(strategy, problem, _sampler(server.base_url)))
        bodies = [record.body for record in server.records if record.body is not None]
        served = server.delivered_usage()
    assert bodies[0]["n"] == 8
    resample = _events(result, "resample")[0]
    distinct = len(set(resample["picks"]))
    assert len(bodies) == 1 + distinct + len(set(_events(result, "resample")[1]["picks"]))
    assert result.usage.completion_tokens == served["completion_tokens"]
    assert result.usage.samples == 8 * 3


def test_dvts_grows_independent_subtrees() -> None:
    problem = ENV.problems()[0]
    strategy = create("strategy", "dvts", samples=8, beam_width=4, reward=ENV.prm, max_steps=5)
    result = asyncio.run(_run(strategy, problem, ENV.sampler(base_seed=2)))
    nodes = {node["id"]: node for node in _events(result, "tree")[0]["nodes"]}
    rounds = _events(result, "round")
    assert len(rounds) == 3
    for round_ in rounds[1:]:
        assert sorted(round_["subtrees"]) == ["0", "1"]
        for members in round_["subtrees"].values():
            assert len(members) == 4
            assert len({nodes[i]["parent"] for i in members}) == 1
    assert len(result.candidates) == 2  # one leaf per subtree
    assert {c.finish_reason for c in result.candidates} == {"stop"}


@pytest.mark.parametrize("name", ["beam_search", "dvts", "particle_filtering"])
def test_a_budget_binds_mid_search_and_everything_drawn_is_kept(name: str) -> None:
    problem = ENV.problems()[0]
    with ENV.server() as server:
        budget = BudgetedSampler(_sampler(server.base_url), per_problem=max_samples(6))
        strategy = create("strategy", name, samples=4, beam_width=2, reward=ENV.prm, max_steps=5)
        result = asyncio.run(_run(strategy, problem, budget.for_problem(problem.id)))
        served = server.delivered_usage()
    assert _events(result, "budget_exhausted")
    assert _events(result, "select")[0]["stop"] == "budget"
    assert served["samples"] == 6  # trimmed to the limit, never past it
    assert result.usage.samples == 6
    assert result.usage.completion_tokens == served["completion_tokens"]
    drawn = [n for n in _events(result, "tree")[0]["nodes"]]
    assert len(drawn) == 6
    assert result.candidates  # the unfinished paths are returned, not lost
    assert {c.finish_reason for c in result.candidates} == {"unfinished"}


def test_a_token_budget_ends_the_search_after_the_round_that_crossed_it() -> None:
    problem = ENV.problems()[0]
    with ENV.server() as server:
        budget = BudgetedSampler(_sampler(server.base_url), per_problem=max_tokens(60))
        strategy = BeamSearch(samples=4, beam_width=2, reward=ENV.prm, max_steps=5)
        result = asyncio.run(_run(strategy, problem, budget.for_problem(problem.id)))
        served = server.delivered_usage()
    assert result.usage.total_tokens == served["prompt_tokens"] + served["completion_tokens"]
    assert _events(result, "budget_exhausted")
    assert len(_events(result, "round")) < 3


# -- process rewards ----------------------------------------------------------------------------


def test_served_prm_reads_vllm_pooling_rows_per_step() -> None:
    problem = ENV.problems()[0]
    steps = ["Step 1: right 00000001.", "Step 2: wrong 00000002.", "Check 3: the answer is 9."]
    with ENV.server() as server:
        scorer = ServedStepScorer(base_url=server.base_url, model="prm")
        scores = asyncio.run(scorer.score_steps(problem, steps))
        assert scores == pytest.approx(ENV.prm(problem, steps))
        assert scorer.usage.requests == 1
        both = asyncio.run(scorer.score_batch(problem, [steps[:1], steps]))
        assert both == [ENV.prm(problem, steps[:1]), ENV.prm(problem, steps)]
        assert scorer.usage.requests == 2  # one request for the batch
        broken = ServedStepScorer(base_url=server.base_url, path="/v1/nowhere")
        with pytest.raises(VerifierError, match="404"):
            asyncio.run(broken.score_steps(problem, steps))
    assert scores[1] in (ENV.high, ENV.low)
    with pytest.raises(VerifierError, match="2 step rows for 3 steps"):
        step_rows({"data": [{"index": 0, "data": [[0.1, 0.9], [0.2, 0.8]]}]}, 3)
    with pytest.raises(VerifierError, match="with 2 results"):
        batch_step_rows({"data": [{"index": 0, "data": [[0.1, 0.9]]}]}, [1, 1])
    with pytest.raises(VerifierError, match="bad index 0"):
        batch_step_rows(
            {"data": [{"index": 0, "data": [[1.0]]}, {"index": 0, "data": [[1.0]]}]}, [1, 1]
        )
    swapped = {"data": [{"index": 1, "data": [[0.3, 0.7]]}, {"index": 0, "data": [[0.6, 0.4]]}]}
    assert batch_step_rows(swapped, [1, 1]) == [[[0.6, 0.4]], [[0.3, 0.7]]]
    assert step_rows({"data": [{"data": [[1.0], [0.2, 0.8]]}]}, 1) == [[0.2, 0.8]]


def test_a_served_prm_guides_beam_search_as_the_function_does() -> None:
    problem = ENV.problems()[1]
    with ENV.server() as server:
        served = ServedStepScorer(base_url=server.base_url)
        a = asyncio.run(
            _run(BeamSearch(samples=4, beam_width=2, reward=served), problem, ENV.sampler(4))
        )
    b = asyncio.run(
        _run(BeamSearch(samples=4, beam_width=2, reward=ENV.prm), problem, ENV.sampler(4))
    )
    assert [s.value for s in a.scores] == [s.value for s in b.scores]
    assert a.answers == b.answers


def _judge_or_model(env: StepEnvironment) -> Any:
    def respond(request: Any) -> str:
        if request.prompt.startswith("Here is a problem"):
            last = request.prompt.split("Solution so far:\n")[1].split("\n\nIs the last")[0]
            return "No" if "wrong" in last.split("\n\n")[-1] else "Yes"
        return env.responder(request)

    return respond


def test_an_llm_judge_scores_each_step_yes_or_no_from_logprobs() -> None:
    problem = ENV.problems()[0]
    steps = ["Step 1: right 00000001.", "Step 2: wrong 00000002."]
    with ENV.server(answers=_judge_or_model(ENV)) as server:
        judge = JudgeStepScorer(_sampler(server.base_url))
        scores = asyncio.run(judge.score_steps(problem, steps))
        again = asyncio.run(judge.score_steps(problem, steps))
        judged = server.request_count
        body = server.records[0].body
    assert scores[0] > 0.9 > 0.1 > scores[1]
    assert again == scores
    assert judged == 2  # remembered per prefix: asked once each
    assert judge.usage.requests == 2
    assert body is not None and body["logprobs"] is True
    assert "Reference" not in body["messages"][-1]["content"]


def test_judge_reward_runs_through_the_runs_budget() -> None:
    problem = ENV.problems()[1]
    with ENV.server(answers=_judge_or_model(ENV)) as server:
        budget = BudgetedSampler(_sampler(server.base_url))
        strategy = BeamSearch(samples=4, beam_width=2, reward="judge", max_steps=3)
        result = asyncio.run(_run(strategy, problem, budget.for_problem(problem.id)))
        served = server.delivered_usage()
        spent = budget.tracker.problem(problem.id)
    assert result.usage.requests == served["requests"]
    assert result.usage.completion_tokens == served["completion_tokens"]
    assert spent.requests == served["requests"]


def test_confidence_reward_reads_each_steps_logprobs() -> None:
    sure = (TokenLogprob("a", -0.01, (("a", -0.01), ("b", -6.0))),)
    unsure = (TokenLogprob("a", -0.7, (("a", -0.7), ("b", -0.72))),)
    scorer = ConfidenceStepScorer()
    problem = ENV.problems()[0]
    scores = asyncio.run(scorer.score_steps(problem, [StepText("x", sure), StepText("y", unsure)]))
    assert scores[0] > scores[1]
    with pytest.raises(VerifierError, match="no token logprobs"):
        asyncio.run(scorer.score_steps(problem, ["plain text"]))
    with pytest.raises(ConfigError, match="unknown confidence measure"):
        ConfidenceStepScorer("vibes")
    with ENV.server() as server:
        strategy = ParticleFiltering(samples=4, reward="confidence", max_steps=4)
        result = asyncio.run(_run(strategy, problem, _sampler(server.base_url)))
        bodies = [record.body for record in server.records if record.body is not None]
    assert all(body["logprobs"] is True and body["top_logprobs"] == 5 for body in bodies)
    assert result.selected


def test_a_plain_function_and_a_verifier_are_accepted_as_rewards() -> None:
    problem = ENV.problems()[1]
    calls: list[int] = []

    async def reward(problem: Problem, steps: list[str]) -> list[float]:
        calls.append(len(steps))
        return ENV.prm(problem, steps)

    assert as_step_scorer(reward) is not None
    a = asyncio.run(
        _run(BeamSearch(samples=4, beam_width=2, reward=reward), problem, ENV.sampler())
    )
    verifier = ProcessRewardVerifier(as_step_scorer(ENV.prm))
    b = asyncio.run(_run(BeamSearch(samples=4, beam_width=2), problem, ENV.sampler(), verifier))
    assert a.answers == b.answers
    assert calls
    with pytest.raises(ConfigError, match="needs a process reward"):
        asyncio.run(_run(BeamSearch(samples=4, beam_width=2), problem, ENV.sampler()))


# -- expected accuracy, computed exactly --------------------------------------------------------

EXACT = StepEnvironment.uniform(300, depth=3, p_step=0.75, false_positive=0.2, false_negative=0.2)


async def _accuracy(strategy: Any, env: StepEnvironment, verifier: Any = None) -> float:
    sampler = env.sampler(base_seed=2024)
    problems = env.problems()
    results = await asyncio.gather(*(strategy.run(p, sampler, verifier) for p in problems))
    return sum(r.answers[0] == p.answer for r, p in zip(results, problems, strict=True)) / len(
        problems
    )


def _within(measured: float, expected: float, count: int) -> bool:
    return abs(measured - expected) <= 4 * math.sqrt(expected * (1 - expected) / count)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("best_of_n", {}),
        ("beam_search", {"beam_width": 4}),
        ("dvts", {"beam_width": 4}),
        ("particle_filtering", {}),
    ],
)
def test_accuracy_matches_the_exact_expectation(name: str, options: dict[str, Any]) -> None:
    n = 8
    expected = expected_accuracy(EXACT, name, n, m=4)
    if name == "best_of_n":
        strategy = create("strategy", name, samples=n)
        verifier = ProcessRewardVerifier(as_step_scorer(EXACT.prm), aggregation="last")
        measured = asyncio.run(_accuracy(strategy, EXACT, verifier))
    else:
        strategy = create("strategy", name, samples=n, reward=EXACT.prm, max_steps=3, **options)
        measured = asyncio.run(_accuracy(strategy, EXACT))
    assert _within(measured, expected, len(EXACT.tasks)), (name, measured, expected)


def test_a_search_misled_by_its_reward_falls_outside_the_expectation() -> None:
    """Control: the accuracy test can fail. An inverted PRM ranks wrong paths first."""
    env = StepEnvironment(EXACT.tasks[:100])
    expected = expected_accuracy(env, "beam_search", 8, m=4)

    def inverted(problem: Problem, steps: list[str]) -> list[float]:
        return [1 - s for s in env.prm(problem, steps)]

    strategy = BeamSearch(samples=8, beam_width=4, reward=inverted, max_steps=3)
    measured = asyncio.run(_accuracy(strategy, env))
    assert not _within(measured, expected, len(env.tasks))


def test_the_exact_expectations_order_the_methods_as_the_papers_report() -> None:
    # At N = 16 with a 80%-reliable PRM, search beats best-of-N; more N never hurts.
    bon = expected_accuracy(EXACT, "best_of_n", 16)
    beam = expected_accuracy(EXACT, "beam_search", 16)
    dvts = expected_accuracy(EXACT, "dvts", 16)
    pf = expected_accuracy(EXACT, "particle_filtering", 16)
    assert bon < dvts < beam
    assert bon < pf
    for name in ("best_of_n", "beam_search", "particle_filtering"):
        assert expected_accuracy(EXACT, name, 4) <= expected_accuracy(EXACT, name, 16)
    perfect = StepEnvironment.uniform(1, p_step=0.75, false_positive=0.0, false_negative=0.0)
    q = 0.75**3
    assert expected_accuracy(perfect, "best_of_n", 4) == pytest.approx(1 - (1 - q) ** 4)
    # A perfect PRM and one kept path: greedy, right whenever one of 4 children is.
    assert expected_accuracy(perfect, "beam_search", 4, m=4) == pytest.approx((1 - 0.25**4) ** 3)


def test_loopback_routes_answer_bad_requests_with_openai_shaped_4xx() -> None:
    import json
    import urllib.error
    import urllib.request

    from ttscale.testing import ServerConfig

    with ENV.server() as server:
        url = server.base_url + "/pooling"
        for data, status in ((b"{nope", 400), (b'{"input": 3}', 400), (None, 405)):
            request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=10)
            assert caught.value.code == status
            assert "message" in json.loads(caught.value.read())["error"]
        good = urllib.request.Request(
            url, data=json.dumps({"input": ENV.tasks[0].prompt + "x<extra_0>"}).encode()
        )
        with urllib.request.urlopen(good, timeout=10) as response:
            assert len(json.loads(response.read())["data"][0]["data"]) == 1
    with pytest.raises(ConfigError, match="routes must map"):
        ServerConfig(routes={"pooling": lambda body: body})


def test_server_caps_bind_mid_search_and_cut_every_steps_max_tokens() -> None:
    from ttscale.budget import DrawCaps

    problem = ENV.problems()[0]
    with ENV.server() as server:
        caps = DrawCaps(samples=7, max_tokens=16)
        budget = BudgetedSampler(_sampler(server.base_url), caps=caps)
        strategy = BeamSearch(samples=4, beam_width=2, reward=ENV.prm, max_steps=5)
        result = asyncio.run(_run(strategy, problem, budget.for_problem(problem.id)))
        served = server.delivered_usage()
        bodies = [record.body for record in server.records if record.body is not None]
    assert served["samples"] == 7
    assert result.usage.samples == 7
    assert all(body["max_tokens"] <= 16 for body in bodies)
    assert len(_events(result, "tree")[0]["nodes"]) == 7
    assert _events(result, "select")[0]["stop"] == "budget"


# -- a server that sends the prefill back (llama.cpp) -----------------------------------------


def _beam_texts(echo: bool) -> tuple[list[str], list[str | None]]:
    problem = ENV.problems()[0]
    with ENV.server(echo_prefill=echo) as server:
        strategy = BeamSearch(samples=4, beam_width=2, reward=ENV.prm, max_steps=5)
        result = asyncio.run(_run(strategy, problem, _sampler(server.base_url)))
    return [c.text for c in result.candidates], list(result.answers)


def test_a_server_that_sends_the_prefill_back_gives_the_same_paths() -> None:
    # llama.cpp's llama-server answers a prefilled assistant message with the prefill and its
    # continuation; each step is what the server added, so the search is the same as elsewhere.
    texts, answers = _beam_texts(echo=True)
    assert (texts, answers) == _beam_texts(echo=False)
    assert all(text.count("Step 1:") == 1 for text in texts)


def test_control_a_step_read_with_the_prefill_holds_the_path_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ttscale.strategies.steps as steps

    monkeypatch.setattr(steps, "added_text", lambda returned, partial, continuation: returned)
    texts, _ = _beam_texts(echo=True)
    assert any(text.count("Step 1:") > 1 for text in texts)


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        (lambda problem, steps: [0.9], "returned 1 scores for"),
        (lambda problem, steps: [0.9] * (len(steps) + 1), "scores for"),
        (lambda problem, steps: [None] * len(steps), "returned None for step 1, not a number"),
        (lambda problem, steps: ["high"] * len(steps), "'high' for step 1, not a number"),
        (lambda problem, steps: [0.5] * (len(steps) - 1) + [math.nan], "NaN for step"),
    ],
    ids=["too-few", "too-many", "none", "text", "nan"],
)
def test_a_step_reward_that_does_not_score_each_step_is_refused(reward: Any, message: str) -> None:
    problem = ENV.problems()[0]
    with ENV.server() as server:
        strategy = BeamSearch(samples=4, beam_width=2, reward=reward, max_steps=5)
        with pytest.raises(VerifierError, match=message):
            asyncio.run(_run(strategy, problem, _sampler(server.base_url)))
        # Control: the environment's own reward, one score a step, runs.
        good = BeamSearch(samples=4, beam_width=2, reward=ENV.prm, max_steps=5)
        assert asyncio.run(_run(good, problem, _sampler(server.base_url))).answers


def test_a_markdown_heading_is_no_final_answer() -> None:
    assert not has_marked_answer("#### Step 1: set up the sums")
    assert extract_gsm8k("#### Step 1\nwe add\n#### 18") == "18"
    # Controls: GSM8K's marker, a box and "the answer is" are final.
    assert has_marked_answer("so #### 18") and has_marked_answer("#### $1,200")
    assert has_marked_answer("\\boxed{7}") and has_marked_answer("The answer is 7.")


# -- steps that open with their delimiter, and answers that are no answers ---------------------


def test_a_step_is_never_empty_because_the_text_opens_with_its_delimiter() -> None:
    assert cut_step("\n\nStep 1.\n\nStep 2.", "\n\n") == ("Step 1.", True)
    assert cut_step("\n\n\n\nStep 1.", "\n\n") == ("Step 1.", False)
    after_blank_line = lambda text: text.find("\n\n") + 2 if "\n\n" in text else None  # noqa: E731
    assert cut_step("\n\nx = 1\n\ny = 2", after_blank_line) == ("x = 1\n\n", True)
    # Controls: a delimiter inside the text still cuts there; a text of delimiters is empty.
    assert cut_step("a\n\n\n\nb", "\n\n") == ("a", True)
    assert cut_step("\n\n", "\n\n") == ("", False)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ("3", "'3' \\(str\\)"),
        (2.5, "2.5 \\(float\\)"),
        (True, "True \\(bool\\)"),
        (0, "returned 0"),
    ],
)
def test_a_delimiter_function_returning_no_position_is_a_config_error(
    returned: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        cut_step("abc; def", lambda text: returned)  # type: ignore[arg-type,return-value]


def test_a_delimiter_function_may_return_any_integer_type() -> None:
    assert cut_step("abc; def", lambda text: np.int64(4)) == ("abc;", True)  # type: ignore[arg-type,return-value]


def test_the_answer_is_followed_by_no_answer_is_not_final() -> None:
    for hedge in (
        "The answer is not obvious yet.",
        "the answer is to add the two amounts.",
        "So the answer is unclear until we subtract.",
        "The final answer is what remains after step 3.",
        "The answer is the sum of the apples and the pears that she bought.",
    ):
        assert not has_marked_answer(hedge), hedge
    assert extract_answer_is("The answer is not obvious. We get 12.") is None
    for hedge in (
        "The answer isn't obvious.",
        "The answer is... not obvious yet",
        "The answer is, not obvious",
        "The answer is **not** obvious.",
        "The answer is still unclear.",
    ):
        assert not has_marked_answer(hedge) and extract_answer_is(hedge) is None, hedge
    # A hedge word before an answer leaves the answer: "still 12" answers 12.
    assert extract_answer_is("So the answer is still 12.") == "12"
    assert extract_answer_is("The answer is likely B.") == "b"
    assert has_marked_answer("The answer is probably 12.")
    # Controls: answers, short or with a number or formula, are final.
    stated_answers = ("The answer is 7.", "The answer is B.", "the answer is no.")
    for stated in (*stated_answers, "The answer is $x=3$"):
        assert has_marked_answer(stated), stated
    assert has_marked_answer("The answer is the 3 apples she kept and the pear from step two.")


def _opens_with_delimiter(request: Any) -> str:
    """A model that opens its answer with a blank line, then writes two steps."""
    whole = "\n\nStep 1: 3 + 4 = 7.\n\nThe answer is 7."
    messages = request.body.get("messages", [])
    prefill = messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
    start = whole.find(prefill) if prefill else 0
    return whole[start + len(prefill) :] if start >= 0 else "The answer is 0."


def test_a_step_that_opens_with_the_delimiter_is_drawn_again_not_ended_empty() -> None:
    from ttscale.testing import LoopbackServer

    problem = Problem(id="p", prompt="What is 3 + 4?", answer="7")
    reward = lambda problem, steps: [0.5] * len(steps)  # noqa: E731
    with LoopbackServer(answers=_opens_with_delimiter) as server:
        strategy = BeamSearch(samples=2, beam_width=1, reward=reward, max_steps=4)
        result = asyncio.run(_run(strategy, problem, _sampler(server.base_url)))
        requests = [record.body for record in server.records]
    assert result.answers == ("7",)
    assert result.selected[0].text == "Step 1: 3 + 4 = 7.\n\nThe answer is 7."
    # Round 1: two samples come back empty and are drawn again, same index, without the stop.
    assert [body.get("stop") for body in requests[:3]] == [["\n\n"], None, None]
    assert requests[1]["seed"] == requests[0]["seed"]  # index 0's seed: the same sample
    assert requests[2]["seed"] != requests[0]["seed"]
    # Every token paid is on the path: the empty step's and the redrawn one's.
    served = sum(record.completion_tokens for record in server.records)
    assert result.usage.completion_tokens == served


def test_control_without_drawing_again_the_empty_step_ends_the_path_with_no_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ttscale.strategies.steps as steps
    from ttscale.testing import LoopbackServer

    monkeypatch.setattr(steps, "_opened_with_delimiter", lambda step, request, settings: False)
    problem = Problem(id="p", prompt="What is 3 + 4?", answer="7")
    reward = lambda problem, steps: [0.5] * len(steps)  # noqa: E731
    with LoopbackServer(answers=_opens_with_delimiter) as server:
        strategy = BeamSearch(samples=2, beam_width=1, reward=reward, max_steps=4)
        result = asyncio.run(_run(strategy, problem, _sampler(server.base_url)))
    assert result.answers == (None,)


def test_a_process_reward_that_fails_ends_the_search_with_what_was_spent() -> None:
    from ttscale.types import SampleBatch

    problem = ENV.problems()[0]

    def flaky(problem: Problem, steps: list[str]) -> list[float]:
        if len(steps) >= 2:
            raise RuntimeError("reward model out of memory")
        return [0.5] * len(steps)

    with ENV.server() as server:
        strategy = BeamSearch(samples=4, beam_width=2, reward=flaky, max_steps=5)
        with pytest.raises(VerifierError, match="RuntimeError: reward model out of memory") as err:
            asyncio.run(_run(strategy, problem, _sampler(server.base_url)))
        served = sum(record.completion_tokens for record in server.records)
    assert isinstance(err.value.__cause__, RuntimeError)
    partial = err.value.partial
    assert isinstance(partial, SampleBatch)
    assert served > 0 and partial.usage.completion_tokens == served  # both rounds' steps
    # Control: an error of ttscale's own keeps its type, and still carries nothing it lacks.
    with ENV.server() as server:
        refusing = BeamSearch(samples=4, beam_width=2, reward=lambda p, s: [0.5], max_steps=5)
        with pytest.raises(VerifierError, match="scores for") as err:
            asyncio.run(_run(refusing, problem, _sampler(server.base_url)))
    assert isinstance(err.value.partial, SampleBatch)


HEAD = "Let me work it out.\n\n"


def _continuing(head: str) -> Any:
    """A model whose answer is always ``head``, a blank line unless ``head`` ends in one, then
    two steps: it continues whatever prefill it is sent, and a prefill that is not a start of
    that answer gets a wrong one."""
    whole = (
        head + ("" if head.endswith("\n\n") else "\n\n") + "Step 1: 3 + 4 = 7.\n\nThe answer is 7."
    )

    def respond(request: Any) -> str:
        messages = request.body.get("messages", [])
        last = messages[-1] if messages else {}
        prefill = last["content"] if last.get("role") == "assistant" else ""
        return whole[len(prefill) :] if whole.startswith(prefill) else "The answer is 0."

    return respond


@pytest.mark.parametrize("head", [HEAD, "Solution:"], ids=["ends-blank", "glued"])
@pytest.mark.parametrize("echo", [False, True], ids=["plain", "echoing"])
def test_a_prompt_that_starts_the_answer_is_searched_from_it_once(echo: bool, head: str) -> None:
    from ttscale.testing import LoopbackServer

    messages = (
        {"role": "user", "content": "What is 3 + 4?"},
        {"role": "assistant", "content": head},
    )
    problem = Problem(id="p", messages=messages, answer="7")
    reward = lambda problem, steps: [0.5] * len(steps)  # noqa: E731
    with LoopbackServer(answers=_continuing(head), echo_prefill=echo) as server:
        strategy = BeamSearch(samples=2, beam_width=1, reward=reward, max_steps=4)
        result = asyncio.run(_run(strategy, problem, _sampler(server.base_url)))
        sent = [record.body["messages"] for record in server.records]
    assert result.answers == ("7",)
    assert result.selected[0].text == "Step 1: 3 + 4 = 7.\n\nThe answer is 7."
    for request in sent:  # one assistant message: the prompt's start, then the steps so far
        assert [m["role"] for m in request] == ["user", "assistant"]
        assert request[-1]["content"].startswith(head) and request[-1]["content"].count(head) == 1


def test_a_process_reward_whose_server_fails_or_whose_budget_ends_keeps_what_was_spent() -> None:
    from ttscale.errors import BudgetExhausted, UpstreamError
    from ttscale.types import SampleBatch

    problem = ENV.problems()[0]

    def failing(error: Exception) -> Any:
        def reward(problem: Problem, steps: list[str]) -> list[float]:
            if len(steps) >= 2:
                raise error
            return [0.5] * len(steps)

        return reward

    with ENV.server() as server:
        down = BeamSearch(
            samples=4, beam_width=2, reward=failing(UpstreamError("502")), max_steps=5
        )
        with pytest.raises(UpstreamError) as err:
            asyncio.run(_run(down, problem, _sampler(server.base_url)))
        served = sum(record.completion_tokens for record in server.records)
    assert isinstance(err.value.partial, SampleBatch)
    assert err.value.partial.usage.completion_tokens == served > 0
    with ENV.server() as server:
        spent = failing(BudgetExhausted("the judge's budget is spent"))
        result = asyncio.run(
            _run(BeamSearch(samples=4, beam_width=2, reward=spent, max_steps=5), problem,
                 _sampler(server.base_url))
        )  # fmt: skip
        served = sum(record.completion_tokens for record in server.records)
    # The search stopped as a refused draw stops it: an answer, and every token counted.
    assert result.usage.completion_tokens == served
    assert any(event.step == "budget_exhausted" for event in result.trace)
