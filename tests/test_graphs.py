"""Collaboration graphs: specs, the executor on the loopback server, the strategy in solve/serve."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from ttscale import ConfigError, DataError, OpenAISampler, Problem, SamplingParams
from ttscale.budget import max_requests, max_samples
from ttscale.errors import BudgetExhausted, UpstreamError
from ttscale.proxy import BackgroundProxy, ProxyConfig
from ttscale.solve import SolveConfig, solve
from ttscale.strategies.graphs import (
    GraphBudgetExhausted,
    GraphNodeFailed,
    GraphRun,
    GraphSpec,
    GraphStrategy,
    ModelSpec,
    NodeSpec,
    execute_graph,
    generate_then_review,
    load_graph,
    mixture_of_agents,
    multi_model_vote,
    parse_choice,
)
from ttscale.testing.server import Fault, LoopbackServer, ScriptRequest

QUESTION = "What is 6 * 7?"


def respond(request: ScriptRequest) -> str:
    model = request.body["model"]
    prompt = request.prompt
    if prompt.startswith("Several assistants"):
        return f"{model} fused: \\boxed{{42}}" if "42" in prompt else f"{model} fused: \\boxed{{0}}"
    if prompt.startswith("Which response"):
        return "Response 2 is best."
    if prompt.startswith("Other assistants") or "Other assistants answered" in prompt:
        return f"{model} after reading: \\boxed{{42}}"
    return {"strong": "strong: \\boxed{42}", "weak": "weak: \\boxed{41}"}.get(
        model, f"{model}: \\boxed{{7}}"
    )


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=respond) as running:
        yield running


def factory(server: LoopbackServer) -> Any:
    made: dict[str | None, OpenAISampler] = {}

    def sampler_for(model: str | None) -> OpenAISampler:
        if model not in made:
            made[model] = OpenAISampler(
                model=model or "default",
                base_url=server.base_url,
                api_key="k",
                params=SamplingParams(seed=1),
            )
        return made[model]

    return sampler_for


PROBLEM = Problem(id="q", prompt=QUESTION, answer="42")
COSTS = {"weak": ModelSpec(cost=1), "strong": ModelSpec(cost=9)}


def test_spec_validation_and_round_trip(tmp_path: Path) -> None:
    spec = dataclass_replace_models(mixture_of_agents(["weak", "strong"], "strong", layers=2))
    assert spec.order[-1] == "fuse" and spec.final == "fuse"
    assert spec.predecessors("L1P0") == ["L0P0", "L0P1"]
    assert spec.cost_units() == 2 * (1 + 9) + 9
    path = spec.save(tmp_path / "moa.json")
    assert load_graph(path) == spec
    yaml_path = tmp_path / "g.yaml"
    yaml_path.write_text(
        "nodes:\n  - {id: a, model: weak, samples: 2}\n  - {id: v, role: vote}\nedges: [[a, v]]\n"
    )
    # The whole graph as parsed: nodes with every field, edges, final, name and no models.
    assert load_graph(yaml_path) == GraphSpec(
        (NodeSpec("a", "generate", "weak", samples=2), NodeSpec("v", "vote")),
        (("a", "v"),),
        final="v",
        name="graph",
    )
    yaml_path.write_text(
        "name: moa\nbudget: 30\nfinal: f\n"
        "models: {weak: 1, strong: {cost: 9, name: big-model, base_url: 'http://x/v1'}}\n"
        "nodes:\n"
        "  - {id: p, model: weak, temperature: 0.7, max_tokens: 64}\n"
        "  - {id: q, model: strong, template: 'Q: {question}'}\n"
        "  - {id: f, role: review, model: strong}\n"
        "edges: [[p, f], [q, f]]\n"
    )
    parsed = load_graph(yaml_path)
    assert parsed == GraphSpec(
        (
            NodeSpec("p", "generate", "weak", temperature=0.7, max_tokens=64),
            NodeSpec("q", "generate", "strong", template="Q: {question}"),
            NodeSpec("f", "fuse", "strong"),  # "review" is the fuse role
        ),
        (("p", "f"), ("q", "f")),
        final="f",
        models={"weak": ModelSpec(1), "strong": ModelSpec(9, "big-model", "http://x/v1")},
        budget=30,
        name="moa",
    )
    assert parsed.cost_units() == 1 + 9 + 9
    with pytest.raises(ConfigError, match="cycle"):
        GraphSpec((NodeSpec("a"), NodeSpec("b")), (("a", "b"), ("b", "a")), final="a")
    with pytest.raises(ConfigError, match="needs predecessors"):
        GraphSpec((NodeSpec("v", "vote"),))
    with pytest.raises(ConfigError, match="sinks"):
        GraphSpec((NodeSpec("a"), NodeSpec("b")))
    with pytest.raises(ConfigError, match="over its budget"):
        GraphSpec((NodeSpec("a", model="strong", samples=3),), models=COSTS, budget=20)
    with pytest.raises(ConfigError, match="unknown role"):
        NodeSpec("a", role="dance")  # type: ignore[arg-type]
    broken = tmp_path / "broken.json"
    broken.write_text('{"nodes": [{"id": "a", "colour": "red"}]}')
    with pytest.raises(DataError, match=r"broken.json.*colour"):
        load_graph(broken)


def dataclass_replace_models(spec: GraphSpec) -> GraphSpec:
    return GraphSpec(spec.nodes, spec.edges, spec.final, COSTS, name=spec.name)


def test_vote_graph_outputs_and_costs_are_exact(server: LoopbackServer) -> None:
    spec = dataclass_replace_models(multi_model_vote(["weak", "strong", "strong"], samples=2))
    run = asyncio.run(execute_graph(spec, PROBLEM, factory(server)))
    assert run.final[0].text == "strong: \\boxed{42}"
    assert run.outputs["vote"].detail["votes"] == {"42": 4, "41": 2}
    assert {n: o.cost_units for n, o in run.outputs.items()} == {
        "m0": 2, "m1": 18, "m2": 18, "vote": 0
    }  # fmt: skip
    assert run.cost_units == spec.cost_units() == 38
    served = server.delivered_usage()
    assert run.usage.prompt_tokens == served["prompt_tokens"]
    assert run.usage.completion_tokens == served["completion_tokens"]
    assert run.usage.samples == served["samples"] == 6
    for node in ("m0", "m1", "m2"):
        assert run.outputs[node].usage.samples == 2
    # The two strong nodes ask the same question of the same model: their seeds differ.
    seeds = [r.body["seed"] for r in server.records if r.body and r.body["model"] == "strong"]
    assert len(set(seeds)) == len(seeds) == 2  # one request per node, n=2, distinct seeds


def test_mixture_of_agents_passes_outputs_along_edges_concurrently() -> None:
    with LoopbackServer(answers=respond, latency=0.3) as slow:
        spec = dataclass_replace_models(mixture_of_agents(["weak", "strong", "weak"], "strong"))

        async def timed() -> tuple[Any, float]:
            started = time.perf_counter()
            run = await execute_graph(spec, PROBLEM, factory(slow))
            return run, time.perf_counter() - started

        run, elapsed = asyncio.run(timed())
        assert slow.peak_concurrency == 3  # the proposers ran at once
        records = sorted((r for r in slow.records if r.body), key=lambda r: r.started_at)
        fuse_request = records[-1]
    # Two levels: the fuse went out once the three proposers (sent together) were done.
    proposals, fuse = sorted(records, key=lambda r: r.started_at)[:3], records[-1]
    assert max(r.started_at for r in proposals) < min(r.finished_at for r in proposals)
    assert fuse.started_at >= max(r.finished_at for r in proposals)
    assert elapsed > 0.6
    assert run.final[0].text == "strong fused: \\boxed{42}"
    assert fuse_request.body is not None
    fuse_prompt = fuse_request.body["messages"][-1]["content"]
    for text in ("[1] weak: \\boxed{41}", "[2] strong: \\boxed{42}", "[3] weak: \\boxed{41}"):
        assert text in fuse_prompt


def test_generate_then_review_and_a_judge(server: LoopbackServer) -> None:
    review = asyncio.run(
        execute_graph(generate_then_review("weak", "strong"), PROBLEM, factory(server))
    )
    assert review.final[0].text == "strong fused: \\boxed{0}"  # the weak answer had no 42
    judged = GraphSpec(
        (
            NodeSpec("a", model="weak"),
            NodeSpec("b", model="strong"),
            NodeSpec("j", "judge", "weak"),
        ),
        (("a", "j"), ("b", "j")),
    )
    run = asyncio.run(execute_graph(judged, PROBLEM, factory(server)))
    assert run.final[0].text == "strong: \\boxed{42}"  # "Response 2"
    assert run.outputs["j"].detail["pick"] == 1
    assert parse_choice("none of them", 3) is None and parse_choice("0 or 3", 3) == 2


def test_a_limit_spans_the_whole_graph_and_keeps_what_was_spent(server: LoopbackServer) -> None:
    spec = dataclass_replace_models(multi_model_vote(["weak", "strong"], samples=2))
    # m0's two samples use the whole limit; m1's draw (sent with m0's in flight) is refused.
    with pytest.raises(BudgetExhausted) as raised:
        asyncio.run(execute_graph(spec, PROBLEM, factory(server), limit=max_samples(2)))
    error = raised.value
    assert isinstance(error, GraphBudgetExhausted) and error.node == "m1"
    partial = error.partial
    assert list(partial.outputs) == ["m0"] and partial.final == ()
    assert set(partial.failed) == {"m1", "vote"}
    served = server.delivered_usage()
    assert served["requests"] == 1 and served["samples"] == 2
    assert [c.text for c in partial.outputs["m0"].candidates] == ["weak: \\boxed{41}"] * 2
    assert partial.usage.samples == 2
    assert partial.usage.prompt_tokens == served["prompt_tokens"]
    assert partial.usage.completion_tokens == served["completion_tokens"]
    assert partial.cost_units == 2


def test_node_cost_units_count_what_was_drawn(server: LoopbackServer) -> None:
    spec = dataclass_replace_models(multi_model_vote(["weak", "strong"], samples=2))
    # Three samples allowed: m0 gets its two, m1's draw is trimmed to one.
    run = asyncio.run(execute_graph(spec, PROBLEM, factory(server), limit=max_samples(3)))
    assert [len(run.outputs[n].candidates) for n in ("m0", "m1")] == [2, 1]
    assert {n: o.cost_units for n, o in run.outputs.items()} == {"m0": 2, "m1": 9, "vote": 0}
    assert run.cost_units == 11 < spec.cost_units() == 20
    assert run.usage.samples == server.delivered_usage()["samples"] == 3


@pytest.mark.parametrize("how", ["server_error", "budget"])
def test_a_failed_second_layer_keeps_the_first(how: str) -> None:
    # Mixture of agents: two proposers (requests 0 and 1), then the fuse (request 2) fails.
    faults = (Fault("server_error", on_requests=frozenset({2})),) if how == "server_error" else ()
    spec = dataclass_replace_models(mixture_of_agents(["weak", "strong"], "strong"))
    with LoopbackServer(answers=respond, faults=faults) as server:
        made: dict[str | None, OpenAISampler] = {}

        def sampler_for(model: str | None) -> OpenAISampler:
            if model not in made:
                made[model] = OpenAISampler(
                    model=model or "default", base_url=server.base_url, api_key="k", max_retries=0
                )
            return made[model]

        limit = max_requests(2) if how == "budget" else None
        expected = GraphBudgetExhausted if how == "budget" else GraphNodeFailed
        with pytest.raises(expected) as raised:
            asyncio.run(execute_graph(spec, PROBLEM, sampler_for, limit=limit))
        served = server.delivered_usage()
        sent = len([r for r in server.records if r.body])
    error = raised.value
    assert error.node == "fuse" and "fuse" in str(error)
    partial = error.partial
    assert isinstance(partial, GraphRun) and partial.final == ()
    assert [c.text for n in ("L0P0", "L0P1") for c in partial.outputs[n].candidates] == [
        "weak: \\boxed{41}",
        "strong: \\boxed{42}",
    ]
    assert "fuse" in partial.failed
    assert partial.usage.prompt_tokens == served["prompt_tokens"]
    assert partial.usage.completion_tokens == served["completion_tokens"]
    assert partial.usage.requests == served["requests"] == 2
    assert partial.cost_units == 1 + 9
    if how == "budget":
        assert sent == 2 and "fuse" not in partial.outputs  # refused before it was sent
    else:
        assert sent == 3 and partial.usage.failed_requests == 1
        assert isinstance(error.__cause__, UpstreamError)


def test_graph_strategy_in_solve_and_serve(server: LoopbackServer, tmp_path: Path) -> None:
    spec_path = dataclass_replace_models(multi_model_vote(["weak", "strong", "strong"])).save(
        tmp_path / "vote.json"
    )
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "p1", "prompt": QUESTION, "answer": "42"}) + "\n")
    summary = asyncio.run(
        solve(
            SolveConfig(dataset=str(data), out=tmp_path / "out.jsonl", strategy=str(spec_path)),
            base_url=server.base_url,
            model="weak",
        )
    )
    assert summary.accuracy == 1.0
    record = summary.records[0]
    assert record["strategy"] == str(spec_path) and record["n"] == 3
    # The proxy: a preset naming the spec file, and an inline spec in a request.
    config = ProxyConfig(
        base_url=server.base_url,
        model="weak",
        presets={"vote3": _preset(spec_path)},
    )
    with BackgroundProxy(config) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="k", max_retries=0)
        reply = client.chat.completions.create(
            model="vote3", messages=[{"role": "user", "content": QUESTION}]
        )
        assert reply.choices[0].message.content == "strong: \\boxed{42}"
        inline = {"strategy": "graph", "spec": json.loads(spec_path.read_text())}
        reply = client.chat.completions.create(
            model="weak",
            messages=[{"role": "user", "content": QUESTION}],
            extra_body={"ttscale": inline},
        )
        assert reply.model_extra["ttscale"]["strategy"] == "graph"
        assert reply.choices[0].message.content == "strong: \\boxed{42}"
        with pytest.raises(openai.BadRequestError, match="inline"):
            client.chat.completions.create(
                model="weak",
                messages=[{"role": "user", "content": QUESTION}],
                extra_body={"ttscale": {"strategy": "graph", "spec": "/etc/passwd"}},
            )


def _preset(path: Path) -> Any:
    from ttscale.scaling import ScaleSettings

    return ScaleSettings(strategy="graph", options={"spec": str(path)})


def test_graph_strategy_object(server: LoopbackServer) -> None:
    strategy = GraphStrategy(spec="multi_model_vote", graph_options={"models": ["weak", "strong"]})
    sampler = OpenAISampler(model="strong", base_url=server.base_url, api_key="k")
    result = asyncio.run(strategy.run(PROBLEM, sampler))
    # A 1-1 tie: the group with the lowest sample index wins, the weak model's (node m0).
    assert result.answers == ("41",)
    assert result.text == "weak: \\boxed{41}"
    assert [e.step for e in result.trace] == ["node", "node", "node", "stop"]
    assert result.trace[2].data["votes"] == {"41": 1, "42": 1}
    assert len(result.candidates) == 2
