"""``fit_report`` over results files written as ``ttscale solve`` writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ttscale.errors import DataError
from ttscale.estimators import pass_at_k
from ttscale.report import fit_report, read_results, render_table
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
    with pytest.raises(DataError) as repeated:
        fit_report(path, None)
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
