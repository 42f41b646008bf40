"""``fit_report`` over results files written as ``ttscale solve`` writes them."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ttscale.errors import DataError
from ttscale.estimators import pass_at_k
from ttscale.report import fit_report, held_out_fit_k, read_results, render_table
from ttscale.testing import LoopbackServer, ScriptRequest
from ttscale.types import Usage

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

SAMPLES = 60
PROBLEMS = 300


def record(problem_id: str, verdicts: list[bool], strategy: str = "best_of_n") -> dict[str, Any]:
    samples: list[dict[str, Any]] = [
        {
            "text": f"answer {i}",
            "answer": str(i),
            "correct": verdict,
            "score": None,
            "finish_reason": "stop",
            "completion_tokens": 20 + i % 5,
            "seed": i,
            "latency": 0.01,
        }
        for i, verdict in enumerate(verdicts)
    ]
    completion = sum(s["completion_tokens"] for s in samples)
    usage = Usage(
        requests=len(verdicts),
        samples=len(verdicts),
        prompt_tokens=30 * len(verdicts),
        completion_tokens=completion,
        cost=(30 * len(verdicts) + 2 * completion) * 1e-6,
    )
    return {
        "id": problem_id,
        "strategy": strategy,
        "params": {"n": len(verdicts)},
        "samples": samples,
        "selected": [0] if verdicts else [],
        "n": len(verdicts),
        "num_correct": sum(verdicts),
        "usage": usage.to_dict(),
    }


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def beta_results(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    rates = rng.beta(0.4, 1.2, size=PROBLEMS)
    verdicts = rng.random((PROBLEMS, SAMPLES)) < rates[:, None]
    records = [record(f"p{i}", [bool(v) for v in row]) for i, row in enumerate(verdicts)]
    return write_jsonl(tmp_path / "results.jsonl", records), verdicts.sum(axis=1)


def test_fit_report_measures_fits_and_writes_its_files(
    beta_results: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, counts = beta_results
    extra = {"majority@k": {1: 0.2, 8: 0.25, 60: 0.26}}
    report = fit_report(
        path,
        tmp_path / "out",
        n_resamples=40,
        target_coverage=0.9,
        extra_columns=extra,
    )
    assert report.problems == PROBLEMS
    assert report.max_k == SAMPLES
    measured = [row for row in report.rows if row["coverage"] is not None]
    assert measured[0]["k"] == 1
    assert measured[-1]["k"] == SAMPLES
    for row in measured:
        assert row["coverage"] == pytest.approx(pass_at_k(SAMPLES, counts, row["k"]), abs=1e-12)
    beyond = [row for row in report.rows if row["coverage"] is None]
    assert beyond[-1]["k"] == 10 * SAMPLES
    assert all(row["fit_low"] <= row["fit"] <= row["fit_high"] for row in report.rows)

    assert report.power is not None and report.power_error is not None
    assert report.power_error.mean < 0.01
    assert report.beta is not None
    assert report.beta.alpha == pytest.approx(0.4, rel=0.3)
    assert report.held_out is not None and report.held_out.fit_k == 6

    # Spend scales with k at the run's per-sample average.
    per_sample_tokens = sum((30 + 20 + i % 5) for i in range(SAMPLES)) / SAMPLES * PROBLEMS
    assert report.rows[0]["tokens"] == pytest.approx(per_sample_tokens)
    assert report.target is not None and report.target.k is not None
    assert report.target.tokens == pytest.approx(per_sample_tokens * report.target.k)

    rows_by_k = {row["k"]: row for row in report.rows}
    assert rows_by_k[8]["majority@k"] == 0.25
    assert rows_by_k[2]["majority@k"] is None

    assert report.plot_path is not None
    assert report.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.json_path is not None

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in JSON")

    saved = json.loads(report.json_path.read_text(), parse_constant=refuse)
    assert saved["rows"] == json.loads(json.dumps(report.rows))
    assert saved["power_law"]["a"] == pytest.approx(report.power.a)
    assert "majority@k" in saved["columns"]

    table = render_table(report)
    assert table.row_count == len(report.rows)
    assert [column.header for column in table.columns][:3] == ["k", "coverage", "fit"]


def test_without_an_output_directory_nothing_is_written(
    beta_results: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, _ = beta_results
    report = fit_report(path, None, n_resamples=10, plot=False)
    assert report.json_path is None and report.plot_path is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


def test_strategy_filter_and_repeated_problems(tmp_path: Path) -> None:
    records = [
        record("a", [True, False, False, True] * 5, strategy="vote"),
        record("b", [False] * 20, strategy="vote"),
        record("a", [True] * 20, strategy="best_of_n"),
        record("c", [False, True] * 10, strategy="vote"),
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    with pytest.raises(DataError, match=r"several strategies \(best_of_n, vote\)") as mixed:
        fit_report(path, None)
    assert (mixed.value.line, mixed.value.field) == (3, "strategy")
    repeated_path = write_jsonl(tmp_path / "repeated.jsonl", [*records[:2], records[0]])
    with pytest.raises(DataError) as repeated:
        fit_report(repeated_path, None)
    assert (repeated.value.line, repeated.value.field) == (3, "id")
    report = fit_report(path, None, strategy="vote", n_resamples=10, plot=False)
    assert report.problems == 3
    with pytest.raises(DataError, match="no records for strategy 'nope'"):
        fit_report(path, None, strategy="nope")


def test_degenerate_results_report_coverage_without_a_law(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [record(f"p{i}", [False] * 8) for i in range(5)])
    report = fit_report(path, tmp_path / "out", n_resamples=10)
    assert report.power is None
    assert all(row["coverage"] == 0.0 for row in report.rows if row["coverage"] is not None)
    assert report.notes
    assert report.plot_path is not None and report.plot_path.exists()


def corrupt(good: dict[str, Any], change: str) -> str:
    data = json.loads(json.dumps(good))
    if change == "not json":
        return "{'id': 1"
    if change == "not an object":
        return "[1, 2]"
    if change == "missing usage":
        del data["usage"]
    elif change == "n disagrees":
        data["n"] = 7
    elif change == "correct is a string":
        data["samples"][2]["correct"] = "yes"
    elif change == "num_correct disagrees":
        data["num_correct"] += 1
    elif change == "negative tokens":
        data["usage"]["prompt_tokens"] = -3
    elif change == "id empty":
        data["id"] = ""
    return json.dumps(data)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("not json", None),
        ("not an object", None),
        ("missing usage", "usage"),
        ("n disagrees", "n"),
        ("correct is a string", "samples[2].correct"),
        ("num_correct disagrees", "num_correct"),
        ("negative tokens", "usage.prompt_tokens"),
        ("id empty", "id"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path: Path, change: str, field: str | None) -> None:
    good = record("a", [True, False, True, False])
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(good), "", corrupt(record("b", [True, False, True, False]), change)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_results(path)
    assert error.value.path == str(path)
    assert error.value.line == 3  # blank lines still count
    assert error.value.field == field
    assert str(path) in str(error.value)


def test_held_out_fit_uses_a_tenth_or_half_of_the_samples() -> None:
    assert held_out_fit_k(60) == 6
    assert held_out_fit_k(8) == 4
    assert held_out_fit_k(6) == 3
    assert held_out_fit_k(5) is None


# -- the real commands on a results file a loopback run wrote -----------------------------------

QUESTIONS = {f"q{i}": str(10 + i * 3) for i in range(6)}


def graded_world(request: ScriptRequest) -> str:
    """Problem i is right at i + 1 of every 8 sample indices, so difficulty varies; wrong answers
    split between two values, so votes are not unanimous. A judge (same server) rates right 9,
    wrong 3."""
    text = request.prompt
    if text.startswith("Rate how good"):
        asked = re.search(r"What is (q\d+)\?", text)
        said = re.search(r"Response:\nThe answer is (\d+)\.", text)
        assert asked is not None and said is not None
        return "Score: 9" if said.group(1) == QUESTIONS[asked.group(1)] else "Score: 3"
    qid = text.split()[-1].rstrip("?")
    right = int(QUESTIONS[qid])
    if request.index % 8 <= int(qid[1:]):
        return f"The answer is {right}."
    return f"The answer is {right + 1 + request.index % 2}."


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    # A wide terminal, so that rich prints each header on one line.
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "ttscale.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
    )


@pytest.fixture(scope="module")
def loopback_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A majority run (n = 8) and a best-of-N run with the judge (scores stored, n = 6)."""
    folder = tmp_path_factory.mktemp("runs")
    dataset = folder / "data.jsonl"
    dataset.write_text(
        "".join(
            json.dumps({"id": q, "prompt": f"What is {q}?", "answer": a}) + "\n"
            for q, a in QUESTIONS.items()
        )
    )
    paths = {"majority": folder / "majority.jsonl", "best_of_n": folder / "judged.jsonl"}
    with LoopbackServer(answers=graded_world) as server:
        common = ("--base-url", server.base_url, "--model", "loopback", "--no-plot")
        done = cli("solve", str(dataset), "--out", str(paths["majority"]), "-n", "8", *common)
        assert done.returncode == 0, done.stderr
        done = cli(
            "solve", str(dataset), "--out", str(paths["best_of_n"]), "-n", "6",
            "--strategy", "best_of_n", "--verifier", "judge", *common,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    return paths


def value(cell: str) -> float:
    """The number of a table cell, without its interval."""
    return float(cell.split()[0])


def interval(cell: str) -> tuple[float, float]:
    low, high = cell.split("[")[1].rstrip("]").split(",")
    return float(low), float(high)


def table_rows(stdout: str) -> tuple[list[str], dict[int, dict[str, str]]]:
    """The header and the rows (by k) of the rich table ``ttscale fit`` prints."""
    lines = [line for line in stdout.splitlines() if "│" in line or "┃" in line]
    header = [cell.strip() for cell in lines[0].strip("┃ ").split("┃")]
    rows = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.strip("│ ").split("│")]
        rows[int(cells[0])] = dict(zip(header, cells, strict=True))
    return header, rows


def test_fit_command_shows_every_strategys_offline_accuracy(
    loopback_results: dict[str, Path], tmp_path: Path
) -> None:
    path = loopback_results["majority"]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    out_dir = tmp_path / "fit"
    done = cli("fit", str(path), "--out-dir", str(out_dir))
    assert done.returncode == 0, done.stderr
    header, rows = table_rows(done.stdout)
    for column in ("k", "coverage", "fit", "majority acc", "adaptive acc", "ahead_by_k acc"):
        assert column in header
    assert "best_of_n acc" not in header  # no verifier scores in a majority run
    assert "need every sample's verifier score" in " ".join(done.stderr.split())
    assert sorted(rows)[:8] == list(range(1, 9))
    # At k = 1 every strategy takes the first sample of the same random orders: one value, an
    # estimate (100 orders) of the exact coverage at 1.
    first = {rows[1][c] for c in ("majority acc", "adaptive acc", "ahead_by_k acc")}
    assert len(first) == 1
    assert value(first.pop()) == pytest.approx(value(rows[1]["coverage"]), abs=0.1)
    # At k = n majority votes over all samples; ties are coin flips over random draw orders, so
    # it is the online pick wherever the vote has a clear winner.
    verdicts = [[s["correct"] is True for s in r["samples"]] for r in records]
    answers = [[s["answer"] for s in r["samples"]] for r in records]
    exact = []
    for said, right in zip(answers, verdicts, strict=True):
        counts = {a: said.count(a) for a in set(said) if a is not None}
        top = max(counts.values())
        winners = [a for a, count in counts.items() if count == top]
        exact.append(sum(right[said.index(a)] for a in winners) / len(winners))
    assert value(rows[8]["majority acc"]) == pytest.approx(np.mean(exact), abs=0.02)
    assert 0 < np.mean(exact) < 1
    # Every value carries its 90% bootstrap interval over problems, and it brackets the value.
    for row in rows.values():
        for column in ("coverage", "majority acc", "adaptive acc"):
            if row[column] != "-":
                low, high = interval(row[column])
                assert low <= value(row[column]) <= high

    png = out_dir / "coverage.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    saved = json.loads((out_dir / "fit.json").read_text())
    assert {"majority acc", "adaptive acc", "ahead_by_k acc"} <= set(saved["columns"])
    by_k = {row["k"]: row for row in saved["rows"]}
    assert by_k[8]["majority acc"] == pytest.approx(value(rows[8]["majority acc"]), abs=5e-5)
    assert by_k[1]["adaptive acc"] == pytest.approx(by_k[1]["majority acc"])
    # Coverage's standard error and interval, recomputed from the exact per-problem pass@k.
    counts = [sum(row) for row in verdicts]
    for k in (1, 3, 8):
        values = np.array([1 - math.comb(8 - c, k) / math.comb(8, k) for c in counts])
        assert by_k[k]["coverage_se"] == pytest.approx(values.std(ddof=1) / math.sqrt(len(values)))
        index = np.random.default_rng(0).integers(0, len(values), size=(1000, len(values)))
        means = values[index].mean(axis=1)
        assert by_k[k]["coverage_low"] == pytest.approx(np.quantile(means, 0.05))
        assert by_k[k]["coverage_high"] == pytest.approx(np.quantile(means, 0.95))
        assert (
            by_k[k]["majority acc low"] <= by_k[k]["majority acc"] <= by_k[k]["majority acc high"]
        )
        assert by_k[k]["majority acc se"] > 0
    assert saved["bands"]["confidence"] == 0.9
    intervals = saved["power_law"]["intervals"]["intervals"]
    assert intervals["a"][0] <= saved["power_law"]["a"] <= intervals["a"][1]
    assert "a_sd" not in saved["power_law"]
    assert saved["fit_error"]["llmonk"]["power"]["mean"] >= 0
    errors = saved["fit_error"]
    assert errors["in_sample"]["power"]["mean"] >= 0
    held = errors["held_out"]
    assert held["fit_k"] == 4 and held["ks"] == [5, 8]  # scored only at k it was not fitted on
    assert "held-out (fitted on 4 samples, scored at k 5..8)" in " ".join(done.stdout.split())


def test_report_command_with_scores_and_a_strategy_filter(
    loopback_results: dict[str, Path], tmp_path: Path
) -> None:
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        loopback_results["majority"].read_text() + loopback_results["best_of_n"].read_text()
    )
    refused = cli("report", str(mixed), "--out-dir", str(tmp_path / "x"))
    assert refused.returncode == 2
    message = " ".join(refused.stderr.split())
    assert "several strategies (best_of_n, majority)" in message and "--strategy" in message

    out_dir = tmp_path / "judged-fit"
    done = cli("report", str(mixed), "--strategy", "best_of_n", "--out-dir", str(out_dir))
    assert done.returncode == 0, done.stderr
    header, rows = table_rows(done.stdout)
    scored = ("best_of_n acc", "weighted_majority acc", "best_of_majority acc")
    for column in ("majority acc", "adaptive acc", "ahead_by_k acc", *scored):
        assert column in header
    # The judge rates every right answer above every wrong one: best-of-N at k is coverage at k.
    for k, row in rows.items():
        if row["coverage"] != "-":
            assert row["best_of_n acc"] == row["coverage"], k
    judged = [json.loads(line) for line in loopback_results["best_of_n"].read_text().splitlines()]
    saved = json.loads((out_dir / "fit.json").read_text())
    assert saved["strategy"] == "best_of_n" and saved["problems"] == len(judged)
    assert saved["fit_error"]["held_out"]["fit_k"] == 3
    assert (out_dir / "coverage.png").stat().st_size > 10_000
