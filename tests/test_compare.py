"""Paired comparisons: every number against an independent reference, and the command."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ttscale.compare import (
    CurveSide,
    compare_curves,
    compare_runs,
    equal_compute,
    paired_differences,
    sign_flip_p_values,
)
from ttscale.errors import ConfigError, DataError
from ttscale.strategies.offline import evaluate
from ttscale.types import Usage


def side(label: str, values: Any, tokens: Any = None, ks: Any = None) -> CurveSide:
    table = np.asarray(values, dtype=float)
    return CurveSide(
        label,
        np.asarray(ks if ks is not None else range(1, table.shape[1] + 1)),
        table,
        np.asarray(tokens, dtype=float) if tokens is not None else np.ones_like(table),
    )


def exact_sign_flip(d: list[float]) -> float:
    """Every sign pattern written out: the share with |mean| at least the observed one."""
    observed = abs(sum(d) / len(d))
    patterns = list(itertools.product((1, -1), repeat=len(d)))
    hits = sum(abs(sum(s * x for s, x in zip(signs, d, strict=True))) / len(d) >= observed - 1e-12
               for signs in patterns)  # fmt: skip
    return hits / len(patterns)


def test_paired_difference_by_hand() -> None:
    a = side("a", [[1.0], [0.0], [1.0], [1.0]])
    b = side("b", [[0.0], [0.0], [1.0], [0.0]])
    (row,), method = paired_differences(a, b, resamples=500, seed=3)
    # d = 1, 0, 0, 1: mean 1/2, sd sqrt(1/3), se sqrt(1/3) / 2; both nonzero signs must agree
    # for |mean| >= 1/2: 8 of the 16 patterns.
    assert (row.a, row.b, row.difference) == (0.75, 0.25, 0.5)
    assert row.se == pytest.approx(math.sqrt(1 / 3) / 2)
    assert row.p_value == 0.5 and "exact" in method
    index = np.random.default_rng(3).integers(0, 4, size=(500, 4))
    means = np.array([1.0, 0.0, 0.0, 1.0])[index].mean(axis=1)
    assert (row.low, row.high) == pytest.approx(
        (np.quantile(means, 0.025), np.quantile(means, 0.975))
    )
    # A resample of only the two zeros has P = 1/16 > 2.5%: the interval reaches 0, undecided.
    assert row.low == 0.0 and row.verdict == "no clear difference"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sign_flip_p_values_exact_and_sampled(seed: int) -> None:
    rng = np.random.default_rng(seed)
    small = rng.normal(0.1, 0.5, size=(9, 3))
    p, method = sign_flip_p_values(small)
    assert "all 2^9" in method
    assert p == pytest.approx([exact_sign_flip(list(small[:, j])) for j in range(3)])
    # 16 problems: sampled flips estimate the exact p (2^16 patterns) within their own error.
    large = rng.normal(0.15, 0.5, size=(16, 2))
    sampled, method = sign_flip_p_values(large, permutations=20_000, seed=seed)
    assert "20000 seeded random" in method
    for j in range(2):
        exact = exact_sign_flip(list(large[:, j]))
        assert abs(sampled[j] - exact) < 4 * math.sqrt(exact * (1 - exact) / 20_000) + 1e-4


def test_no_difference_is_not_significant_and_a_real_one_is() -> None:
    rng = np.random.default_rng(5)
    base = rng.random((60, 4))
    same = compare_curves(side("a", base), side("b", base), resamples=300)
    assert all(r.difference == 0 and r.p_value == 1.0 for r in same.by_k)
    assert all(r.verdict == "no clear difference" for r in same.by_k)
    better = np.clip(base + 0.2 + rng.normal(0, 0.05, base.shape), 0, 1)
    found = compare_curves(side("a", better), side("b", base), resamples=300)
    assert all(r.p_value < 1e-3 and r.verdict == "a ahead" for r in found.by_k)
    worse = compare_curves(side("a", base), side("b", better), resamples=300)
    assert all(r.verdict == "b ahead" for r in worse.by_k)


def test_equal_compute_interpolates_both_curves_at_the_same_tokens() -> None:
    # a spends 2 tokens a sample, b 1; accuracy 0.1 k for a and 0.05 k + 0.1 for b (each problem).
    ks = np.array([1, 2, 4, 8])
    problems = 5
    a = side("a", np.tile(0.1 * ks, (problems, 1)), np.tile(2.0 * ks, (problems, 1)), ks)
    b = side("b", np.tile(0.05 * ks + 0.1, (problems, 1)), np.tile(1.0 * ks, (problems, 1)), ks)
    rows = equal_compute(a, b, levels=[2.0, 4.0, 6.0, 8.0], resamples=50)
    # At T tokens a has drawn T/2 samples (0.05 T) and b T samples (0.05 T + 0.1), linear between.
    for row in rows:
        assert row.a == pytest.approx(0.05 * row.at)
        assert row.b == pytest.approx(0.05 * row.at + 0.1)
        assert row.difference == pytest.approx(-0.1)
        assert row.low == pytest.approx(-0.1) and row.high == pytest.approx(-0.1)  # no spread
        assert row.verdict == "b ahead"
    default = equal_compute(a, b, resamples=10)
    assert [row.at for row in default] == [2.0, 4.0, 8.0]  # both sides' points both reach
    with pytest.raises(ConfigError, match="same problems"):
        equal_compute(a, side("c", np.ones((3, 4))), resamples=10)


def test_sides_must_line_up() -> None:
    with pytest.raises(ConfigError, match="problems, ks"):
        CurveSide("x", np.array([1]), np.ones((2, 1)), np.ones((3, 1)))
    with pytest.raises(ConfigError, match="same problems and ks"):
        paired_differences(side("a", np.ones((2, 2))), side("b", np.ones((2, 3))))
    with pytest.raises(ConfigError, match="confidence"):
        compare_curves(side("a", np.ones((2, 2))), side("b", np.ones((2, 2))), confidence=1.0)


# -- two results files ---------------------------------------------------------------------------


def record(problem_id: str, answers: list[str], right: str, tokens: int) -> dict[str, Any]:
    samples = [
        {"text": a, "answer": a, "correct": a == right, "score": None, "completion_tokens": tokens}
        for a in answers
    ]
    usage = Usage(
        requests=len(answers),
        samples=len(answers),
        prompt_tokens=10 * len(answers),
        completion_tokens=tokens * len(answers),
    )
    return {
        "id": problem_id,
        "strategy": "majority",
        "samples": samples,
        "selected": [0],
        "n": len(answers),
        "num_correct": sum(a == right for a in answers),
        "usage": usage.to_dict(),
    }


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path, list[list[str]]]:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(30):
        p = rng.beta(2, 1.5)
        rows.append([("7" if rng.random() < p else str(rng.integers(1, 4))) for _ in range(8)])
    first = write(tmp_path / "a.jsonl", [record(f"q{i}", r, "7", 20) for i, r in enumerate(rows)])
    # b: a different run of the last 25 problems, every sample wrong half the time more often.
    other = [[a if rng.random() < 0.5 else "1" for a in r] for r in rows[5:]]
    second = write(
        tmp_path / "b.jsonl", [record(f"q{i + 5}", r, "7", 30) for i, r in enumerate(other)]
    )
    return first, second, rows


def test_compare_runs_pairs_shared_problems_and_matches_offline(
    runs: tuple[Path, Path, list[list[str]]],
) -> None:
    first, second, rows = runs
    comparison = compare_runs(first, second, ks=[1, 4, 8], resamples=400)
    assert comparison.problems == 25
    assert comparison.notes == ("25 shared problems compared (30 in a, 25 in b)",)
    shared = rows[5:]
    own = evaluate(
        shared, [[a == "7" for a in r] for r in shared], None, ["majority"], ks=[1, 4, 8]
    )
    assert [row.a for row in comparison.by_k] == pytest.approx(list(own.accuracy["majority"]))
    assert all(row.verdict == "a ahead" for row in comparison.by_k[1:])
    # Tokens per sample: a 10 + 20, b 10 + 30; majority draws k: equal compute sits at a's
    # 8 samples = 240 tokens against b's 6 samples there, and so on.
    assert comparison.by_tokens[0].at == pytest.approx(40.0)  # b's k = 1, a's k = 4/3
    same = compare_runs(first, first, strategies=["majority"], ks=[2, 8], resamples=100)
    assert all(r.difference == 0 and r.p_value == 1 for r in [*same.by_k, *same.by_tokens])


def test_two_strategies_on_one_runs_samples(runs: tuple[Path, Path, list[list[str]]]) -> None:
    first, _, _ = runs
    comparison = compare_runs(first, first, strategies=["majority", "adaptive"], resamples=200)
    k_one = comparison.by_k[0]
    assert k_one.at == 1 and k_one.difference == 0  # both take the first sample of each order
    assert comparison.a.endswith(":majority") and comparison.b.endswith(":adaptive")
    # Adaptive stops early, so at its cap it spends fewer tokens: its curve reaches fewer tokens.
    assert comparison.by_tokens[-1].at < 8 * 30
    with pytest.raises(ConfigError, match="no offline 'best_of_n'"):
        compare_runs(first, first, strategies=["best_of_n"])
    with pytest.raises(ConfigError, match="one strategy or two"):
        compare_runs(first, first, strategies=["majority", "adaptive", "ahead_by_k"])
    with pytest.raises(ConfigError, match=r"1\.\.8"):
        compare_runs(first, first, ks=[9])


def test_files_that_cannot_be_compared_say_why(tmp_path: Path) -> None:
    one = write(tmp_path / "one.jsonl", [record("x", ["1", "2"], "1", 5)])
    two = write(tmp_path / "two.jsonl", [record("y", ["1", "2"], "1", 5)])
    with pytest.raises(DataError, match="share no problem ids"):
        compare_runs(one, two)
    mixed = [record("x", ["1"], "1", 5), {**record("y", ["1"], "1", 5), "strategy": "best_of_n"}]
    with pytest.raises(DataError, match="several strategies"):
        compare_runs(write(tmp_path / "mixed.jsonl", mixed), one)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "ttscale.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
    )


def test_compare_command(runs: tuple[Path, Path, list[list[str]]], tmp_path: Path) -> None:
    first, second, _ = runs
    out = tmp_path / "cmp.json"
    done = cli("compare", str(first), str(second), "--k", "1", "--k", "8", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "a = a.jsonl:majority, b = b.jsonl:majority: 25 problems" in done.stdout
    assert "a - b at budget k" in done.stdout and "at equal mean tokens" in done.stdout
    saved = json.loads(out.read_text())
    assert [row["k"] for row in saved["by_k"]] == [1, 8]
    assert saved["by_k"][1]["verdict"] == "a ahead"
    assert f"{saved['by_k'][1]['difference']:+.4f}" in done.stdout
    refused = cli("compare", str(first), str(tmp_path / "missing.jsonl"))
    assert refused.returncode == 2 and "cannot read results" in " ".join(refused.stderr.split())
