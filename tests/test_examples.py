"""Every script in examples/ runs as a real subprocess against the loopback server.

The loopback server answers like a model that is right most of the time: arithmetic problem number
p (in the built-in dataset's order) is answered correctly on 6 - p of every 8 samples (at least
one), wrongly or without an answer otherwise, so votes are never unanimous and coverage rises with
k. HumanEval stubs get a broken body on even samples and the canonical solution on odd ones.

The test marked slow runs an example against the embedded model itself (llama.cpp on CPU).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ttscale.datasets import load_dataset
from ttscale.seeds import derive_seed
from ttscale.testing.server import LoopbackServer, ScriptRequest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

ARITHMETIC = {
    p.prompt: (position, p.answer) for position, p in enumerate(load_dataset("arithmetic"))
}
HUMANEVAL = load_dataset("humaneval", limit=3)


def arithmetic_reply(position: int, answer: str, index: int) -> str:
    slot = index % 8
    if slot < max(1, 6 - position):
        return f"Adding it up gives {answer}. The answer is \\boxed{{{answer}}}."
    if slot == 7:
        return "I am not sure."
    return f"\\boxed{{{int(answer) + 1 + slot % 2}}}"


def respond(request: ScriptRequest) -> str:
    if request.prompt in ARITHMETIC:
        return arithmetic_reply(*ARITHMETIC[request.prompt], request.index)
    for problem in HUMANEVAL:
        # The example wraps the stub in an instruction, so look for the function it defines.
        if f"def {problem.entry_point}(" in request.prompt:
            if request.index % 2 == 0:
                return f"```python\n{problem.prompt}    return None\n```"
            solution = problem.prompt + problem.metadata["canonical_solution"]
            return f"Here is the function:\n```python\n{solution}```"
    return "The answer is 42."


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=respond) as server:
        yield server


def run_example(
    script: str,
    *args: str,
    server: LoopbackServer | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(EXAMPLES / script)]
    if server is not None:
        command += ["--base-url", server.base_url, "--model", "loopback"]
    done = subprocess.run(
        [*command, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    return done


def test_every_example_is_tested() -> None:
    scripts = {path.name for path in EXAMPLES.glob("*.py")}
    source = Path(__file__).read_text()
    assert scripts, "no examples found"
    assert all(f'"{name}"' in source for name in scripts), scripts


def test_majority_vote(loopback: LoopbackServer) -> None:
    out = run_example("majority_embedded.py", server=loopback).stdout
    assert "arith-00: votes={'8': 6, '9': 1} chosen=8 expected=8 correct=True" in out
    assert "arith-01: votes={'48': 5, '50': 1, '49': 1} chosen=48 expected=48 correct=True" in out
    assert "arith-02: votes={'13': 4, '14': 2, '15': 1} chosen=13 expected=13 correct=True" in out
    assert out.count("usage: samples=8 requests=1") == 3
    assert "accuracy: 3/3" in out
    assert loopback.delivered_usage()["samples"] == 24


def test_best_of_n_with_unit_tests_on_humaneval(loopback: LoopbackServer) -> None:
    out = run_example("best_of_n_humaneval.py", "--samples", "4", server=loopback).stdout
    for problem in HUMANEVAL:
        line = next(line for line in out.splitlines() if line.startswith(problem.id + " "))
        # Even samples fail their tests, odd ones pass: the verifier must pick an odd one.
        assert "outcomes=['fail', 'pass', 'fail', 'pass']" in line
        assert re.search(r"chosen=sample [13] passed=True", line), line
    assert "solved: 3/3" in out
    assert "def has_close_elements(" in out.split("best program of the first problem:")[1]


def test_best_of_majority_pass_at_k(loopback: LoopbackServer) -> None:
    out = run_example(
        "best_of_majority_k.py", "--samples", "8", "--k", "2", "--alpha", "0.25", server=loopback
    ).stdout
    tops = re.findall(r"top 2: \[(.*)\] expected=(\d+) correct=\[(.*)\] pass@2=(\w+)", out)
    assert len(tops) == 3
    for answers, expected, _, passed in tops:
        assert f"'{expected}'" in answers and passed == "True"
        # Answers with a single vote (below 25% of 8) never survive, however confident.
        assert not {"'9'", "'49'", "'50'", "'15'", "None"} & set(answers.split(", "))
    assert "votes={'8': 6, '9': 1} survive at >= 2 votes" in out
    # Both surviving answers of the third problem come back, ranked by confidence.
    assert sorted(tops[2][0].split(", ")) == ["'13'", "'14'"]
    assert "pass@2: 3/3" in out


def test_budget_run_law_fit_and_plot(loopback: LoopbackServer, tmp_path: Path) -> None:
    out_dir = tmp_path / "laws"
    out = run_example(
        "budget_and_laws.py",
        "--problems",
        "6",
        "--samples",
        "16",
        "--token-budget",
        "700",
        "--out",
        str(out_dir),
        server=loopback,
    ).stdout
    counts = re.findall(r"(arith-\d+): (\d+)/(\d+) samples correct", out)
    refused = re.findall(r"(arith-\d+): refused by the budget \(max_tokens\(700\)\)", out)
    # The token budget lets a few problems through and refuses the rest before they draw.
    assert len(counts) >= 3 and refused and len(counts) + len(refused) == 6
    assert counts[0] == ("arith-00", "12", "16") and counts[1] == ("arith-01", "10", "16")
    assert all(n == "16" for _, _, n in counts)
    assert loopback.delivered_usage()["samples"] == 16 * len(counts)
    fit = re.search(r"fit: a=(\S+) .* b=(\S+) ", out)
    assert fit is not None, out
    assert float(fit[1]) < 0 and float(fit[2]) < 0  # the law rises towards full coverage
    far = re.search(r"predicted coverage at 160 samples \(10x\): (\S+)", out)
    assert far is not None and 0.9 <= float(far[1]) <= 1.0
    png = out_dir / "coverage.png"
    assert png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_proxy_with_the_unmodified_openai_client(loopback: LoopbackServer) -> None:
    out = run_example("proxy_client.py", server=loopback).stdout
    lines = out.splitlines()
    assert lines[0].startswith("preset maj8 answers: ['Adding it up gives 8.")
    assert "votes: {'8': 6, '9': 1} samples_used: 8 k: 2" in out
    info = json.loads(next(line for line in lines if line.startswith("  ttscale: "))[11:])
    assert info["strategy"] == "majority" and info["samples_used"] == 6
    assert info["budget"]["limits"] == {"tokens": 20000}
    assert info["usage"]["sampling"]["samples"] == 6
    assert "streamed answer: Adding it up gives 8. The answer is \\boxed{8}." in out
    assert "stream votes: {'8':" in out
    # Three scaled requests: 8 + 6 + 8 samples, all drawn from the upstream by the proxy.
    assert loopback.delivered_usage()["samples"] == 22


def test_scale_a_generate_function(loopback: LoopbackServer) -> None:
    out = run_example("scale_generate_function.py", server=loopback).stdout
    picks = re.findall(
        r"(arith-\d+): votes=(\{.*\}) chosen=(\S+) expected=(\S+) samples=8 tokens=(\d+)", out
    )
    # Votes are compared as mappings: the order of equal counts follows which sample came first.
    assert [(p[0], ast.literal_eval(p[1]), p[2], p[3]) for p in picks] == [
        ("arith-00", {"8": 6, "9": 1}, "8", "8"),
        ("arith-01", {"48": 5, "50": 1, "49": 1}, "48", "48"),
        ("arith-02", {"13": 4, "14": 2, "15": 1}, "13", "13"),
    ], out
    assert out.count("chosen text: 'Adding it up gives") == 3
    assert "accuracy: 3/3" in out
    # One request per sample, and every token the server sent is counted in some result.
    served = loopback.delivered_usage()
    assert served["samples"] == served["requests"] == 24
    assert sum(int(p[4]) for p in picks) == served["prompt_tokens"] + served["completion_tokens"]
    # Each sample of a question had its own seed, derived from the example's base seed 0.
    seeds = sorted(r.body["seed"] for r in loopback.records if r.body)
    assert seeds == sorted([derive_seed(0, index) for index in range(8)] * 3)


def test_wrap_an_openai_client(loopback: LoopbackServer) -> None:
    out = run_example("wrap_openai_client.py", server=loopback).stdout
    lines = out.splitlines()
    assert lines[0] == "plain call: Adding it up gives 8. The answer is \\boxed{8}."
    # The plain call drew the first sample; the scaled one the next 8, one wrong and one blank.
    assert lines[1] == (
        "scaled call answers: ['Adding it up gives 8. The answer is \\\\boxed{8}.', '\\\\boxed{9}']"
    )
    assert lines[2] == "  votes: {'8': 6, '9': 1} samples_used: 8"
    # The budget of 12 samples spans the second client's calls: 8, then 4, then none.
    assert lines[4:6] == ["answer 8 from 8 samples", "answer 48 from 4 samples"]
    assert lines[6].startswith("budget spent: ") and "max_samples(12)" in lines[6]
    served = loopback.delivered_usage()
    assert served["samples"] == 1 + 8 + 8 + 4
    usage = json.loads(lines[3].split("usage: ", 1)[1].replace("'", '"'))
    scaled = next(r for r in loopback.records if r.body and r.body.get("n") == 8)
    assert usage["prompt_tokens"] == scaled.prompt_tokens
    assert usage["completion_tokens"] == scaled.completion_tokens


def test_custom_plugin_found_by_entry_points(loopback: LoopbackServer, tmp_path: Path) -> None:
    # Installed from a copy, so the build leaves nothing behind in examples/plugin.
    source = shutil.copytree(
        EXAMPLES / "plugin",
        tmp_path / "plugin",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        env={**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        check=True,
        timeout=120,
    )
    # Without the plugin on the path the example says how to get it.
    missing = run_example("custom_plugin.py", server=loopback, check=False)
    assert missing.returncode != 0 and "pip install examples/plugin" in missing.stderr

    out = run_example("custom_plugin.py", server=loopback, env={"PYTHONPATH": str(site)}).stdout
    listing = dict(line.split(": ", 1) for line in out.splitlines()[:3])
    assert "quorum" in listing["strategy (ttscale.strategies)"].split(", ")
    assert "majority" in listing["strategy (ttscale.strategies)"].split(", ")
    assert "answer_format" in listing["verifier (ttscale.verifiers)"].split(", ")
    # Three agreeing votes arrive within the first two rounds of two samples.
    assert "arith-00 quorum: answer=8 expected=8 samples=4 stop=quorum" in out
    assert "arith-01 quorum: answer=48 expected=48 samples=4 stop=quorum" in out
    assert "arith-02 quorum: answer=13 expected=13 samples=4 stop=quorum" in out
    best = next(line for line in out.splitlines() if line.startswith("arith-00 best_of_n"))
    assert "answer=8 " in best and "no answer" in best


@pytest.mark.slow
@pytest.mark.timeout(900)  # the example's own bound is 600 s, for a loaded machine
def test_majority_on_the_embedded_model() -> None:
    done = run_example(
        "majority_embedded.py",
        "--problems",
        "2",
        "--samples",
        "4",
        "--max-tokens",
        "128",
        timeout=600,
    )
    out = done.stdout
    picks = re.findall(
        r"(arith-\d+): votes=(\{.*\}) chosen=(\S+) expected=(\S+) correct=(\w+)", out
    )
    assert [p[0] for p in picks] == ["arith-00", "arith-01"], out
    assert out.count("usage: samples=4 ") == 2
    # A 0.5B coder model gets at least one of these one-step problems right with 4 votes.
    assert re.search(r"accuracy: [12]/2", out), out
