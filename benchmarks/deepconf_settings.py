"""Which DeepConf settings pay on the bank's GSM8K samples: a grid, and a choice made out of sample.

Online DeepConf has four knobs: the window of its group confidence, eta (the share of warm-up
traces whose lowest group sets the threshold: 90% keeps most, 10% is DeepConf-low), the warm-up
size and the consensus at which drawing stops. This replays every setting of a grid over the
bank's stored samples (``strategies.deepconf.evaluate_deepconf``: the same seeded draw orders for
every setting and for majority@16, so all comparisons are paired) and reports:

1. every setting's completion-token saving against majority@16 and its accuracy difference,
   with the settings no other beats on both (the frontier);
2. the honest figure: a setting chosen by K-fold cross-validation over problems. On each fold's
   training problems the rule picks the setting that saves the most tokens while its accuracy is
   at most ``--tolerance`` below majority@16's there; the held-out problems are then scored under
   that setting. Every problem is scored by a setting chosen without it, so the saving and the
   paired accuracy difference (95% bootstrap CIs over problems) are not flattered by the choice.
   The same is reported at other tolerances (0%, 5%, 10%), to show how much the figure rests on
   that one knob of the procedure. (The intervals resample the held-out outcomes; they do not
   redo the choice in each resample, so they are a little narrower than the whole procedure's.)

The goal (issue: confidence without a reward model) is >= 40% fewer completion tokens than
majority@16 at an accuracy not significantly lower (the paired difference's interval reaches 0).

Traces are built by the library's own path (``BankSample.candidate`` and ``StoredTrace.of``:
DeepConf's token confidence from the stored top-5 logprobs). Answers vote by their canonical
form (``normalize_answer``), and an answer is right when a sample giving it was judged right by
the math verifier (the bank's stored verdicts).

    python benchmarks/deepconf_settings.py                 # the bank of this checkout
    python benchmarks/deepconf_settings.py --bank DIR --folds 5 --orders 10 --tolerance 0.02

Writes ``benchmarks/out/deepconf_settings.json`` (every setting's per-problem figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ttscale.bank import load_bank_set
from ttscale.estimators import bootstrap_ci
from ttscale.strategies.deepconf import (
    DeepConfConfig,
    StoredTrace,
    evaluate_deepconf,
    evaluate_majority,
)
from ttscale.strategies.extract import normalize_answer

logger = logging.getLogger("deepconf_settings")

SAMPLES = 16
GOAL_SAVING = 0.40
WINDOWS = (8, 16, 32, 64)
ETAS = (0.1, 0.3, 0.5, 0.7, 0.9)
WARMUPS = (2, 4, 8)
CONSENSUS = (0.8, 0.95)
SENSITIVITY = (0.0, 0.05, 0.10)  # other tolerances the choice is tried at

FloatArray = npt.NDArray[np.float64]


@dataclasses.dataclass(frozen=True)
class Grid:
    """Per setting and problem: expected accuracy and completion tokens, beside majority@16's."""

    settings: tuple[DeepConfConfig, ...]
    accuracy: FloatArray  # (settings, problems)
    tokens: FloatArray  # (settings, problems)
    majority_accuracy: FloatArray  # (problems,)
    majority_tokens: FloatArray  # (problems,)

    def saving(self, rows: npt.ArrayLike) -> FloatArray:
        """Each setting's token saving against majority@16 over the problems ``rows``."""
        index = np.asarray(rows)
        spent: FloatArray = self.tokens[:, index].sum(axis=1)
        return np.asarray(1.0 - spent / self.majority_tokens[index].sum(), dtype=np.float64)

    def difference(self, rows: npt.ArrayLike) -> FloatArray:
        """Each setting's mean accuracy minus majority@16's over the problems ``rows``."""
        index = np.asarray(rows)
        return np.asarray(
            self.accuracy[:, index].mean(axis=1) - self.majority_accuracy[index].mean(),
            dtype=np.float64,
        )


def grid_settings() -> tuple[DeepConfConfig, ...]:
    return tuple(
        DeepConfConfig(
            samples=SAMPLES,
            mode="online",
            window=window,
            eta=eta,
            warmup=warmup,
            batch_size=4,
            consensus=consensus,
        )
        for window, eta, warmup, consensus in itertools.product(WINDOWS, ETAS, WARMUPS, CONSENSUS)
    )


def choose(saving: FloatArray, difference: FloatArray, tolerance: float) -> int:
    """The setting that saves most while its accuracy is at most ``tolerance`` below majority's;
    ties go to the smaller accuracy loss, then to the first. -1 when none qualifies."""
    allowed = np.flatnonzero(difference >= -tolerance - 1e-12)
    if allowed.size == 0:
        return -1
    order = sorted(allowed.tolist(), key=lambda i: (-saving[i], -difference[i], i))
    return int(order[0])


def folds(problems: int, count: int, seed: int) -> list[npt.NDArray[np.int64]]:
    """The problems' indices shuffled (seeded) and split into ``count`` near-equal folds."""
    order = np.random.default_rng(seed).permutation(problems)
    return [np.sort(part) for part in np.array_split(order, count)]


def cross_validated(grid: Grid, count: int, tolerance: float, seed: int) -> dict[str, Any]:
    """Each fold's choice from its training problems, and every problem's held-out outcome."""
    problems = grid.majority_accuracy.size
    accuracy = np.empty(problems)
    tokens = np.empty(problems)
    chosen = []
    for held_out in folds(problems, count, seed):
        training = np.setdiff1d(np.arange(problems), held_out)
        pick = choose(grid.saving(training), grid.difference(training), tolerance)
        if pick < 0:  # nothing qualifies: majority@16 itself, which saves nothing
            accuracy[held_out] = grid.majority_accuracy[held_out]
            tokens[held_out] = grid.majority_tokens[held_out]
            chosen.append(None)
            continue
        accuracy[held_out] = grid.accuracy[pick, held_out]
        tokens[held_out] = grid.tokens[pick, held_out]
        chosen.append(pick)
    return {"accuracy": accuracy, "tokens": tokens, "chosen": chosen}


def frontier(saving: FloatArray, difference: FloatArray) -> list[int]:
    """Settings no other beats on both saving and accuracy difference, by saving."""
    keep = [
        i
        for i in range(saving.size)
        if not np.any(
            (saving >= saving[i])
            & (difference >= difference[i])
            & ((saving > saving[i]) | (difference > difference[i]))
        )
    ]
    return sorted(keep, key=lambda i: -saving[i])


def read_bank(root: Path | None) -> tuple[list[str], list[list[StoredTrace]], list[Any]]:
    """The bank's complete, judged GSM8K problems: their first 32 traces and a grader each."""
    bank = load_bank_set("gsm8k", root)
    problems, traces, graders = [], [], []
    for problem in bank.problems:
        row = bank.samples[problem][: 2 * SAMPLES]
        if len(row) < 2 * SAMPLES or any(s.correct is None for s in row):
            continue
        problems.append(problem)
        traces.append([StoredTrace.of(s.candidate(), answer_key(s.answer)) for s in row])
        right = {answer_key(s.answer) for s in row if s.correct} - {None}
        graders.append(right.__contains__)
    return problems, traces, graders


def answer_key(answer: str | None) -> str | None:
    """Votes group by the answer's canonical form ("$18", "18.00" and "18" are one answer)."""
    return None if answer is None or not answer.strip() else normalize_answer(answer)


def measure(
    traces: Sequence[Sequence[StoredTrace]],
    graders: Sequence[Callable[[str | None], bool]],
    orders: int,
    seed: int,
) -> Grid:
    settings = grid_settings()
    base = evaluate_majority(traces, graders, SAMPLES, orders=orders, seed=seed)
    accuracy, tokens = [], []
    for setting in settings:
        result = evaluate_deepconf(traces, graders, setting, orders=orders, seed=seed)
        accuracy.append(result.per_problem_accuracy)
        tokens.append(result.per_problem_tokens)
    return Grid(
        settings,
        np.array(accuracy),
        np.array(tokens),
        np.array(base.per_problem_accuracy),
        np.array(base.per_problem_tokens),
    )


def interval(
    values: FloatArray, statistic: Callable[[FloatArray], FloatArray] | None = None
) -> tuple[float, float]:
    """The 95% percentile bootstrap interval over problems (2,000 resamples, seed 0)."""
    low, high = bootstrap_ci(values, statistic=statistic, n_resamples=2000, seed=0)
    return float(low), float(high)


def saving_of(pairs: FloatArray) -> FloatArray:
    """1 - sum(tokens) / sum(majority's tokens) of each resample: ``pairs`` is (R, P, 2)."""
    sums = pairs.sum(axis=1)
    return np.asarray(1.0 - sums[:, 0] / sums[:, 1], dtype=np.float64)


def name(setting: DeepConfConfig) -> str:
    return (
        f"window {setting.window:>2}, eta {setting.eta:.0%}, warm-up {setting.warmup}, "
        f"consensus {setting.consensus:.2f}"
    )


def held_out(grid: Grid, folds_count: int, tolerance: float, seed: int) -> dict[str, Any]:
    """The cross-validated choice at one tolerance: its held-out figures with their CIs."""
    held = cross_validated(grid, folds_count, tolerance, seed)
    paired = held["accuracy"] - grid.majority_accuracy
    pairs = np.stack([held["tokens"], grid.majority_tokens], axis=1)
    saving = float(saving_of(pairs[None])[0])
    difference_ci = interval(paired)
    return {
        "folds": folds_count,
        "tolerance": tolerance,
        "chosen": [None if c is None else name(grid.settings[c]) for c in held["chosen"]],
        "accuracy": float(held["accuracy"].mean()),
        "accuracy_ci": interval(held["accuracy"]),
        "difference": float(paired.mean()),
        "difference_ci": difference_ci,
        "saving": saving,
        "saving_ci": interval(pairs, saving_of),
        "goal_met": bool(saving >= GOAL_SAVING and difference_ci[1] >= 0),
    }


def summarise(grid: Grid, args: argparse.Namespace) -> dict[str, Any]:
    everyone = np.arange(grid.majority_accuracy.size)
    saving, difference = grid.saving(everyone), grid.difference(everyone)
    return {
        "problems": int(everyone.size),
        "majority_accuracy": float(grid.majority_accuracy.mean()),
        "majority_accuracy_ci": interval(grid.majority_accuracy),
        "settings": [
            {"setting": name(s), "saving": float(saving[i]), "difference": float(difference[i])}
            for i, s in enumerate(grid.settings)
        ],
        "frontier": [name(grid.settings[i]) for i in frontier(saving, difference)],
        "cross_validated": held_out(grid, args.folds, args.tolerance, args.seed),
        "sensitivity": [
            held_out(grid, args.folds, tolerance, args.seed) for tolerance in SENSITIVITY
        ],
    }


def report(grid: Grid, summary: dict[str, Any]) -> None:
    everyone = np.arange(grid.majority_accuracy.size)
    saving, difference = grid.saving(everyone), grid.difference(everyone)
    low, high = summary["majority_accuracy_ci"]
    print(
        f"{summary['problems']} GSM8K problems of the bank, majority@{SAMPLES} accuracy "
        f"{summary['majority_accuracy']:.1%} [{low:.1%}, {high:.1%}]; "
        f"{len(grid.settings)} settings"
    )
    print("\nthe frontier (in sample: no setting saves more at an accuracy as good):")
    print(f"{'setting':<52}{'saving':>8}{'accuracy - majority':>22}")
    for i in frontier(saving, difference):
        print(f"{name(grid.settings[i]):<52}{saving[i]:>8.1%}{difference[i]:>+22.1%}")
    held = summary["cross_validated"]
    print(
        f"\nchosen by {held['folds']}-fold cross-validation (tolerance "
        f"{held['tolerance']:.0%} below majority on the training problems):"
    )
    for fold, chosen in enumerate(held["chosen"]):
        print(f"  fold {fold}: {chosen or 'none qualifies: majority@16'}")
    slow, shigh = held["saving_ci"]
    dlow, dhigh = held["difference_ci"]
    print(
        f"held out: saving {held['saving']:.1%} [{slow:.1%}, {shigh:.1%}], accuracy "
        f"{held['accuracy']:.1%}, paired difference {held['difference']:+.1%} "
        f"[{dlow:+.1%}, {dhigh:+.1%}]"
    )
    print(
        f"goal (>= {GOAL_SAVING:.0%} fewer tokens, accuracy not significantly lower): "
        f"{'met' if held['goal_met'] else 'not met'}"
    )
    print("\nthe same at other tolerances:")
    for other in summary["sensitivity"]:
        dlow, dhigh = other["difference_ci"]
        print(
            f"  tolerance {other['tolerance']:.0%}: saving {other['saving']:.1%}, paired "
            f"difference {other['difference']:+.1%} [{dlow:+.1%}, {dhigh:+.1%}]; goal "
            f"{'met' if other['goal_met'] else 'not met'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=Path, help="a bank folder (default: this checkout's)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--orders", type=int, default=10, help="draw orders per problem")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/deepconf_settings.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    problems, traces, graders = read_bank(args.bank)
    if len(problems) < args.folds:
        parser.error(f"the bank holds {len(problems)} complete GSM8K problems: fewer than folds")
    grid = measure(traces, graders, args.orders, args.seed)
    summary = summarise(grid, args)
    report(grid, summary)
    summary["problems_ids"] = problems
    summary["per_problem"] = {
        "majority_accuracy": grid.majority_accuracy.tolist(),
        "majority_tokens": grid.majority_tokens.tolist(),
        "accuracy": grid.accuracy.tolist(),
        "tokens": grid.tokens.tolist(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {args.out} ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
