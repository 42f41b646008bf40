"""Early stopping on the loopback server: ``adaptive`` against majority over 16 samples.

Real HTTP through the real OpenAISampler. Each problem has a known answer distribution: the correct
answer with probability p ~ Beta(4, 1.2) (mean 0.77), the rest split over three distractors by a
Dirichlet(1, 1, 1) draw. Sample i of a problem is drawn from that distribution with a seed derived
from the problem and i (the server's per-prompt sample index), so every strategy sees the same i-th
sample of a problem: adaptive's votes are a prefix of what a fixed-N run sees, and the comparison
is paired. Prints accuracy and samples used per strategy; the server's own count of delivered
samples is printed beside the strategies' to show nothing was drawn and not counted.

    .venv/bin/python benchmarks/early_stopping.py [--problems 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Sequence

import numpy as np

from ttscale import OpenAISampler, Problem, SamplingParams
from ttscale.strategies import Adaptive, Majority
from ttscale.testing.server import LoopbackServer, ScriptRequest

ANSWERS = ("42", "17", "8", "99")  # the first is correct


def distributions(problems: int, seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    table = {}
    for number in range(problems):
        p_correct = rng.beta(4.0, 1.2)
        wrong = rng.dirichlet(np.ones(3)) * (1.0 - p_correct)
        table[f"problem {number}"] = [p_correct, *wrong.tolist()]
    return table


def responder(table: dict[str, list[float]], seed: int):  # type: ignore[no-untyped-def]
    def respond(request: ScriptRequest) -> str:
        rng = random.Random(f"{seed}|{request.prompt}|{request.index}")
        answer = rng.choices(ANSWERS, weights=table[request.prompt])[0]
        return f"Working it out... the answer is \\boxed{{{answer}}}."

    return respond


async def run_strategy(
    strategy: object, server: LoopbackServer, prompts: Sequence[str]
) -> tuple[float, int, float]:
    server.reset_log()
    sampler = OpenAISampler(
        model="loopback",
        base_url=server.base_url,
        api_key="test",
        params=SamplingParams(temperature=0.8, seed=1),
    )
    started = time.perf_counter()
    async with sampler:
        results = await asyncio.gather(
            *(
                strategy.run(Problem(id=prompt, prompt=prompt), sampler)  # type: ignore[attr-defined]
                for prompt in prompts
            )
        )
    elapsed = time.perf_counter() - started
    accuracy = sum(result.answers[:1] == (ANSWERS[0],) for result in results) / len(results)
    samples = sum(result.usage.samples for result in results)
    delivered = server.delivered_usage()["samples"]
    if delivered != samples:
        raise SystemExit(f"strategy counted {samples} samples, server delivered {delivered}")
    return accuracy, samples, elapsed


async def main_async(problems: int, seed: int) -> None:
    table = distributions(problems, seed)
    prompts = list(table)
    strategies = {
        "majority@16": Majority(samples=16, extractor="boxed"),
        "adaptive beta 0.95, batch 4, max 40": Adaptive(extractor="boxed"),
        "adaptive beta 0.95, batch 2, max 40": Adaptive(extractor="boxed", batch_size=2),
        "adaptive beta 0.95, batch 1, max 40": Adaptive(extractor="boxed", batch_size=1),
        "adaptive beta 0.95, batch 2, max 16": Adaptive(
            extractor="boxed", batch_size=2, samples=16
        ),
        "adaptive beta 0.90, batch 2, max 16": Adaptive(
            extractor="boxed", batch_size=2, samples=16, threshold=0.9
        ),
        "adaptive esc window 4, max 40": Adaptive(extractor="boxed", rule="esc", batch_size=4),
    }
    with LoopbackServer(answers=responder(table, seed), latency=0.002) as server:
        print(f"{problems} problems, answers from known per-problem distributions, real HTTP")
        baseline: tuple[float, int] | None = None
        for name, strategy in strategies.items():
            accuracy, samples, elapsed = await run_strategy(strategy, server, prompts)
            if baseline is None:
                baseline = (accuracy, samples)
            share = samples / baseline[1]
            print(
                f"{name:>38}: accuracy {100 * accuracy:5.1f}%  samples {samples:5d} "
                f"({samples / problems:4.1f}/problem, {100 * share:5.1f}% of majority@16, "
                f"{100 * (accuracy - baseline[0]):+5.1f} points)  {elapsed:4.1f} s"
            )
        expected = np.mean([max(range(4), key=lambda i: table[p][i]) == 0 for p in prompts])
        print(f"{'(majority with infinitely many samples)':>38}: accuracy {100 * expected:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main_async(args.problems, args.seed))


if __name__ == "__main__":
    main()
