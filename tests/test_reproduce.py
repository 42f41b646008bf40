"""benchmarks/reproduce.py: its report's numbers, each recomputed a second, independent way.

The script runs once (a real subprocess) on the committed slice of the bank
(``tests/data/bank_slice``: six HumanEval problems x 16 samples with their logprobs and verdicts)
beside a synthetic GSM8K set of the bank's format (written here, seeded), and the tests recompute
its figures from the same files by other routes: pass@k by binomial coefficients written out, the
power law by a direct least squares, the Beta fit by scipy's beta-binomial, best-of-N by
enumerating subsets with scores from the ``confidence`` verifier, soundness by counting, K_opt by
brute force, the early-stopping rules and first-to-ahead-by-k by plain simulation, DeepConf by a
second replay of the same orders.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from benchmark_script import load
from synthetic_bank import write_gsm8k

from ttscale.bank import BankSample, BankSet, load_bank_set
from ttscale.verifiers.confidence import ConfidenceVerifier

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "reproduce.py"
SLICE = Path(__file__).resolve().parent / "data" / "bank_slice"
VERDICTS = {
    "reproduced",
    "not reproduced",
    "not testable at 0.5B",
    "inconclusive",
}

scipy = pytest.importorskip("scipy", reason="pip install 'ttscale[laws]'")
pytest.importorskip("matplotlib", reason="pip install matplotlib")


def _script() -> ModuleType:
    return load("reproduce")


@pytest.fixture(scope="module", params=["synthetic", "real"])
def run(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> tuple[Path, Path, dict[str, Any]]:
    """The bank, the report folder, and report.json: the HumanEval slice beside either a
    synthetic GSM8K set (12 problems built to exercise every claim) or the slice's four real
    GSM8K problems (right on 0, 10, 20 and 17 of their 32 samples)."""
    root = tmp_path_factory.mktemp("bank")
    shutil.copy(SLICE / "manifest.json", root)  # the loader checks the parts against it
    shutil.copytree(SLICE / "humaneval", root / "humaneval")
    if request.param == "synthetic":
        write_gsm8k(root / "gsm8k")
    else:
        shutil.copytree(SLICE / "gsm8k", root / "gsm8k")
    out = root / "report"
    command = [
        sys.executable,
        str(SCRIPT),
        "--bank",
        str(root),
        "--out",
        str(out),
        "--min-problems",
        "3",
        "--resamples",
        "200",
        "--fit-resamples",
        "20",
        "--subsets",
        "200",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return root, out, json.loads((out / "report.json").read_text(encoding="utf-8"))


def finding(report: dict[str, Any], claim: str, dataset: str) -> dict[str, Any]:
    (found,) = [f for f in report["findings"] if f["claim"] == claim and f["dataset"] == dataset]
    entry: dict[str, Any] = dict(found)
    entry["n"] = found["numbers"]
    return entry


def counts(bank: BankSet, name: str = "correct") -> list[list[bool]]:
    return [[bool(getattr(s, name)) for s in bank.samples[p]] for p in bank.problems]


# -- the run ---------------------------------------------------------------------------------


def test_the_report_names_every_claim_with_a_verdict_and_its_figure(
    run: tuple[Path, Path, dict[str, Any]],
) -> None:
    root, out, report = run
    text = (out / "report.md").read_text(encoding="utf-8")
    claims = {(f["claim"], f["dataset"]) for f in report["findings"]}
    assert ("Large Language Monkeys", "humaneval") in claims
    assert {("MAKER", "gsm8k"), ("DeepConf", "gsm8k"), ("ESC", "gsm8k")} <= claims
    gsm8k = len(load_bank_set("gsm8k", root).problems)
    assert gsm8k in (4, 12)
    assert report["problems"] == {"humaneval": 6, "gsm8k": gsm8k}
    assert "Provisional: 6 of its 164 problems are in the bank so far." in text
    for f in report["findings"]:
        assert f["verdict"] in VERDICTS, f
        assert f"| {f['claim']} | {f['dataset']} | **{f['verdict']}** |" in text
        if f["figure"]:
            assert (out / f["figure"]).stat().st_size > 5000
            assert f"]({f['figure']})" in text


def test_too_few_problems_say_insufficient_data(run: tuple[Path, Path, dict[str, Any]]) -> None:
    root, out, _ = run
    module = _script()
    sets = {name: module.read_votes(name, root) for name in ("humaneval", "gsm8k")}
    strict = module.run_claims(sets, module.Settings(min_problems=13), out / "strict")
    verdicts = {(f.claim, f.dataset): f.verdict for f in strict}
    assert verdicts[("Large Language Monkeys", "humaneval")] == (
        "insufficient data: 6 problems so far, needs 13"
    )
    gsm8k = len(load_bank_set("gsm8k", root).problems)
    assert verdicts[("DeepConf", "gsm8k")] == (
        f"insufficient data: {gsm8k} problems so far, needs 13"
    )
    assert len(strict) == len(run[2]["findings"])
    # The control is the run itself: the same sets, with a bar of 3 problems, are all judged.
    assert all(f["verdict"] in VERDICTS for f in run[2]["findings"])


def test_data_a_claim_cannot_be_tested_on_says_why(run: tuple[Path, Path, dict[str, Any]]) -> None:
    root, out, _ = run
    module = _script()
    votes = module.read_votes("humaneval", root)
    solved = dataclasses.replace(votes, correct=np.ones_like(votes.correct))
    found = module.run_claims({"humaneval": solved}, module.Settings(min_problems=3), out / "x")
    (monkeys,) = [f for f in found if f.claim == "Large Language Monkeys"]
    assert (
        monkeys.verdict.startswith("insufficient data: ") and "between 0 and 1" in monkeys.verdict
    )
    # Control: the data as drawn is judged.
    assert finding(run[2], "Large Language Monkeys", "humaneval")["verdict"] in VERDICTS


# -- Large Language Monkeys ------------------------------------------------------------------


def test_coverage_is_pass_at_k_by_binomial_coefficients(
    run: tuple[Path, Path, dict[str, Any]],
) -> None:
    root, _, report = run
    numbers = finding(report, "Large Language Monkeys", "humaneval")["n"]
    rows = counts(load_bank_set("humaneval", root))
    for k in (1, 2, 5, 16):
        by_hand = [1 - math.comb(16 - sum(r), k) / math.comb(16, k) for r in rows]
        assert numbers["coverage"][k - 1] == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-12)
    assert numbers["coverage_low"][0] <= numbers["coverage"][0] <= numbers["coverage_high"][0]


def test_the_power_law_matches_a_direct_least_squares(
    run: tuple[Path, Path, dict[str, Any]],
) -> None:
    root, _, report = run
    numbers = finding(report, "Large Language Monkeys", "humaneval")["n"]
    rows = counts(load_bank_set("humaneval", root))
    ks = np.arange(1, 17)  # 40 log-spaced k in 1..16 are every k
    observed = np.array(
        [np.mean([1 - math.comb(16 - sum(r), k) / math.comb(16, k) for r in rows]) for k in ks]
    )

    def squares(params: np.ndarray) -> float:
        a, b = params
        return float(((np.exp(a * ks**b) - observed) ** 2).sum())

    best = scipy.optimize.minimize(squares, x0=[-0.5, -0.5], method="Nelder-Mead", tol=1e-14)
    reported = np.array([numbers["power"]["a"], numbers["power"]["b"]])
    assert squares(reported) <= best.fun + 1e-7
    assert reported == pytest.approx(best.x, abs=2e-3)
    gaps = np.abs(observed - np.exp(reported[0] * ks ** reported[1]))
    assert numbers["power"]["fit_error"]["mean"] == pytest.approx(gaps.mean(), abs=1e-9)


def test_the_beta_fit_matches_scipys_beta_binomial(run: tuple[Path, Path, dict[str, Any]]) -> None:
    root, _, report = run
    numbers = finding(report, "Large Language Monkeys", "humaneval")["n"]
    c = np.array([sum(r) for r in counts(load_bank_set("humaneval", root))])

    def minus_log_likelihood(log_params: np.ndarray) -> float:
        alpha, beta = np.exp(log_params)
        return float(-scipy.stats.betabinom.logpmf(c, 16, alpha, beta).sum())

    best = scipy.optimize.minimize(
        minus_log_likelihood, x0=[0.0, 0.0], method="Nelder-Mead", tol=1e-12
    )
    reported = np.log([numbers["beta"]["alpha"], numbers["beta"]["beta"]])
    assert minus_log_likelihood(reported) <= best.fun + 1e-6
    assert np.exp(reported) == pytest.approx(np.exp(best.x), rel=2e-2)


# -- Best-of-Majority ------------------------------------------------------------------------


def test_best_of_n_matches_enumerated_subsets_scored_by_the_confidence_verifier(
    run: tuple[Path, Path, dict[str, Any]],
) -> None:
    root, _, report = run
    numbers = finding(report, "Best-of-Majority", "humaneval")["n"]
    bank = load_bank_set("humaneval", root)
    verifier = ConfidenceVerifier(measure="bottom", window=32)
    accuracy = {1: [], 2: [], 3: [], 4: [], 16: []}  # type: dict[int, list[float]]
    for problem in bank.problems:
        samples = bank.samples[problem]
        scores = [verifier.score_one(s.candidate()).value for s in samples]
        for k, values in accuracy.items():
            hits = []
            for subset in itertools.combinations(range(16), k):
                best = max(scores[i] for i in subset)
                tied = [i for i in subset if scores[i] == best]  # ties: a uniform pick
                hits.append(sum(bool(samples[i].correct) for i in tied) / len(tied))
            values.append(sum(hits) / len(hits))
    for k, values in accuracy.items():
        assert numbers["best_of_n"]["accuracy"][k - 1] == pytest.approx(np.mean(values), abs=1e-9)
    # Degrading is judged from N = 4, fixed in advance, not from the curve's own peak.
    drop = numbers["best_of_n"]["drop_from_reference"][0]
    assert drop == pytest.approx(np.mean(accuracy[16]) - np.mean(accuracy[4]), abs=1e-9)


def test_the_reward_is_the_confidence_verifiers_score(
    run: tuple[Path, Path, dict[str, Any]],
) -> None:
    root, _, _ = run
    module = _script()
    votes = module.read_votes("humaneval", root)
    bank = load_bank_set("humaneval", root)
    verifier = ConfidenceVerifier(measure="bottom", window=32)
    for row, problem in enumerate(bank.problems):
        scores = [verifier.score_one(s.candidate()).value for s in bank.samples[problem]]
        assert votes.confidence[row].tolist() == pytest.approx(scores, rel=1e-12)
        # Control: another window gives other scores, so the comparison can fail.
        other = ConfidenceVerifier(measure="bottom", window=8)
        assert votes.confidence[row].tolist() != pytest.approx(
            [other.score_one(s.candidate()).value for s in bank.samples[problem]], rel=1e-12
        )


def test_majority_at_n_matches_counting_the_votes(run: tuple[Path, Path, dict[str, Any]]) -> None:
    root, _, report = run
    numbers = finding(report, "Best-of-Majority", "gsm8k")["n"]
    bank = load_bank_set("gsm8k", root)
    values = []
    for problem in bank.problems:
        samples = bank.samples[problem]
        tally = Counter(s.answer for s in samples if s.answer is not None)
        top = max(tally.values())
        leaders = [a for a, count in tally.items() if count == top]
        right = {s.answer for s in samples if s.correct}
        values.append(sum(a in right for a in leaders) / len(leaders))
    # Ties between equal groups are broken by draw order: the report averages 200 random orders.
    assert numbers["majority"]["accuracy"][-1] == pytest.approx(np.mean(values), abs=0.02)


# -- Adaptive-Consistency, ESC, DeepConf -----------------------------------------------------


@functools.cache
def _beta_above_half(a: int, b: int) -> float:
    """P(p > 1/2) for p ~ Beta(a + 1, b + 1), by scipy."""
    return float(scipy.stats.beta.sf(0.5, a + 1, b + 1))


def _early_stop(answers: list[str | None], rule: str, cap: int) -> tuple[int, str | None]:
    """Samples drawn and the majority answer (ties to the earliest) under one stopping rule."""
    for taken in range(1, cap + 1):
        drawn = answers[:taken]
        tally = Counter(a for a in drawn if a is not None)
        if rule == "esc":
            window = drawn[-5:]
            stop = taken % 5 == 0 and None not in window and len(set(window)) == 1
        else:
            a, b = [*sorted(tally.values(), reverse=True), 0, 0][:2]
            stop = a > 0 and _beta_above_half(a, b) >= 0.95 - 1e-12
        if stop or taken == cap:
            if not tally:
                return taken, None
            top = max(tally.values())
            return taken, next(a for a in drawn if a is not None and tally[a] == top)
    raise AssertionError("unreachable")


def test_adaptive_and_esc_savings_match_a_plain_simulation(
    run: tuple[Path, Path, dict[str, Any]],
) -> None:
    root, _, report = run
    numbers = finding(report, "ESC", "gsm8k")["n"]
    bank = load_bank_set("gsm8k", root)
    rng = random.Random(3)
    for rule, name in (("esc", "esc"), ("beta", "adaptive")):
        used, right = [], []
        for problem in bank.problems:
            samples = bank.samples[problem]
            good = {s.answer for s in samples if s.correct}
            for _ in range(200):
                order = rng.sample(samples, 32)
                taken, answer = _early_stop([s.answer for s in order], rule, 16)
                used.append(taken)
                right.append(answer in good)
        assert numbers[name]["saved"][0] == pytest.approx(1 - np.mean(used) / 16, abs=0.02)
        assert numbers[name]["accuracy"][0] == pytest.approx(np.mean(right), abs=0.03)


def _lowest_group(values: np.ndarray, window: int) -> float:
    if values.size <= window:
        return float(values.mean())
    return float(np.convolve(values, np.ones(window) / window, mode="valid").min())


def _stop_at(values: np.ndarray, window: int, threshold: float) -> int | None:
    if values.size < window:
        return None
    below = np.flatnonzero(np.convolve(values, np.ones(window) / window, "valid") < threshold)
    return int(below[0]) + window if below.size else None


@pytest.mark.parametrize(
    ("claim", "key", "eta"), [("DeepConf", "deepconf", 0.9), ("DeepConf-low", "deepconf_low", 0.1)]
)
def test_deepconf_tokens_match_a_second_replay_of_the_same_orders(
    run: tuple[Path, Path, dict[str, Any]], claim: str, key: str, eta: float
) -> None:
    root, _, report = run
    deep = finding(report, claim, "gsm8k")["n"][key]
    bank = load_bank_set("gsm8k", root)
    window, warmup = 16, 4
    orders = report["settings"]["deepconf_orders"]
    rng = random.Random(0)  # the report's seed; orders drawn problem by problem
    tokens, right = [], []
    for problem in bank.problems:
        samples = bank.samples[problem]
        good = {s.answer for s in samples if s.correct}
        confidences = [-np.nanmean(s.top.astype(np.float64), axis=1) for s in samples]
        spent, hits = 0.0, 0
        for _ in range(orders):
            order = rng.sample(range(32), 16)
            lows = [_lowest_group(confidences[i], window) for i in order[:warmup]]
            threshold = float(np.percentile(lows, 100 * (1 - eta)))
            ballots = []  # (answer or None when it does not vote, weight)
            for i, low in zip(order[:warmup], lows, strict=True):
                votes = samples[i].answer is not None and low >= threshold
                ballots.append((samples[i].answer if votes else None, low))
            used = sum(samples[i].completion_tokens for i in order[:warmup])
            drawn = warmup
            while not _consensus(ballots) and drawn < 16:
                for i in order[drawn : drawn + 4]:
                    cut = _stop_at(confidences[i], window, threshold)
                    if cut is not None:
                        used += cut
                        ballots.append((None, 0.0))
                        continue
                    used += samples[i].completion_tokens
                    low = _lowest_group(confidences[i], window)
                    votes = samples[i].answer is not None and low >= threshold
                    ballots.append((samples[i].answer if votes else None, low))
                drawn += 4
            spent += used
            hits += _weighted_winner(ballots) in good
        tokens.append(spent / orders)
        right.append(hits / orders)
    assert deep["per_problem_tokens"] == pytest.approx(tokens, rel=1e-9)
    assert deep["per_problem_accuracy"] == pytest.approx(right, abs=1e-12)
    mean_tokens = np.mean([[s.completion_tokens for s in bank.samples[p]] for p in bank.problems])
    assert deep["majority_tokens"] == pytest.approx(16 * mean_tokens, rel=1e-12)
    # The paired difference's mean is the difference of the means.
    majority = finding(report, claim, "gsm8k")["n"]["majority@16"][0]
    assert deep["difference"][0] == pytest.approx(np.mean(right) - majority, abs=1e-12)


def _totals(ballots: list[tuple[str | None, float]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for answer, weight in ballots:
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + weight
    return totals


def _consensus(ballots: list[tuple[str | None, float]]) -> bool:
    """Two or more voting traces, the top answer holding 95% of the vote weight."""
    totals = _totals(ballots)
    voters = sum(answer is not None for answer, _ in ballots)
    whole = sum(totals.values())
    return voters >= 2 and whole > 0 and max(totals.values()) / whole >= 0.95


def _weighted_winner(ballots: list[tuple[str | None, float]]) -> str | None:
    """The heaviest answer; equal weights go to the answer voted first."""
    totals = _totals(ballots)
    if not totals:
        return None  # nobody voted (the strategy then falls back to plain majority)
    best = max(totals.values())
    return next(a for a, _ in ballots if a is not None and totals[a] == best)


# -- fLaws -----------------------------------------------------------------------------------


def test_soundness_and_k_opt_match_counting_and_brute_force(
    run: tuple[Path, Path, dict[str, Any]],
) -> None:
    root, _, report = run
    numbers = finding(report, "Inference Scaling fLaws", "humaneval")["n"]
    bank = load_bank_set("humaneval", root)
    weak, full = counts(bank, "correct_weak"), counts(bank, "correct")
    pairs = [(w, f) for wr, fr in zip(weak, full, strict=True) for w, f in zip(wr, fr, strict=True)]
    false_positives = sum(w and not f for w, f in pairs)
    assert numbers["false_positive_rate"][0] == false_positives / sum(not f for _, f in pairs)
    assert numbers["ceiling"][0] == sum(w and f for w, f in pairs) / sum(w for w, _ in pairs)
    rows = list(zip(weak, full, strict=True))
    c = [sum(w and g for w, g in zip(wr, fr, strict=True)) / 16 for wr, fr in rows]
    f = [sum(w and not g for w, g in zip(wr, fr, strict=True)) / 16 for wr, fr in rows]
    for cost in (0.0, -0.25, -1.0, -4.0):

        def reward(k: int, cost: float = cost) -> float:
            values = [
                (1 - (1 - (ci + fi)) ** k) * (ci + cost * fi) / (ci + fi) if ci + fi else 0.0
                for ci, fi in zip(c, f, strict=True)
            ]
            return sum(values) / len(values)

        rewards = [reward(k) for k in range(1001)]
        best = max(rewards)
        k_opt = next(k for k, r in enumerate(rewards) if r >= best - 1e-12 * max(1.0, abs(best)))
        entry = numbers["costs"][str(cost)]
        # A K_opt only where the reward falls after its best k; none where it rises to k = 1000.
        assert entry["k_opt"] == (k_opt if rewards[k_opt] - rewards[-1] > 1e-9 else None)
        assert entry["saturation_k"] == next(k for k, r in enumerate(rewards) if r >= best - 1e-3)
        # On the bank: k = 1 returns the one sample if it passes; k = 16 a uniform passing one.
        first = [
            sum((fr[i] or cost) if wr[i] else 0.0 for i in range(16)) / 16
            for wr, fr in zip(weak, full, strict=True)
        ]
        last = [
            sum((1.0 if fr[i] else cost) for i in range(16) if wr[i]) / max(sum(wr), 1)
            for wr, fr in zip(weak, full, strict=True)
        ]
        assert entry["measured_rewards"][0] == pytest.approx(np.mean(first), abs=1e-12)
        assert entry["measured_rewards"][-1] == pytest.approx(np.mean(last), abs=1e-12)


# -- MAKER -----------------------------------------------------------------------------------


def test_maker_votes_match_a_plain_simulation_and_k_min_the_formula(
    run: tuple[Path, Path, dict[str, Any]],
) -> None:
    root, _, report = run
    numbers = finding(report, "MAKER", "gsm8k")["n"]
    bank = load_bank_set("gsm8k", root)
    rng = random.Random(5)
    rates, chosen, picked = [], [], []
    for problem in bank.problems:
        # Problems are picked, and p estimated, on samples 0-15; the votes are samples 16-31.
        samples = bank.samples[problem]
        first = [s for s in samples if s.index < 16]
        valid = [s for s in first if s.answer is not None and s.finish_reason != "length"]
        right = Counter(s.answer for s in valid if s.correct)
        p = right.most_common(1)[0][1] / len(valid) if right else 0.0
        if p > 0.5 and any(not s.correct for s in valid):
            rates.append(p)
            picked.append(first)
            chosen.append([s for s in samples if s.index >= 16])
    assert numbers["solvable"] == len(rates)
    if len(rates) < 2:
        assert finding(report, "MAKER", "gsm8k")["verdict"] == "not testable at 0.5B"
        return
    p_mean = sum(rates) / len(rates)
    assert numbers["p_mean"] == pytest.approx(p_mean, abs=1e-12)
    t, s = 0.9, len(rates)
    k_min = max(1, math.ceil(math.log(t ** (-1 / s) - 1) / math.log((1 - p_mean) / p_mean)))
    assert numbers["k_min_predicted"] == k_min
    for row in numbers["margins"][:3]:
        margin, spent, wins = row["margin"], [], []
        for samples in chosen:
            for _ in range(300):
                tally: Counter[str] = Counter()
                used, won = 16, False  # no lead by the last vote: a failure, all 16 read
                for taken, sample in enumerate(rng.sample(samples, 16), start=1):
                    if sample.answer is None or sample.finish_reason == "length":
                        continue  # red-flagged: drawn and paid for, but no vote
                    tally[sample.answer] += 1
                    top = [*sorted(tally.values(), reverse=True), 0]
                    if top[0] - top[1] >= margin:
                        used, won = taken, bool(sample.correct)
                        break
                spent.append(used)
                wins.append(won)
        assert row["votes"][0] == pytest.approx(np.mean(spent), abs=0.35)
        assert row["success"][0] == pytest.approx(np.mean(wins), abs=0.05)
        assert row["predicted_votes"] == pytest.approx(
            np.mean(
                [
                    margin * (2 / (1 + ((1 - p) / p) ** margin) - 1) / (2 * p - 1) / _valid(c)
                    for p, c in zip(rates, picked, strict=True)
                ]
            ),
            rel=1e-9,
        )


def _valid(samples: list[BankSample]) -> float:
    return sum(s.answer is not None and s.finish_reason != "length" for s in samples) / 16


@pytest.mark.parametrize(
    ("difference", "verdict"),
    [
        ((-0.05, -0.08, -0.02), "not reproduced"),  # the whole interval over 1 point lower
        ((-0.092, -0.203, -0.001), "inconclusive"),  # DeepConf-low on 16 problems
        ((-0.023, -0.059, 0.005), "inconclusive"),  # reaches 0, but also far below -1 point
        ((-0.002, -0.008, 0.004), "reproduced"),  # within a point of majority, shown
        ((0.0, 0.0, 0.0), "reproduced"),
    ],
)
def test_a_saving_counts_only_at_an_accuracy_shown_within_a_point(
    difference: tuple[float, float, float], verdict: str
) -> None:
    """The paired difference decides, though the mean (18.4%) lies inside majority's interval;
    and "as accurate" is a non-inferiority margin of 1 point, shown by the whole interval."""
    script = _script()
    votes = dataclasses.make_dataclass("V", ["name"])("gsm8k")
    entry = {
        "saved": (0.472, 0.457, 0.489),
        "accuracy": (0.184, 0.078, 0.322),
        "difference": difference,
    }
    found = script._saving_finding("DeepConf-low", votes, entry, (0.276, 0.117, 0.469), "x", 16)
    assert found.verdict == verdict
    assert "paired difference" in found.lines[2]
    for saved, expected in (((-0.02, -0.04, -0.01), "not reproduced"), ((0.01, -0.01, 0.03), "")):
        # ...and a saving must be one: costing more fails; an interval across 0 is not shown.
        unsaved = {**entry, "saved": saved, "difference": (0.0, 0.0, 0.0)}
        found = script._saving_finding("E", votes, unsaved, (0.276, 0.117, 0.469), "x", 16)
        assert found.verdict == (expected or "inconclusive")
