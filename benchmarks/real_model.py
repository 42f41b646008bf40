"""The embedded model for real: HumanEval and the arithmetic set, N samples at temperature 0.8.

Qwen2.5-Coder-0.5B-Instruct on llama.cpp's llama-server (CPU), started by ttscale. For each dataset
it prints coverage pass@k, each strategy's accuracy at every k (offline, from the same samples,
averaged over random k-subsets: majority, adaptive and ahead_by_k, with the samples the early
stoppers drew, and the score-based ones when samples carry scores), the coverage-law fit, and the
server's aggregate tokens/s during the run beside its single-stream speed measured in the same
run. Writes JSON and a PNG.

    python benchmarks/real_model.py [--problems 20] [--samples 16] [--out benchmarks/out]

HumanEval runs model-written code in the sandboxed unit-test verifier: this script opts in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ttscale import OpenAISampler, SamplingParams
from ttscale.estimators import coverage_curve
from ttscale.laws import fit_error, fit_power_law
from ttscale.local_model import LocalModelServer
from ttscale.solve import SolveConfig, run_file, solve
from ttscale.strategies.offline import evaluate


async def single_stream_speed(base_url: str, model: str) -> float:
    """Completion tokens per second of one request alone, greedy, 128 tokens."""
    sampler = OpenAISampler(model=model, base_url=base_url, api_key="local", concurrency=1)
    async with sampler:
        params = SamplingParams(temperature=0.0, max_tokens=128, logprobs=0)
        prompt = "Write a Python function that checks whether a number is prime, with comments."
        await sampler.sample(prompt, 1, SamplingParams(max_tokens=8))  # warm the prompt cache path
        started = time.perf_counter()
        batch = await sampler.sample(prompt, 1, params)
        return batch.usage.completion_tokens / (time.perf_counter() - started)


def analyse(records: list[dict[str, Any]]) -> dict[str, Any]:
    n = min(int(r["n"]) for r in records)
    ns = np.array([r["n"] for r in records])
    cs = np.array([r["num_correct"] for r in records])
    ks = np.arange(1, n + 1)
    coverage = coverage_curve(ns, cs, ks)
    answers = [[s["answer"] for s in r["samples"][:n]] for r in records]
    correct = [[bool(s["correct"]) for s in r["samples"][:n]] for r in records]
    raw_scores = [[s.get("score") for s in r["samples"][:n]] for r in records]
    # Every strategy offline evaluation runs from these samples: without verifier scores pass@k,
    # majority, adaptive and ahead_by_k; with a score on every sample the score-based ones too.
    scored = all(isinstance(v, int | float) for row in raw_scores for v in row)
    offline = evaluate(
        answers, correct, raw_scores if scored else None, strategies=None, subsets=200, seed=0
    )
    fit = fit_power_law(ks, coverage) if coverage[-1] > 0 and coverage[0] < 1 else None
    tokens = sum(r["usage"]["completion_tokens"] for r in records)
    return {
        "problems": len(records),
        "samples": n,
        "ks": ks.tolist(),
        "coverage": coverage.tolist(),
        "accuracy": {name: values.tolist() for name, values in offline.accuracy.items()},
        # Mean samples drawn at each cap k: below k for the strategies that stop early.
        "samples_used": {
            name: values.tolist()
            for name, values in offline.samples_used.items()
            if not np.array_equal(values, ks)
        },
        "power_law": None
        if fit is None
        else {
            "a": fit.a,
            "b": fit.b,
            "fit_error": fit_error(coverage, fit.predict(ks)).mean,
        },
        "completion_tokens": tokens,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for axis, (name, data) in zip(axes[0], results.items(), strict=True):
        ks = np.array(data["ks"])
        axis.plot(ks, data["coverage"], "o-", label="coverage (pass@k)")
        for strategy, values in data["accuracy"].items():
            if strategy != "pass_at_k":
                axis.plot(ks, values, "s--", label=f"{strategy} accuracy")
        if data["power_law"]:
            fit = data["power_law"]
            axis.plot(ks, np.exp(fit["a"] * ks ** fit["b"]), ":", label="power-law fit")
        axis.set_xscale("log", base=2)
        axis.set_ylim(0, 1.02)
        axis.set_xlabel("samples per problem (k)")
        axis.set_title(f"{name}: {data['problems']} problems")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=20, help="HumanEval problems")
    parser.add_argument("--arithmetic", type=int, default=20, help="arithmetic problems")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with LocalModelServer() as server:
        single = await single_stream_speed(server.base_url, server.model)
        print(f"single-stream speed: {single:.1f} completion tokens/s")
        results: dict[str, Any] = {}
        for name, limit, max_tokens in (
            ("humaneval", args.problems, 384),
            ("arithmetic", args.arithmetic, 256),
        ):
            out = args.out / f"real_{name}.jsonl"
            out.unlink(missing_ok=True)
            out.with_name(out.name + ".samples.jsonl").unlink(missing_ok=True)
            run_file(out).unlink(missing_ok=True)  # a fresh run: nothing to resume or check
            config = SolveConfig(
                dataset=name,
                out=out,
                strategy="majority",
                samples=args.samples,
                temperature=0.8,
                max_tokens=max_tokens,
                concurrency=8,
                limit=limit,
                logprobs=0,
                allow_code_execution=True,
            )
            started = time.perf_counter()
            summary = await solve(config, base_url=server.base_url, model=server.model)
            wall = time.perf_counter() - started
            data = analyse(summary.records)
            data["wall_time_s"] = wall
            data["aggregate_tokens_per_s"] = data["completion_tokens"] / wall
            results[name] = data
            print(
                f"\n{name}: {data['problems']} problems x {data['samples']} samples "
                f"in {wall:.0f} s; "
                f"aggregate {data['aggregate_tokens_per_s']:.1f} tokens/s "
                f"({data['aggregate_tokens_per_s'] / single:.2f}x single-stream)"
            )
            used = data["samples_used"]
            print(
                f"{'k':>4}{'coverage':>10}"
                + "".join(f"{s:>18}" for s in data["accuracy"])
                + "".join(f"{s + ' used':>18}" for s in used)
            )
            for position, k in enumerate(data["ks"]):
                row = "".join(f"{values[position]:>18.3f}" for values in data["accuracy"].values())
                row += "".join(f"{values[position]:>18.2f}" for values in used.values())
                print(f"{k:>4}{data['coverage'][position]:>10.3f}{row}")
            if data["power_law"]:
                fit = data["power_law"]
                print(
                    f"power law a={fit['a']:.3f} b={fit['b']:.3f}, fit error {fit['fit_error']:.4f}"
                )
    report = {"single_stream_tokens_per_s": single, "datasets": results}
    (args.out / "real_model.json").write_text(json.dumps(report, indent=2))
    plot(results, args.out / "real_model.png")
    print(f"\nwrote {args.out / 'real_model.json'} and {args.out / 'real_model.png'}")


if __name__ == "__main__":
    asyncio.run(main())
