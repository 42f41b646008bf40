"""Early stopping on the loopback server: ``adaptive`` against majority over 16 samples.

Real HTTP through the real OpenAISampler. Target: ``adaptive`` within 1 point of majority@16's
accuracy with at most 40% of its samples.

Problem population (an assumption, stated so it can be argued with): a GSM8K-like task with a
strong model, the regime Adaptive-Consistency (Aggarwal et al. 2023) reports on, where most
questions are answered correctly nearly every time and a minority are hard. Per problem:

- with probability 0.75 the problem is easy: p_correct ~ Beta(20, 1) (mean 0.95);
- otherwise it is hard: p_correct ~ Beta(2, 2) (mean 0.5, so some are lost even to a vote);
- the wrong mass 1 - p_correct is split over three distractors by Dirichlet(0.5, 0.5, 0.5), so
  a wrong answer is usually one plausible mistake rather than three equal ones.

That gives about 84% single-sample accuracy and about 90% for majority@16, the range of strong
models on GSM8K. The mix and its parameters are ours, chosen from that qualitative picture, not
fitted to the paper's per-question data (which we do not have); ``--easy-share`` and the
``--hard``/``--easy`` Beta parameters change it. Per-problem answers are drawn, never chosen.

Sample i of a problem is drawn from its distribution with a seed derived from the problem and i
(the server's per-prompt sample index), so every strategy sees the same i-th sample of a problem:
adaptive's votes are a prefix of what a fixed-N run sees, and the comparison is paired. Prints,
per strategy, accuracy, samples used (the server's own count is checked against the strategies')
and the paired accuracy difference to majority@16 with its standard error and a bootstrap 95% CI.

    .venv/bin/python benchmarks/early_stopping.py [--problems 1000] [--seed 0] [--easy-share 0.75]
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
TARGET_POINTS = 1.0  # within this many points of majority@16's accuracy
TARGET_SHARE = 0.40  # with at most this share of its samples


def distributions(
    problems: int,
    seed: int,
    easy_share: float,
    easy: tuple[float, float],
    hard: tuple[float, float],
) -> tuple[dict[str, list[float]], np.ndarray]:
    """Each problem's answer distribution, and which problems are easy."""
    rng = np.random.default_rng(seed)
    table = {}
    is_easy = np.zeros(problems, dtype=bool)
    for number in range(problems):
        is_easy[number] = rng.random() < easy_share
        a, b = easy if is_easy[number] else hard
        p_correct = rng.beta(a, b)
        wrong = rng.dirichlet(np.full(3, 0.5)) * (1.0 - p_correct)
        table[f"problem {number}"] = [p_correct, *wrong.tolist()]
    return table, is_easy


def responder(table: dict[str, list[float]], seed: int):  # type: ignore[no-untyped-def]
    def respond(request: ScriptRequest) -> str:
        rng = random.Random(f"{seed}|{request.prompt}|{request.index}")
        answer = rng.choices(ANSWERS, weights=table[request.prompt])[0]
        return f"Working it out... the answer is \\boxed{{{answer}}}."

    return respond


async def run_strategy(
    strategy: object, server: LoopbackServer, prompts: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, float]:
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
    right = np.array([result.answers[:1] == (ANSWERS[0],) for result in results], dtype=float)
    drawn = np.array([result.usage.samples for result in results])
    delivered = server.delivered_usage()["samples"]
    if delivered != drawn.sum():
        raise SystemExit(f"strategy counted {drawn.sum()} samples, server delivered {delivered}")
    return right, drawn, elapsed


def paired_difference(
    right: np.ndarray, baseline: np.ndarray, rng: np.random.Generator, resamples: int = 4000
) -> tuple[float, float, float, float]:
    """Mean accuracy difference (points), its standard error and a bootstrap 95% CI."""
    diff = right - baseline
    n = diff.size
    error = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    means = diff[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return 100 * float(diff.mean()), 100 * error, 100 * float(low), 100 * float(high)


def judge(low: float, high: float, share: float) -> str:
    """The accuracy target judged on the 95% CI of the paired difference (points), not on its
    point estimate: met when the whole interval is within the allowed loss, missed when all of it
    is beyond, undecided when it straddles the bound (more problems would tell)."""
    if share > TARGET_SHARE or high < -TARGET_POINTS:
        return "missed"
    if low >= -TARGET_POINTS:
        return "met"
    return "undecided (CI straddles the bound)"


async def main_async(args: argparse.Namespace) -> None:
    table, is_easy = distributions(
        args.problems, args.seed, args.easy_share, tuple(args.easy), tuple(args.hard)
    )
    prompts = list(table)
    strategies = {
        "majority@16": Majority(samples=16, extractor="boxed"),
        "adaptive beta 0.95, batch 1, max 40 (default)": Adaptive(extractor="boxed"),
        "adaptive beta 0.95, batch 2, max 40": Adaptive(extractor="boxed", batch_size=2),
        "adaptive beta 0.95, batch 4, max 40": Adaptive(extractor="boxed", batch_size=4),
        "adaptive beta 0.95, batch 1, max 16": Adaptive(extractor="boxed", samples=16),
        "adaptive esc window 5, max 40": Adaptive(extractor="boxed", rule="esc"),
    }
    p_correct = np.array([table[p][0] for p in prompts])
    print(
        f"{args.problems} problems ({is_easy.sum()} easy), real HTTP; population: "
        f"{100 * args.easy_share:.0f}% easy p ~ Beta{tuple(args.easy)}, the rest hard "
        f"p ~ Beta{tuple(args.hard)}, wrong mass over 3 distractors by Dirichlet(0.5, 0.5, 0.5); "
        f"drawn mean p_correct {p_correct.mean():.3f}"
    )
    print(
        f"target: within {TARGET_POINTS:.0f} point of majority@16 with <= "
        f"{100 * TARGET_SHARE:.0f}% of its samples, judged on the bootstrap 95% CI of the paired "
        "difference (+- is one standard error)"
    )
    rng = np.random.default_rng(args.seed + 1)
    with LoopbackServer(answers=responder(table, args.seed), latency=0.002) as server:
        baseline: tuple[np.ndarray, int] | None = None
        for name, strategy in strategies.items():
            right, drawn, elapsed = await run_strategy(strategy, server, prompts)
            samples = int(drawn.sum())
            line = (
                f"{name:>46}: accuracy {100 * right.mean():5.1f}%  samples {samples:6d} "
                f"({samples / args.problems:4.1f}/problem: easy {drawn[is_easy].mean():4.1f}, "
                f"hard {drawn[~is_easy].mean():4.1f}"
            )
            if baseline is None:
                baseline = (right, samples)
                print(f"{line})  {elapsed:4.1f} s")
                continue
            share = samples / baseline[1]
            diff, error, low, high = paired_difference(right, baseline[0], rng)
            verdict = judge(low, high, share)
            print(
                f"{line}, {100 * share:5.1f}% of majority@16)  {diff:+5.1f} +- {error:3.1f} "
                f"points [{low:+5.1f}, {high:+5.1f}]  target {verdict}  {elapsed:4.1f} s"
            )
        modal = np.mean([max(range(4), key=lambda i: table[p][i]) == 0 for p in prompts])
        print(f"{'(majority with infinitely many samples)':>46}: accuracy {100 * modal:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--easy-share", type=float, default=0.75)
    parser.add_argument("--easy", type=float, nargs=2, default=[20.0, 1.0], metavar=("A", "B"))
    parser.add_argument("--hard", type=float, nargs=2, default=[2.0, 2.0], metavar=("A", "B"))
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
