"""benchmarks/deepconf_settings.py: the choice rule, the folds, the out-of-sample figure, and a run
on a synthetic bank whose held-out numbers are recomputed from its own per-problem output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from benchmark_script import BENCHMARKS, load
from synthetic_bank import write_gsm8k


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load("deepconf_settings")


def test_the_choice_saves_most_within_the_tolerance(script: ModuleType) -> None:
    saving = np.array([0.6, 0.45, 0.3, 0.45])
    difference = np.array([-0.10, -0.01, 0.02, 0.0])
    assert script.choose(saving, difference, 0.02) == 3  # ties on saving: the smaller loss
    assert script.choose(saving, difference, 0.0) == 3
    assert script.choose(saving, difference, 0.2) == 0  # control: a loose tolerance takes 0
    assert script.choose(saving, np.full(4, -0.5), 0.02) == -1


def test_folds_split_every_problem_once(script: ModuleType) -> None:
    parts = script.folds(17, 5, seed=3)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(17))
    assert sorted(len(p) for p in parts) == [3, 3, 3, 4, 4]
    assert [p.tolist() for p in script.folds(17, 5, seed=3)] == [p.tolist() for p in parts]
    assert [p.tolist() for p in script.folds(17, 5, seed=4)] != [p.tolist() for p in parts]


def _grid(script: ModuleType) -> object:
    """Ten problems: setting 0 halves the tokens but loses every problem majority gets right
    among problems 0-4; setting 1 saves 30% at majority's accuracy."""
    majority_accuracy = np.array([1.0] * 5 + [0.0] * 5)
    accuracy = np.stack([np.zeros(10), majority_accuracy.copy()])
    majority_tokens = np.full(10, 100.0)
    tokens = np.stack([np.full(10, 50.0), np.full(10, 70.0)])
    return script.Grid(("a", "b"), accuracy, tokens, majority_accuracy, majority_tokens)


def test_out_of_sample_problems_get_the_setting_chosen_without_them(script: ModuleType) -> None:
    grid = _grid(script)
    held = script.cross_validated(grid, 5, 0.02, seed=0)
    assert held["chosen"] == [1] * 5
    assert held["tokens"].tolist() == [70.0] * 10
    assert held["accuracy"].tolist() == grid.majority_accuracy.tolist()  # type: ignore[attr-defined]
    loose = script.cross_validated(grid, 5, 1.0, seed=0)  # control: the lossy setting wins
    assert loose["chosen"] == [0] * 5 and loose["accuracy"].sum() == 0


def test_a_fold_with_no_qualifying_setting_falls_back_to_majority(script: ModuleType) -> None:
    grid = _grid(script)
    bad = script.Grid(
        ("a",),
        np.zeros((1, 10)),
        np.full((1, 10), 10.0),
        grid.majority_accuracy,  # type: ignore[attr-defined]
        grid.majority_tokens,  # type: ignore[attr-defined]
    )
    held = script.cross_validated(bad, 2, 0.02, seed=0)
    assert held["chosen"] == [None, None]
    assert held["tokens"].tolist() == [100.0] * 10


def test_the_frontier_keeps_only_settings_nothing_beats_on_both(script: ModuleType) -> None:
    saving = np.array([0.5, 0.4, 0.3, 0.4, 0.1])
    difference = np.array([-0.1, 0.0, 0.0, -0.05, 0.05])
    assert script.frontier(saving, difference) == [0, 1, 4]


def test_a_run_on_a_bank_reports_what_its_per_problem_figures_give(tmp_path: Path) -> None:
    write_gsm8k(tmp_path / "gsm8k", problems=10)
    out = tmp_path / "settings.json"
    command = [
        sys.executable,
        str(BENCHMARKS / "deepconf_settings.py"),
        "--bank",
        str(tmp_path),
        "--out",
        str(out),
        "--orders",
        "3",
        "--folds",
        "5",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    per = report["per_problem"]
    tokens, accuracy = np.array(per["tokens"]), np.array(per["accuracy"])
    majority_tokens = np.array(per["majority_tokens"])
    majority_accuracy = np.array(per["majority_accuracy"])
    assert report["problems"] == 10 and tokens.shape == (120, 10)
    # Majority@16 of the synthetic bank, where three problems in four have a right majority.
    assert 0.4 <= majority_accuracy.mean() <= 1.0
    for entry, row_tokens, row_accuracy in zip(report["settings"], tokens, accuracy, strict=True):
        assert entry["saving"] == pytest.approx(1 - row_tokens.sum() / majority_tokens.sum())
        assert entry["difference"] == pytest.approx(row_accuracy.mean() - majority_accuracy.mean())
    # The held-out figures, rebuilt: each fold's problems under the setting named for that fold,
    # at the main tolerance and at each other one.
    names = [entry["setting"] for entry in report["settings"]]
    parts = np.array_split(np.random.default_rng(0).permutation(10), 5)
    held_outs = [report["cross_validated"], *report["sensitivity"]]
    assert [h["tolerance"] for h in held_outs] == [0.02, 0.0, 0.05, 0.10]
    for held in held_outs:
        held_tokens, held_accuracy = np.empty(10), np.empty(10)
        for part, setting in zip(parts, held["chosen"], strict=True):
            row = names.index(setting) if setting is not None else None
            held_tokens[part] = majority_tokens[part] if row is None else tokens[row, part]
            held_accuracy[part] = majority_accuracy[part] if row is None else accuracy[row, part]
        assert held["saving"] == pytest.approx(1 - held_tokens.sum() / majority_tokens.sum())
        assert held["difference"] == pytest.approx((held_accuracy - majority_accuracy).mean())
        low, high = held["saving_ci"]
        assert low <= held["saving"] <= high
    assert "held out: saving" in done.stdout and "tolerance 10%" in done.stdout
