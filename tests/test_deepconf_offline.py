"""DeepConf inside offline evaluation, `ttscale fit` and `ttscale compare`, from stored logprobs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ttscale.compare import compare_runs, journal_traces
from ttscale.confidence import stop_position
from ttscale.errors import ConfigError
from ttscale.strategies.deepconf import (
    DeepConfConfig,
    StoredTrace,
    simulate_offline,
    simulate_online,
)
from ttscale.strategies.offline import evaluate
from ttscale.testing import CONFIDENT, UNCONFIDENT, LoopbackServer, ScriptedAnswer, ScriptRequest


def random_traces(rng: random.Random, count: int) -> list[StoredTrace]:
    """Answers '1'..'3' ('1' right), some sure and some fading, lengths 3..40 tokens."""
    traces = []
    for _ in range(count):
        answer = rng.choice(["1", "1", "2", "3"])
        sure = rng.random() < (0.7 if answer == "1" else 0.3)
        length = rng.randint(3, 40)
        confidences = tuple(
            (rng.uniform(8, 12) if sure else rng.uniform(0.5, 9)) for _ in range(length)
        )
        traces.append(StoredTrace(answer, confidences, length))
    return traces


def test_a_trace_cuts_where_stop_position_does() -> None:
    rng = random.Random(3)
    for trace in random_traces(rng, 60):
        for window in (1, 2, 5, 16, 64):
            for threshold in [rng.uniform(0, 12) for _ in range(5)] + [-np.inf, np.inf]:
                expected = stop_position(trace.confidences, window, threshold)
                assert trace.cut(window, threshold) == expected


def test_replaying_one_order_at_every_k_is_the_simulation_of_its_prefix() -> None:
    rng = random.Random(7)
    problems = [random_traces(rng, 12) for _ in range(5)]
    answers = [[t.answer for t in row] for row in problems]
    correct = [[t.answer == "1" for t in row] for row in problems]
    order = np.array([rng.sample(range(12), 12)])
    configs = {
        "offline": DeepConfConfig(mode="offline", eta=0.5, window=4),
        "online": DeepConfConfig(mode="online", eta=0.5, window=4, warmup=3, batch_size=2),
    }
    result = evaluate(answers, correct, strategies=configs, orders=order, traces=problems)
    assert result.method == "replay"
    for name, config in configs.items():
        simulate = simulate_online if config.mode == "online" else simulate_offline
        for p, traces in enumerate(problems):
            ordered = [traces[i] for i in order[0]]
            for k in range(1, 13):
                capped = DeepConfConfig(
                    **{**config.__dict__, "samples": k, "warmup": min(config.warmup, k)}
                )
                outcome = simulate(ordered[:k], capped)
                column = k - 1
                assert result.per_problem[name][p, column] == (outcome.answer == "1")
                assert result.per_problem_samples[name][p, column] == outcome.samples
                assert result.per_problem_tokens[name][p, column] == outcome.tokens


def test_expected_deepconf_curves_with_their_tokens_and_errors() -> None:
    rng = random.Random(11)
    problems = [random_traces(rng, 8) for _ in range(12)]
    answers = [[t.answer for t in row] for row in problems]
    correct = [[t.answer == "1" for t in row] for row in problems]
    result = evaluate(answers, correct, subsets=50, traces=problems)
    assert {"majority", "deepconf", "deepconf_online"} <= set(result.accuracy)
    whole = np.array([[sum(t.tokens for t in row) / 8] for row in problems]) * result.ks
    offline_tokens = result.per_problem_tokens["deepconf"]
    online_tokens = result.per_problem_tokens["deepconf_online"]
    # Offline draws k whole samples: over 20 orders its mean is near k times the mean length.
    assert np.allclose(offline_tokens[:, -1], whole[:, -1])  # at k = N every sample is drawn
    assert (online_tokens <= offline_tokens + 1e-9).all()  # online draws fewer, cut shorter
    assert (online_tokens < offline_tokens - 1e-9).any()  # the control: it does save some
    for name in ("deepconf", "deepconf_online"):
        assert ((result.per_problem[name] >= 0) & (result.per_problem[name] <= 1)).all()
        assert (result.se[name] > 0).all() and (result.mc_se[name][1:-1] > 0).all()
    # At k = 1 every strategy answers with the first drawn sample: the same expectation.
    first = np.mean([np.mean(row) for row in correct])
    assert abs(result.at("deepconf", 1) - first) < 4 * result.se_at("deepconf", 1)
    # The other curves do not move when DeepConf joins (it draws from its own random stream).
    alone = evaluate(answers, correct, subsets=50)
    assert np.array_equal(alone.per_problem["majority"], result.per_problem["majority"])


def test_deepconf_without_logprobs_is_refused_with_the_flag_to_use() -> None:
    with pytest.raises(ConfigError, match="logprobs"):
        evaluate([["1", "2"]], [[True, False]], strategies=["deepconf"])
    plain = evaluate([["1", "2"]], [[True, False]])
    assert "deepconf" not in plain.accuracy  # by default it runs only when traces are given


# -- through the commands, on a run of the loopback server ----------------------------------------

QUESTIONS = {f"q{i}": str(10 + i) for i in range(5)}


def sure_or_fading(request: ScriptRequest) -> ScriptedAnswer:
    """Right and sure 5 times in 8, else a wrong answer that fades after three tokens."""
    qid = request.prompt.split()[-1].rstrip("?")
    right = QUESTIONS[qid]
    if request.index % 8 in (0, 2, 3, 5, 6):
        return ScriptedAnswer(f"It is surely {right}, so the answer is {right}.", (CONFIDENT,))
    wrong = int(right) + 1 + request.index % 2
    fading = (CONFIDENT,) * 3 + (UNCONFIDENT,)
    return ScriptedAnswer(f"Maybe it could be {wrong}, the answer is {wrong}.", fading)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ttscale.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run drawn with --logprobs 5, and the same run with the logprobs dropped from its
    journal (what a run drawn without --logprobs keeps)."""
    folder = tmp_path_factory.mktemp("deepconf-runs")
    dataset = folder / "data.jsonl"
    dataset.write_text(
        "".join(
            json.dumps({"id": q, "prompt": f"What is {q}?", "answer": a}) + "\n"
            for q, a in QUESTIONS.items()
        )
    )
    out, without = folder / "with.jsonl", folder / "without.jsonl"
    with LoopbackServer(answers=sure_or_fading) as server:
        done = run_cli(
            *("solve", str(dataset), "--out", str(out), "--base-url", server.base_url),
            *("--model", "loopback", "-n", "8", "--no-plot", "--logprobs", "5"),
        )
        assert done.returncode == 0, done.stderr
    without.write_text(out.read_text())
    entries = [json.loads(line) for line in Path(f"{out}.samples.jsonl").read_text().splitlines()]
    assert all(entry["candidate"].get("logprobs") for entry in entries)
    for entry in entries:
        entry["candidate"].pop("logprobs")
    Path(f"{without}.samples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return out, without


def test_fit_shows_deepconf_rows_and_their_tokens_from_a_run_with_logprobs(
    runs: tuple[Path, Path],
) -> None:
    with_logprobs, without = runs
    done = run_cli("fit", str(with_logprobs))
    assert done.returncode == 0, done.stderr
    assert "deepconf acc" in done.stdout and "deepconf_online acc" in done.stdout
    assert "deepconf_online:" in done.stderr  # its completion tokens at k, beside whole samples
    fitted = json.loads((with_logprobs.parent / "with-fit" / "fit.json").read_text())
    row = next(r for r in fitted["rows"] if r["k"] == 8)
    # Five sure right traces of eight: confidence-filtered votes elect the right answer.
    assert row["deepconf acc"] == 1.0 and row["deepconf_online acc"] == 1.0
    assert row["deepconf acc low"] is not None
    # The control: the run drawn without logprobs has no DeepConf and says why (what ttscale fit
    # prints among its notes).
    traces, why = journal_traces(without)
    assert traces is None and "deepconf left out" in why and "--logprobs 20" in why
    assert journal_traces(with_logprobs)[0] is not None


def test_compare_deepconf_online_against_majority_on_the_same_samples(
    runs: tuple[Path, Path],
) -> None:
    with_logprobs, without = runs
    out = with_logprobs.parent / "compare.json"
    done = run_cli(
        *("compare", str(with_logprobs), str(with_logprobs), "--strategy", "deepconf_online"),
        *("--strategy", "majority", "--k", "4", "--k", "8", "--out", str(out)),
    )
    assert done.returncode == 0, done.stderr
    compared = json.loads(out.read_text())
    at_8 = next(row for row in compared["by_k"] if row["k"] == 8)
    assert at_8["difference"] >= 0  # majority of 5 right in 8 is right too; never behind
    assert compared["by_tokens"] or "share no range of tokens" in done.stdout
    with pytest.raises(ConfigError, match=r"deepconf left out.*--logprobs 20"):
        compare_runs(without, without, strategies=["deepconf"], ks=[8])
