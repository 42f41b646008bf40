"""A budgeted run, then unbiased pass@k, a coverage-law fit and a plot.

    python examples/budget_and_laws.py --out runs/laws  # the embedded model (llama.cpp on CPU)
    python examples/budget_and_laws.py --base-url http://127.0.0.1:8000/v1 --model m --out runs/laws

Coverage (pass@k averaged over problems) typically follows c(k) = exp(a * k**b) (Large Language
Monkeys); fitting it on what was drawn predicts what ten times the samples would buy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed: the plot only goes to a file
import matplotlib.pyplot as plt
import numpy as np

from ttscale import OpenAISampler, Problem, SamplingParams
from ttscale.budget import BudgetedSampler, BudgetLimitReached, max_samples, max_tokens
from ttscale.datasets import load_dataset
from ttscale.estimators import coverage_curve, log_spaced_ks, pass_at_k
from ttscale.laws import bootstrap_fits, extrapolation_band, fit_power_law, law_intervals
from ttscale.local_model import LocalModelServer
from ttscale.registry import create
from ttscale.strategies import Majority


async def draw(problems: list[Problem], args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """Samples drawn (n) and correct (c) per problem, within the budget."""
    params = SamplingParams(temperature=0.8, max_tokens=args.max_tokens, logprobs=0, seed=0)
    strategy = Majority(samples=args.samples, params=params)
    grader = create("verifier", "exact_match")
    n, c = [], []
    async with OpenAISampler(model=args.model, base_url=args.base_url) as sampler:
        # The run stops buying once it has spent --token-budget tokens; each problem may take
        # at most --samples samples. Tokens are known only after a draw returns, so problems run
        # one after another here: the limit is then checked before every problem's draw.
        budget = BudgetedSampler(
            sampler, limit=max_tokens(args.token_budget), per_problem=max_samples(args.samples)
        )
        for problem in problems:
            try:
                result = await strategy.run(problem, budget.for_problem(problem.id))
            except BudgetLimitReached as refusal:
                print(f"{problem.id}: refused by the budget ({refusal.condition!r})")
                continue
            grades = await grader.score(problem, result.candidates)
            n.append(len(result.candidates))
            c.append(sum(bool(g.verdict) for g in grades))
            print(f"{problem.id}: {c[-1]}/{n[-1]} samples correct, majority={result.answers[0]}")
    print(f"spent: {budget.spent.total_tokens} tokens in {budget.spent.requests} requests")
    return n, c


def fit_and_plot(n: list[int], c: list[int], out: Path) -> None:
    # Unbiased pass@k needs k <= n for every problem: fit on what the smallest draw allows.
    ks = log_spaced_ks(min(n), 20)
    coverage = coverage_curve(n, c, ks)
    print(f"pass@1={pass_at_k(n, c, 1):.3f} pass@{ks[-1]}={coverage[-1]:.3f}")
    law = fit_power_law(ks, coverage)
    far = 10 * int(ks[-1])
    # Intervals and band are bootstrap over problems: how much they rest on these few problems.
    fits = bootstrap_fits(n, c, fit_ks=ks, n_resamples=100)
    spans = law_intervals(fits).intervals
    print(
        f"fit: a={law.a:.4f} [90% bootstrap {spans['a'][0]:.4f}, {spans['a'][1]:.4f}] "
        f"b={law.b:.4f} [{spans['b'][0]:.4f}, {spans['b'][1]:.4f}]"
    )
    print(f"predicted coverage at {far} samples (10x): {law.predict(far)[0]:.3f}")
    grid = np.unique(np.geomspace(1, far, 30).astype(int))
    band = extrapolation_band(n, c, grid, fit_ks=ks, fits=fits)
    figure, axes = plt.subplots(figsize=(6, 4), layout="constrained")
    axes.fill_between(grid, band.low, band.high, alpha=0.2, label=f"{band.confidence:.0%} band")
    axes.plot(grid, law.predict(grid), label=f"exp({law.a:.2f} k^{law.b:.2f})")
    axes.plot(ks, coverage, "o", label="observed pass@k")
    axes.set(xscale="log", xlabel="samples per problem k", ylabel="coverage", ylim=(0, 1.02))
    axes.legend()
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(out / "coverage.png", dpi=100)
    print(f"wrote {out / 'coverage.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible /v1 URL (default: embedded)")
    parser.add_argument("--model", default="default", help="the model name on that server")
    parser.add_argument("--out", type=Path, default=Path("runs/budget-and-laws"))
    parser.add_argument("--problems", type=int, default=6)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--token-budget", type=int, default=40_000)
    parser.add_argument("--max-tokens", type=int, default=200)
    args = parser.parse_args()
    problems = load_dataset("arithmetic", limit=args.problems)
    with contextlib.ExitStack() as stack:
        if args.base_url is None:
            local = stack.enter_context(LocalModelServer())
            args.base_url, args.model = local.base_url, local.model
        n, c = asyncio.run(draw(problems, args))
    if not n or min(n) < 3:
        sys.exit("a law needs coverage at 3 or more k: raise --samples or --token-budget")
    fit_and_plot(n, c, args.out)


if __name__ == "__main__":
    main()
