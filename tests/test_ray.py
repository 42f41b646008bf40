"""`ttscale solve --ray` on a local Ray instance: the results file of a plain run, resumable."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ttscale.distributed import shard_directory, solve_on_ray, split_shards
from ttscale.errors import ConfigError, TTScaleError
from ttscale.portal import default_portal
from ttscale.records import exclusive_run
from ttscale.solve import SolveConfig, run_file, solve
from ttscale.testing import LoopbackServer, ScriptRequest

ray = pytest.importorskip("ray")

QUESTIONS = {f"q{i}": str(i * 7) for i in range(8)}

# Timing differs from run to run; everything else in a record must not.
TIMING = {"latency", "wall_time_s"}


def answer_for(request: ScriptRequest) -> str:
    """Like a seeded model: the text depends on the prompt, the request's seed and the choice."""
    qid = request.prompt.split()[-1].rstrip("?")
    right = int(QUESTIONS[qid])
    draw = (sum(map(ord, qid)) + (request.seed or 0) + request.choice) % 4
    answer = right if draw != 3 else right + 1
    return f"The answer is {answer}. (seed {request.seed}, choice {request.choice})"


def write_dataset(path: Path) -> Path:
    path.write_text(
        "".join(
            json.dumps({"id": qid, "prompt": f"What is {qid}?", "answer": answer}) + "\n"
            for qid, answer in QUESTIONS.items()
        )
    )
    return path


def strip_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [strip_timing(v) for v in value]
    return value


def strip_requests(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stripped = strip_timing(records)
    for record in stripped:
        del record["usage"]["requests"]
    return list(stripped)


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def servers() -> Iterator[tuple[LoopbackServer, LoopbackServer]]:
    with LoopbackServer(answers=answer_for) as one, LoopbackServer(answers=answer_for) as two:
        yield one, two


def make_config(dataset: Path, out: Path) -> SolveConfig:
    # adaptive draws in batches of 2: a problem's samples come from several requests, which the
    # pool spreads over both servers.
    return SolveConfig(
        dataset=str(dataset),
        out=out,
        strategy="adaptive",
        samples=8,
        seed=1234,
        strategy_options={"batch_size": 2},
    )


def test_split_shards_deals_round_robin() -> None:
    ids = [f"p{i}" for i in range(5)]
    assert split_shards(ids, 2) == [["p0", "p2", "p4"], ["p1", "p3"]]
    assert split_shards(ids, 9) == [[i] for i in ids]
    assert split_shards([], 3) == []


def test_ray_run_writes_the_plain_run_results_and_resumes(
    tmp_path: Path, ray_instance: None, servers: tuple[LoopbackServer, LoopbackServer]
) -> None:
    one, two = servers
    dataset = write_dataset(tmp_path / "data.jsonl")
    plain_out = tmp_path / "plain" / "results.jsonl"
    ray_out = tmp_path / "ray" / "results.jsonl"

    # The plain run: one server, the ordinary sampler, problems one at a time (dataset order).
    plain = make_config(dataset, plain_out)
    plain = dataclasses.replace(plain, problem_concurrency=1)
    default_portal().call(solve, plain, base_url=one.base_url, model="loopback")
    before = (one.request_count, two.request_count)

    # The Ray run, through the CLI: a driver process joins the test's Ray instance.
    args = [
        sys.executable, "-m", "ttscale.cli", "solve", str(dataset), "--out", str(ray_out),
        "--base-url", f"{one.base_url},{two.base_url}", "--model", "loopback",
        "--strategy", "adaptive", "-n", "8", "--seed", "1234", "-o", "batch_size=2",
        "--no-plot", "--ray", "auto", "--ray-shards", "2",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "accuracy" in done.stdout
    assert one.request_count > before[0] and two.request_count > before[1]  # both servers drew

    plain_records = read_records(plain_out)
    ray_records = read_records(ray_out)
    assert [r["id"] for r in ray_records] == list(QUESTIONS)  # merged in dataset order
    assert [r["id"] for r in plain_records] == list(QUESTIONS)
    assert strip_timing(ray_records) == strip_timing(plain_records)
    assert any(r["num_correct"] < r["n"] for r in ray_records)  # the answers do vary
    for record in ray_records:
        assert all(s["seed"] is not None for s in record["samples"])
    run = json.loads(run_file(ray_out).read_text())
    assert run["model"] == "loopback" and run["problems"] == len(QUESTIONS)
    # Both shards ran, each with its own results file and journal.
    shards = sorted(p.parent.name for p in shard_directory(ray_out).glob("shard-*/results.jsonl"))
    assert shards == ["shard-0", "shard-1"]

    # A rerun on the same --out draws nothing.
    sent = one.request_count + two.request_count
    again = solve_on_ray(
        make_config(dataset, ray_out),
        address="local",
        base_url=f"{one.base_url},{two.base_url}",
        model="loopback",
    )
    assert one.request_count + two.request_count == sent
    assert again.skipped == len(QUESTIONS) and again.usage.samples == 0
    assert read_records(ray_out) == ray_records

    # Lose the merged file and the shards' results, keep only their journals: a rerun dealt into
    # a different number of shards replays every sample instead of buying it again.
    ray_out.unlink()
    for path in shard_directory(ray_out).glob("shard-*/results.jsonl"):
        path.unlink()
    replay = solve_on_ray(
        make_config(dataset, ray_out),
        address="local",
        base_url=f"{one.base_url},{two.base_url}",
        model="loopback",
        shards=3,
    )
    assert one.request_count + two.request_count == sent
    assert replay.replayed_samples == sum(r["n"] for r in ray_records)
    # Replayed samples cost no request now (as in a plain run's resume); all else is the same.
    assert strip_requests(read_records(ray_out)) == strip_requests(ray_records)


def served_samples(*servers: LoopbackServer) -> int:
    return sum(r.choices for server in servers for r in server.records if r.generated)


def test_the_run_budget_holds_across_shards(
    tmp_path: Path, ray_instance: None, servers: tuple[LoopbackServer, LoopbackServer]
) -> None:
    """--run-budget with --ray: the shards share the run's budget (a slice each), so together
    they draw no more than it allows; a rerun with a larger budget finishes the run."""
    one, two = servers
    dataset = write_dataset(tmp_path / "data.jsonl")
    urls = f"{one.base_url},{two.base_url}"
    # The control: without a budget the run draws more than 10 samples.
    free = make_config(dataset, tmp_path / "free.jsonl")
    default_portal().call(solve, free, base_url=one.base_url, model="loopback")
    assert served_samples(one) > 10
    drawn_before = served_samples(one, two)

    out = tmp_path / "capped" / "results.jsonl"
    capped = dataclasses.replace(make_config(dataset, out), run_budget={"samples": 10})
    summary = solve_on_ray(capped, address="local", base_url=urls, model="loopback", shards=2)
    drawn = served_samples(one, two) - drawn_before
    assert 0 < drawn <= 10
    # Problems the budget cut short are unfinished (no record; what they drew is journalled).
    assert summary.stopped is not None and summary.unfinished > 0
    finished = read_records(out) if out.exists() else []
    assert len(finished) + summary.unfinished == len(QUESTIONS)

    larger = dataclasses.replace(capped, run_budget={"samples": 1000})
    rest = solve_on_ray(larger, address="local", base_url=urls, model="loopback", shards=2)
    assert rest.stopped is None
    assert sorted(r["id"] for r in read_records(out)) == sorted(QUESTIONS)


def test_finished_shards_are_merged_without_ray_work(
    tmp_path: Path, ray_instance: None, servers: tuple[LoopbackServer, LoopbackServer]
) -> None:
    """A driver that died after its shards finished: the rerun merges their results files."""
    one, _ = servers
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "results.jsonl"
    config = make_config(dataset, out)
    first = solve_on_ray(config, address="local", base_url=one.base_url, model="loopback")
    assert len(first.records) == len(QUESTIONS)
    lines = out.read_text()
    out.unlink()
    sent = one.request_count
    seen: list[str] = []
    again = solve_on_ray(
        config,
        address="local",
        base_url=one.base_url,
        model="loopback",
        on_problem=lambda record: seen.append(record["id"]),
    )
    assert one.request_count == sent
    assert out.read_text() == lines
    assert sorted(seen) == sorted(QUESTIONS)
    assert [r["id"] for r in again.records] == list(QUESTIONS)

    # With other settings, the shards' records are stale: the problems are solved again.
    out.unlink()
    fewer = dataclasses.replace(config, samples=4)
    third = solve_on_ray(fewer, address="local", base_url=one.base_url, model="loopback")
    assert one.request_count == sent  # the first 4 samples of each are journalled: replayed
    assert third.replayed_samples == sum(r["n"] for r in third.records)
    assert [r["params"]["samples"] for r in read_records(out)] == [4] * len(QUESTIONS)
    assert len(third.records) == len(QUESTIONS) and all(r["n"] <= 4 for r in third.records)


def test_without_ray_installed_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ttscale.errors import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    dataset = write_dataset(tmp_path / "data.jsonl")
    config = make_config(dataset, tmp_path / "results.jsonl")
    with pytest.raises(ConfigError, match=r"\[ray\] extra"):
        solve_on_ray(config, address="local", base_url="http://127.0.0.1:9/v1", model="m")


def test_cli_ray_shards_needs_ray(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    args = [
        sys.executable, "-m", "ttscale.cli", "solve", str(dataset),
        "--out", str(tmp_path / "o.jsonl"), "--base-url", "http://127.0.0.1:9/v1",
        "--model", "m", "--ray-shards", "2",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--ray-shards needs --ray" in done.stderr


def test_a_failed_shard_keeps_the_others_and_the_rerun_finishes(
    tmp_path: Path, ray_instance: None
) -> None:
    broken = {"q1"}

    def flaky(request: ScriptRequest) -> str:
        if request.prompt.split()[-1].rstrip("?") in broken:
            raise RuntimeError("this problem breaks the server")
        return answer_for(request)

    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "results.jsonl"
    config = make_config(dataset, out)
    with LoopbackServer(answers=flaky) as server:
        with pytest.raises(TTScaleError):
            solve_on_ray(config, address="local", base_url=server.base_url, model="m", shards=2)
        # Shard 0 (q0, q2, q4, q6) finished: its records are in the results file.
        assert [r["id"] for r in read_records(out)] == ["q0", "q2", "q4", "q6"]
        broken.clear()
        again = solve_on_ray(config, address="local", base_url=server.base_url, model="m")
    assert again.skipped == 4
    assert sorted(r["id"] for r in read_records(out)) == sorted(QUESTIONS)


def test_the_driver_holds_the_results_file_as_solve_does(tmp_path: Path) -> None:
    config = make_config(write_dataset(tmp_path / "data.jsonl"), tmp_path / "held.jsonl")
    with LoopbackServer(answers=answer_for) as server:
        with exclusive_run(config.out.absolute()), pytest.raises(ConfigError, match="another run"):
            solve_on_ray(config, address="local", base_url=server.base_url, model="loopback")
        assert server.request_count == 0
        # Control: once the other run lets go, the driver runs.
        done = solve_on_ray(
            config, address="local", base_url=server.base_url, model="loopback", shards=1
        )
    assert len(done.records) == len(config.out.read_text().splitlines()) > 0
