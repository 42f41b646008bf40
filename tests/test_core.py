"""Core types, seeds, the registry and the portal: plain logic, no server."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ttscale import (
    Candidate,
    ConfigError,
    DataError,
    OpenAISampler,
    Portal,
    Problem,
    Result,
    SampleBatch,
    SamplingParams,
    Score,
    TTScaleError,
    UnknownNameError,
    Usage,
    as_sampler,
    as_strategy,
    as_verifier,
    derive_seed,
    errors,
)
from ttscale.registry import available, create, load
from ttscale.sync import SyncSampler, SyncStrategy, SyncVerifier
from ttscale.testing.fakes import ScriptedSampler


def test_every_error_is_a_ttscale_error() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), TTScaleError)


def test_error_tree_docstring_names_every_error() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in doc, f"{name} is missing from the tree drawn in errors.py"


def test_data_error_names_file_line_and_field() -> None:
    error = DataError("not a string", path="data.jsonl", line=3, field="prompt")
    assert str(error) == "data.jsonl:3: not a string (field 'prompt')"


def test_problem_needs_exactly_one_of_prompt_and_messages() -> None:
    with pytest.raises(DataError, match="exactly one"):
        Problem(id="p")
    with pytest.raises(DataError, match="exactly one"):
        Problem(id="p", prompt="a", messages=({"role": "user", "content": "b"},))
    with pytest.raises(DataError, match="role"):
        Problem(id="p", messages=({"content": "b"},))
    problem = Problem(id="p", messages=[{"role": "user", "content": "b"}])
    assert isinstance(problem.messages, tuple)
    assert problem.input == problem.messages


def test_frozen_types_do_not_share_mutable_state() -> None:
    metadata = {"source": "a"}
    problem = Problem(id="p", prompt="x", metadata=metadata)
    metadata["source"] = "b"
    assert problem.metadata["source"] == "a"
    with pytest.raises(TypeError):
        problem.metadata["source"] = "c"  # type: ignore[index]


def test_sampling_params_validate_and_normalise() -> None:
    assert SamplingParams(stop="\n").stop == ("\n",)
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_tokens": 0}, {"logprobs": -1}):
        with pytest.raises(ConfigError):
            SamplingParams(**bad)  # type: ignore[arg-type]


def test_usage_adds_and_serialises() -> None:
    one = Usage(requests=1, samples=2, prompt_tokens=10, completion_tokens=5, cost=0.5)
    two = Usage(requests=2, samples=3, prompt_tokens=1, completion_tokens=1, failed_requests=1)
    total = one + two
    assert (total.requests, total.samples, total.total_tokens) == (3, 5, 17)
    assert total.failed_requests == 1
    data = json.loads(json.dumps(total.to_dict()))
    assert Usage.from_dict(data) == total
    assert Usage.total([one, two]) == total


def test_candidate_serialises_with_logprobs() -> None:
    from ttscale import TokenLogprob

    candidate = Candidate("hi", 0, logprobs=(TokenLogprob("hi", -0.1, (("hi", -0.1),)),))
    data = json.loads(json.dumps(candidate.to_dict()))
    assert data["logprobs"][0] == {"token": "hi", "logprob": -0.1, "top": [["hi", -0.1]]}


def test_derived_seeds_are_distinct_for_every_index() -> None:
    for base in (0, 1, 12345, 2**31 - 1, 2**40):
        seeds = {derive_seed(base, index) for index in range(200_000)}
        assert len(seeds) == 200_000
        assert all(0 <= seed < 2**31 for seed in seeds)
    assert derive_seed(0, 0) != derive_seed(1, 0)
    with pytest.raises(ValueError, match="index"):
        derive_seed(0, -1)


# -- registry ---------------------------------------------------------------------------------


def test_builtin_sampler_is_registered_by_entry_point() -> None:
    assert "openai" in available("sampler")
    assert load("sampler", "openai") is OpenAISampler
    sampler = create("sampler", "openai", model="m", base_url="http://127.0.0.1:9/v1")
    assert isinstance(sampler, OpenAISampler)
    assert sampler.config.model == "m"


def test_unknown_name_lists_what_is_registered() -> None:
    with pytest.raises(UnknownNameError) as caught:
        load("sampler", "no-such-sampler")
    assert "no-such-sampler" in str(caught.value)
    assert "openai" in str(caught.value)
    with pytest.raises(ConfigError, match="unknown kind"):
        available("gadget")


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigError, match="temprature"):
        create("sampler", "openai", model="m", temprature=0.5)


def test_third_party_plugin_registers_like_a_builtin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real installed distribution: a dist-info folder with entry_points.txt on sys.path.
    (tmp_path / "my_plugin.py").write_text(
        textwrap.dedent(
            """
            from ttscale.types import Result

            class FirstAnswer:
                def __init__(self, samples=1):
                    self.samples = samples

                async def run(self, problem, sampler, verifier=None):
                    batch = await sampler.sample(problem.input, self.samples)
                    return Result(problem.id, batch.candidates[:1], batch.candidates, batch.usage)
            """
        )
    )
    dist = tmp_path / "my_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[ttscale.strategies]\nfirst_answer = my_plugin:FirstAnswer\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "first_answer" in available("strategy")
    strategy = create("strategy", "first_answer", samples=2)
    sampler = ScriptedSampler({"q": ["a", "b"]})
    result = asyncio.run(strategy.run(Problem(id="1", prompt="q"), sampler))
    assert result.text == "a" and len(result.candidates) == 2
    monkeypatch.delitem(sys.modules, "my_plugin", raising=False)


def test_broken_plugin_is_reported_as_broken_not_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ttscale.verifiers]\nbroken = no_such_module:X\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="failed to load"):
        load("verifier", "broken")


# -- plain functions where a protocol is expected -----------------------------------------------


def test_plain_functions_are_accepted_where_protocols_are() -> None:
    def sample(prompt: str, n: int, params: object, *, start_index: int = 0) -> SampleBatch:
        return SampleBatch(
            tuple(Candidate(f"{prompt}{i}", i) for i in range(start_index, start_index + n)),
            Usage(samples=n),
        )

    async def score(problem: Problem, candidates: list[Candidate]) -> list[float]:
        return [float(len(c.text)) for c in candidates]

    async def strategy(problem: Problem, sampler: object, verifier: object) -> Result:
        batch = await as_sampler(sampler).sample(problem.input, 3)  # type: ignore[arg-type]
        scores = await as_verifier(verifier).score(problem, batch.candidates)  # type: ignore[arg-type]
        best = max(range(3), key=lambda i: (scores[i].value, -i))
        return Result(problem.id, (batch.candidates[best],), batch.candidates, batch.usage)

    problem = Problem(id="1", prompt="x")
    result = asyncio.run(as_strategy(strategy).run(problem, as_sampler(sample), as_verifier(score)))
    assert result.text == "x0"
    assert asyncio.run(as_verifier(lambda p, cs: [Score(1.0)] * len(cs)).score(problem, [])) == []
    with pytest.raises(ConfigError):
        as_sampler(42)  # type: ignore[arg-type]


# -- the portal -------------------------------------------------------------------------------


def test_portal_runs_calls_on_one_long_lived_loop() -> None:
    portal = Portal()
    try:

        async def loop_identity() -> int:
            return id(asyncio.get_running_loop())

        first = portal.call(loop_identity)
        second = portal.call(loop_identity)
        assert first == second == id(portal.loop)
    finally:
        portal.close()
    with pytest.raises(ConfigError, match="closed"):
        portal.call(asyncio.sleep, 0)


def test_portal_refuses_a_call_from_its_own_loop() -> None:
    portal = Portal()
    try:

        async def reenter() -> None:
            portal.call(asyncio.sleep, 0)

        with pytest.raises(ConfigError, match="own portal"):
            portal.call(reenter)
    finally:
        portal.close()


def test_sync_twins_of_strategy_and_verifier() -> None:
    sampler = ScriptedSampler({"q": ["b", "a"]})
    portal = Portal()
    # Where each async body ran: the sync twins must hand the work to the portal's loop.
    ran_on: list[tuple[asyncio.AbstractEventLoop, threading.Thread]] = []

    def note() -> None:
        ran_on.append((asyncio.get_running_loop(), threading.current_thread()))

    async def shortest(problem: Problem, candidates: list[Candidate]) -> list[float]:
        note()
        return [-len(c.text) for c in candidates]

    async def first(problem: Problem, sampler: object, verifier: object) -> Result:
        note()
        batch = await as_sampler(sampler).sample(problem.input, 2)  # type: ignore[arg-type]
        return Result(problem.id, batch.candidates[:1], batch.candidates, batch.usage)

    try:
        verifier = SyncVerifier(as_verifier(shortest), portal=portal)
        scores = verifier.score(Problem(id="1", prompt="q"), [Candidate("ab", 0)])
        assert [s.value for s in scores] == [-2.0]
        twin = SyncStrategy(as_strategy(first), sampler, portal=portal)
        result = twin.run(Problem(id="1", prompt="q"))
        assert result.text == "b"
        sync_sampler = SyncSampler(sampler, portal=portal)
        assert sync_sampler.sample("q", 1, start_index=1).candidates[0].text == "a"
        assert [start for _, _, start in sampler.calls] == [0, 1]
        assert len(ran_on) == 2
        for loop, thread in ran_on:
            assert loop is portal.loop and thread is not threading.current_thread()
    finally:
        portal.close()
